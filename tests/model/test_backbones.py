"""Backbone registry: names, the frozen encoder, checkpoints checked with errors that name the file and keys."""

from __future__ import annotations

import pytest
import torch

from blosam_med.model.backbones import (
    BACKBONES,
    CheckpointMismatchError,
    Preprocessing,
    build_backbone,
    load_state_dict_checked,
)


def test_registry_names_and_unknown_name_lists_them():
    assert {"litemedsam", "sam_vit_b", "tiny"} <= set(BACKBONES)
    with pytest.raises(ValueError, match=r"unknown backbone 'tinny'; choose one of: .*tiny"):
        build_backbone("tinny")


def test_tiny_is_seeded_frozen_and_shaped_as_declared():
    a, b = build_backbone("tiny"), build_backbone("tiny")
    assert a.fingerprint == "tiny:seed0" and a.preprocessing == Preprocessing(64, "minmax")
    assert all(
        torch.equal(p, q) for p, q in zip(a.image_encoder.parameters(), b.image_encoder.parameters(), strict=True)
    )
    assert not a.image_encoder.training and not any(p.requires_grad for p in a.image_encoder.parameters())
    assert any(p.requires_grad for p in a.mask_decoder.parameters())  # only the encoder is frozen
    emb = a.image_encoder(torch.rand(2, 3, 64, 64))
    assert tuple(emb.shape[1:]) == a.embedding_shape == (32, 16, 16)


def test_checkpoint_round_trip_changes_the_fingerprint(tmp_path):
    source = build_backbone("tiny")
    with torch.no_grad():
        for p in source.image_encoder.parameters():
            p.add_(1.0)
    parts = {"image_encoder": source.image_encoder, "prompt_encoder": source.prompt_encoder}
    parts["mask_decoder"] = source.mask_decoder
    sd = {f"{name}.{k}": v for name, module in parts.items() for k, v in module.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "tiny.pth")  # wrapped as many released checkpoints are
    loaded = build_backbone("tiny", tmp_path / "tiny.pth")
    assert loaded.fingerprint.startswith("tiny.pth:") and loaded.fingerprint != source.fingerprint
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded.image_encoder(x), source.image_encoder(x))


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth: checkpoint file for backbone 'tiny'"):
        build_backbone("tiny", tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable PyTorch checkpoint"):
        build_backbone("tiny", tmp_path / "junk.pth")
    torch.save({"image_encoder.net.0.weight": torch.zeros(1), "extra.w": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointMismatchError, match="odd.pth: unexpected keys: extra.w"):
        build_backbone("tiny", tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="needs a checkpoint file"):
        build_backbone("sam_vit_b")


def test_load_state_dict_checked_lists_missing_unexpected_and_shape_mismatches():
    module = torch.nn.Linear(2, 3)
    sd = {"weight": torch.zeros(3, 5), "other": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_checked(module, sd, "ckpt.pt")
    message = str(err.value)
    assert message.startswith("ckpt.pt: does not match Linear")
    assert (
        "missing keys: bias" in message and "unexpected keys: other" in message and "shape mismatch: weight" in message
    )
    load_state_dict_checked(module, {"weight": torch.ones(3, 2), "bias": torch.ones(3)}, "ok.pt")
    assert torch.equal(module.weight, torch.ones(3, 2))


def test_preprocessing_dict_round_trip():
    prep = Preprocessing(1024, "mean_std", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert prep.to_dict()["pixel_mean"] == [1.0, 2.0, 3.0]
    assert Preprocessing.from_dict(prep.to_dict()) == prep
