"""LoRA on the mask decoder's two-way transformer: where it goes, its scale, what peft leaves trainable."""

from __future__ import annotations

import pytest
import torch

from blosam_med.model.adapter import LORA_TARGET, LoraSettings, count_lora_modules, inject_lora


def test_lora_goes_on_the_q_and_v_projections_of_the_decoder_transformer(tiny_backbone):
    model = torch.nn.Module()
    model.mask_decoder = tiny_backbone.mask_decoder
    inject_lora(model, LoraSettings(rank=2, alpha=2.0))
    assert count_lora_modules(model) == 14  # depth 2: 2 blocks x 3 attentions + the final attention, q and v each
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) and "transformer" in n for n in trainable)
    assert "q_proj" in LORA_TARGET and "v_proj" in LORA_TARGET


def test_fresh_lora_leaves_the_output_unchanged(tiny_backbone):
    layer = tiny_backbone.mask_decoder.transformer.layers[0].self_attn
    x = torch.rand(1, 5, layer.embedding_dim)
    before = layer(q=x, k=x, v=x)
    model = torch.nn.Module()
    model.mask_decoder = tiny_backbone.mask_decoder
    inject_lora(model, LoraSettings(rank=4, alpha=4.0))
    assert torch.allclose(layer(q=x, k=x, v=x), before)  # B starts at zero


def test_settings_are_frozen_and_rank_must_be_positive(tiny_backbone):
    settings = LoraSettings()
    assert settings.to_dict() == {"rank": 4, "alpha": 4.0, "dropout": 0.0}
    with pytest.raises(AttributeError):
        settings.rank = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="LoRA rank must be >= 1, got 0"):
        inject_lora(torch.nn.Module(), LoraSettings(rank=0))
