from __future__ import annotations

import torch
from synthetic import CountingEncoder

from blosam_med.model import EmbeddingCache


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 40 + 3 * i, 50, generator=g) for i in range(n)]


def test_hit_returns_identical_without_encoder(tiny_backbone, tmp_path):
    tiny_backbone.image_encoder = CountingEncoder(tiny_backbone.image_encoder)
    images = _images(5)
    first = EmbeddingCache(tiny_backbone, tmp_path, batch_size=2, progress=False).embed(images)
    assert first.shape == (5, 32, 16, 16)
    assert tiny_backbone.image_encoder.images == 5
    cache = EmbeddingCache(tiny_backbone, tmp_path, batch_size=2, progress=False)  # a new run, same folder
    again = cache.embed(images)
    assert torch.equal(first, again)
    assert tiny_backbone.image_encoder.images == 5 and cache.encoder_calls == 0
    direct = tiny_backbone.image_encoder.inner(torch.stack([cache_input(cache, im) for im in images]))
    assert torch.allclose(first, direct, atol=1e-6)


def cache_input(cache, image):
    from blosam_med.model import preprocess_image

    return preprocess_image(image, cache.backbone.preprocessing)


def test_different_view_or_backbone_is_a_miss(tiny_backbone, tmp_path):
    images = _images(2)
    cache = EmbeddingCache(tiny_backbone, tmp_path, progress=False)
    cache.embed(images)
    cache.embed([torch.flip(im, dims=[-1]) for im in images])  # an augmented view is another entry
    assert cache.encoder_calls == 2
    tiny_backbone.fingerprint = "tiny:other-weights"
    other = EmbeddingCache(tiny_backbone, tmp_path, progress=False)
    other.embed(images)
    assert other.encoder_calls == 1


def test_truncated_and_corrupt_entries_are_recomputed(tiny_backbone, tmp_path, caplog):
    images = _images(3)
    cache = EmbeddingCache(tiny_backbone, tmp_path, progress=False)
    first = cache.embed(images)
    files = sorted(tmp_path.rglob("*.pt"))
    assert len(files) == 3
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # truncated
    files[1].write_bytes(b"garbage")  # corrupt
    fresh = EmbeddingCache(tiny_backbone, tmp_path, progress=False)
    again = fresh.embed(images)
    assert torch.allclose(first, again, atol=1e-6)
    assert fresh.encoder_calls == 1  # two misses, one batch
    assert "unusable cache entry" in caplog.text
    assert all(torch.load(f, weights_only=True)["embedding"].shape == (32, 16, 16) for f in files)


def test_duplicate_images_encoded_once(tiny_backbone):
    tiny_backbone.image_encoder = CountingEncoder(tiny_backbone.image_encoder)
    im = _images(1)[0]
    out = EmbeddingCache(tiny_backbone, None, progress=False).embed([im, im.clone(), im])
    assert tiny_backbone.image_encoder.images == 1 and torch.equal(out[0], out[2])


def test_entry_changed_in_place_is_detected_and_recomputed(tiny_backbone, tmp_path, caplog):
    """Same size, flipped bytes inside the tensor data: the file loads, the stored checksum does not match."""
    images = _images(2)
    first = EmbeddingCache(tiny_backbone, tmp_path, progress=False).embed(images)
    files = sorted(tmp_path.rglob("*.pt"))
    entry = torch.load(files[0], weights_only=True)
    raw = bytearray(files[0].read_bytes())
    needle = entry["embedding"].numpy().tobytes()[:64]  # the first values of the embedding, as stored
    at = bytes(raw).index(needle)
    for i in range(at, at + 64):
        raw[i] ^= 0xFF
    files[0].write_bytes(bytes(raw))
    corrupted = torch.load(files[0], weights_only=True)["embedding"]  # loads without complaint...
    assert corrupted.shape == first[0].shape and not torch.equal(corrupted, entry["embedding"])
    fresh = EmbeddingCache(tiny_backbone, tmp_path, progress=False)
    again = fresh.embed(images)
    assert fresh.encoder_calls == 1  # ...but is recomputed
    assert torch.allclose(again, first, atol=1e-6)
    assert f"{files[0]}: unusable cache entry (ValueError: checksum mismatch" in caplog.text
    assert torch.allclose(torch.load(files[0], weights_only=True)["embedding"], entry["embedding"], atol=1e-6)


def test_entry_without_checksum_is_upgraded_not_recomputed(tiny_backbone, tmp_path):
    """An entry written before checksums existed is kept (no encoder call) and rewritten with its checksum."""
    images = _images(2)
    first = EmbeddingCache(tiny_backbone, tmp_path, progress=False).embed(images)
    files = sorted(tmp_path.rglob("*.pt"))
    for f in files:
        entry = torch.load(f, weights_only=True)
        torch.save({"key": entry["key"], "embedding": entry["embedding"]}, f)
    tiny_backbone.image_encoder = CountingEncoder(tiny_backbone.image_encoder)
    again = EmbeddingCache(tiny_backbone, tmp_path, progress=False).embed(images)
    assert tiny_backbone.image_encoder.images == 0
    assert torch.equal(first, again)
    assert all("sha256" in torch.load(f, weights_only=True) for f in files)


def test_metatensor_inputs_are_cached_as_plain_tensors(tiny_backbone, tmp_path, caplog):
    """A flipped MONAI MetaTensor carries metadata; its cache entry must still load with weights_only=True."""
    from monai.data import MetaTensor

    tiny_backbone.image_encoder = CountingEncoder(tiny_backbone.image_encoder)
    images = [MetaTensor(im).flip(-1) for im in _images(2)]
    first = EmbeddingCache(tiny_backbone, tmp_path, progress=False).embed(images)
    assert type(first) is torch.Tensor
    cache = EmbeddingCache(tiny_backbone, tmp_path, progress=False)
    assert torch.equal(cache.embed(images), first)
    assert cache.encoder_calls == 0 and tiny_backbone.image_encoder.images == 2  # read back, not recomputed
    assert "unusable cache entry" not in caplog.text
