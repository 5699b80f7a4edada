from __future__ import annotations

import pytest
import torch

from blosam_med.io import OutputExistsError
from blosam_med.model import (
    BackboneMismatchError,
    BloSam,
    LoraSettings,
    build_backbone,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from blosam_med.model.backbones import build_tiny


def _perturbed(backbone, **kw):
    model = BloSam(backbone, LoraSettings(rank=3, alpha=6.0), **kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_round_trip_reproduces_logits_exactly(tiny_backbone, tmp_path):
    model = _perturbed(tiny_backbone)
    path = save_adapter(model, tmp_path / "adapter.pt", extra={"task": "polyp", "shots": 4})
    loaded, extra = load_adapter(path)
    assert extra == {"task": "polyp", "shots": 4}
    assert loaded.lora == LoraSettings(rank=3, alpha=6.0)
    emb = torch.randn(2, *tiny_backbone.embedding_shape)
    with torch.no_grad():
        assert torch.equal(model.forward_embeddings(emb), loaded.forward_embeddings(emb))
    # Only trained tensors are stored: no encoder, no frozen decoder weights.
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert set(stored) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(k.startswith("image_encoder") or "base_layer" in k for k in stored)


def test_existing_file_is_not_overwritten(tiny_backbone, tmp_path):
    model = _perturbed(tiny_backbone)
    path = save_adapter(model, tmp_path / "adapter.pt")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="adapter.pt"):
        save_adapter(_perturbed(tiny_backbone), path)
    assert path.read_bytes() == before
    save_adapter(_perturbed(tiny_backbone), path, overwrite=True)
    assert path.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.pt"]  # no temp files left behind


def test_other_backbone_is_refused(tiny_backbone, tmp_path):
    path = save_adapter(_perturbed(tiny_backbone), tmp_path / "adapter.pt")
    other = build_tiny()
    other.name = "sam_vit_b"
    with pytest.raises(BackboneMismatchError, match="trained on backbone 'tiny'"):
        load_adapter(path, other)


def test_heads_setting_must_match_stored_tensors(tiny_backbone, tmp_path):
    path = save_adapter(_perturbed(tiny_backbone, train_heads=False), tmp_path / "a.pt")
    loaded, _ = load_adapter(path, tiny_backbone)
    assert not loaded.train_heads


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_bad_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"format": "something-else"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.pt"):
        load_adapter(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_adapter(tmp_path / "missing.pt")


def test_backbone_checkpoint_errors_name_file_and_keys(tmp_path):
    bb = build_tiny()
    sd = {f"mask_decoder.{k}": v for k, v in bb.mask_decoder.state_dict().items()}
    sd.update({f"prompt_encoder.{k}": v for k, v in bb.prompt_encoder.state_dict().items()})
    sd.update({f"image_encoder.{k}": v for k, v in bb.image_encoder.state_dict().items()})
    good = tmp_path / "tiny.pth"
    torch.save(sd, good)
    assert build_backbone("tiny", good).fingerprint.startswith("tiny.pth")
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "broken.pth"
    torch.save({"model": sd}, bad)
    with pytest.raises(ValueError, match=r"broken.pth.*missing keys: iou_token.weight.*unexpected keys: extra.weight"):
        build_backbone("tiny", bad)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_backbone("sam_vit_b", tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="needs a checkpoint file"):
        build_backbone("medsam_vit_b")
    with pytest.raises(ValueError, match="unknown backbone 'vit_q'"):
        build_backbone("vit_q")


def test_written_files_get_umask_permissions(tiny_backbone, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = save_adapter(_perturbed(tiny_backbone), tmp_path / "perm.pt")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_box_prompt_round_trip(tiny_backbone, tmp_path):
    model = BloSam(tiny_backbone, prompt_init="box")
    with torch.no_grad():
        model.prompt_tokens.add_(0.1 * torch.randn_like(model.prompt_tokens))
    loaded, _ = load_adapter(save_adapter(model, tmp_path / "adapter.pt"))
    assert loaded.prompt_init == "box" and loaded.prompt_tokens is not None
    emb = torch.randn(1, *tiny_backbone.embedding_shape)
    with torch.no_grad():
        assert torch.equal(model.eval().forward_embeddings(emb), loaded.forward_embeddings(emb))


def test_adapter_without_prompt_init_loads_as_no_mask(tiny_backbone, tmp_path):
    path = save_adapter(BloSam(tiny_backbone), tmp_path / "adapter.pt")
    payload = torch.load(path, weights_only=True)
    del payload["prompt_init"], payload["upper_heads"]  # as written before the options existed
    torch.save(payload, path)
    loaded, _ = load_adapter(path)
    assert loaded.prompt_init == "no_mask" and loaded.prompt_tokens is None and not loaded.upper_heads
    new = save_adapter(BloSam(tiny_backbone), tmp_path / "new.pt")
    merged, _ = load_adapter(merge_adapters([path, new], tmp_path / "both.pt"))  # the defaults count as recorded
    assert len(merged.members) == 2


def test_upper_heads_round_trip_and_refuse_to_merge_with_plain(tiny_backbone, tmp_path):
    moved = save_adapter(BloSam(tiny_backbone, upper_heads=True), tmp_path / "moved.pt")
    loaded, _ = load_adapter(moved)
    assert loaded.upper_heads and loaded.upper_parameters()[0] is loaded.prompt
    plain = save_adapter(BloSam(tiny_backbone), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt: cannot be averaged with .*moved.pt: they differ in upper_heads"):
        merge_adapters([moved, plain], tmp_path / "both.pt")
