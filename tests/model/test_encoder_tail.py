"""Encoder tail: the split reproduces the encoder, LoRA on the tail starts at identity, the feature cache is verified."""

from __future__ import annotations

import logging

import pytest
import torch

from blosam_med.model import BloSam, build_backbone
from blosam_med.model.backbones import Backbone
from blosam_med.model.encoder_tail import (
    FeatureCache,
    TailBloSam,
    TailSettings,
    neck_features,
    split_encoder,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is as fast and does not stall on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_vit_backbone() -> Backbone:
    """A random TinyViT with LiteMedSAM's layout (256 px input, last stage 64 x 64 x 320, neck to 256) but narrow
    early stages, one block per stage and a small decoder; random BatchNorm statistics."""
    return build_backbone("tiny_vit")


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def encoded(tiny_vit_backbone, inputs) -> dict[str, torch.Tensor]:
    """The full encoder's embedding, the head features at each cut, and the untrained decoder's logits."""
    with torch.no_grad():
        out = {cut: split_encoder(tiny_vit_backbone, cut).head(inputs) for cut in ("neck", "last_stage")}
        out["embedding"] = tiny_vit_backbone.image_encoder(inputs)
        out["logits"] = BloSam(tiny_vit_backbone).forward_embeddings(out["embedding"])
    return out


@pytest.mark.parametrize("cut", ["neck", "last_stage"])
def test_untrained_split_reproduces_the_encoder_exactly(tiny_vit_backbone, encoded, cut):
    split = split_encoder(tiny_vit_backbone, cut)
    features = encoded[cut]  # split.head(inputs), computed once for the module
    assert tuple(features.shape[1:]) == split.feature_shape == (320, 64, 64)
    with torch.no_grad():
        assert torch.equal(split.tail(features), encoded["embedding"])
        assert torch.equal(split.tail(features.contiguous().clone()), encoded["embedding"])  # as read back from a file


def test_neck_features_from_last_stage_features_equal_the_neck_head(tiny_vit_backbone, encoded):
    last = split_encoder(tiny_vit_backbone, "last_stage")
    assert torch.equal(neck_features(last, encoded["last_stage"]), encoded["neck"])
    with pytest.raises(ValueError, match="last_stage"):
        neck_features(split_encoder(tiny_vit_backbone, "neck"), encoded["neck"])


def test_split_refuses_unknown_cuts_and_other_encoders(tiny_vit_backbone):
    with pytest.raises(ValueError, match="unknown encoder cut 'stem'"):
        split_encoder(tiny_vit_backbone, "stem")
    with pytest.raises(ValueError, match="backbone 'tiny'.*TinyViT"):
        split_encoder(build_backbone("tiny"), "neck")
    with pytest.raises(ValueError, match="needs cut='last_stage'"):
        TailSettings(cut="neck", stage_lora=True)
    with pytest.raises(ValueError, match="unknown neck mode"):
        TailSettings(neck="half")


@pytest.mark.parametrize(
    ("settings", "lora_layers"),
    [
        (TailSettings(cut="last_stage", neck="full", stage_lora=True), 4),  # qkv, proj, fc1, fc2 of one block
        (TailSettings(cut="neck", neck="lora"), 2),  # the neck's two convolutions
        (TailSettings(cut="last_stage", neck="lora", stage_lora=True), 6),
    ],
)
def test_lora_tail_starts_at_identity_and_trains(tiny_vit_backbone, encoded, settings, lora_layers):
    from peft.tuners.lora import LoraLayer

    encoder_before = {k: v.clone() for k, v in tiny_vit_backbone.image_encoder.state_dict().items()}
    model = TailBloSam(tiny_vit_backbone, settings)
    assert sum(isinstance(m, LoraLayer) for m in model.tail.modules()) == lora_layers
    features = encoded[settings.cut]
    with torch.no_grad():
        assert torch.equal(model.forward_features(features), encoded["logits"])
    tail_names = {n for n, p in model.tail.named_parameters() if p.requires_grad}
    assert tail_names and all(("lora_" in n) or (settings.neck == "full" and n.startswith("neck.")) for n in tail_names)
    assert model.trainable_counts()["tail"] == sum(p.numel() for p in model.tail_parameters()) > 0

    model.train()
    assert not model.tail.training  # BatchNorm statistics stay frozen
    optimizer = torch.optim.SGD(model.lower_parameters() + model.upper_parameters(), lr=0.5)
    model.forward_features(features).mean().backward()
    optimizer.step()
    with torch.no_grad():
        assert not torch.equal(model.tail(features), encoded["embedding"])
    for k, v in tiny_vit_backbone.image_encoder.state_dict().items():  # the tail is a copy: the backbone is intact
        assert torch.equal(v, encoder_before[k]), k


def test_forward_features_checks_the_shape(tiny_vit_backbone):
    model = TailBloSam(tiny_vit_backbone, TailSettings(cut="neck"))
    with pytest.raises(ValueError, match=r"expected features \(B, 320, 64, 64\)"):
        model.forward_features(torch.zeros(1, 256, 64, 64))


def _images(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(1, 48, 64, generator=g) for _ in range(n)]


def test_feature_cache_round_trips_without_the_encoder(tiny_vit_backbone, tmp_path):
    split = split_encoder(tiny_vit_backbone, "last_stage")
    first = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False)
    images = _images(2)
    features = first.embed(images)
    assert first.encoder_calls == 1 and tuple(features.shape) == (2, *split.feature_shape)
    assert torch.equal(features, split.head(torch.stack([first_input(tiny_vit_backbone, im) for im in images])))
    files = sorted((tmp_path / "tiny_vit@last_stage").rglob("*.pt"))
    assert len(files) == 2
    again = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False)
    assert torch.equal(again.embed(images), features) and again.encoder_calls == 0
    other = FeatureCache(tiny_vit_backbone, split_encoder(tiny_vit_backbone, "neck"), tmp_path, progress=False)
    assert other.key(torch.zeros(3, 256, 256)) != again.key(torch.zeros(3, 256, 256))  # the cut is in the key


def first_input(backbone: Backbone, image: torch.Tensor) -> torch.Tensor:
    from blosam_med.model import preprocess_image

    return preprocess_image(image, backbone.preprocessing)


def test_feature_cache_detects_changed_and_truncated_entries(tiny_vit_backbone, tmp_path, caplog):
    split = split_encoder(tiny_vit_backbone, "last_stage")
    images = _images(2)
    expected = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False).embed(images)
    files = sorted((tmp_path / "tiny_vit@last_stage").rglob("*.pt"))
    entry = torch.load(files[0], weights_only=True)
    entry["embedding"][0, 0, 0] += 1.0  # changed in place, checksum kept: the file itself loads without complaint
    torch.save(entry, files[0])
    files[1].write_bytes(files[1].read_bytes()[:100])  # truncated
    cache = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False)
    with caplog.at_level(logging.WARNING):
        got = cache.embed(images)
    assert torch.equal(got, expected)
    assert cache.encoder_calls == 1  # both entries recomputed, in one batch
    assert "checksum mismatch" in caplog.text and caplog.text.count("unusable cache entry") == 2
