from __future__ import annotations

import torch

from blosam_med.model import PROMPT_PARAMETER, BloSam, LoraSettings


def _base_logits(backbone, emb):
    """The untouched backbone decoder with its no-mask dense embedding (SAM's prompt-free call)."""
    sparse, dense = backbone.prompt_encoder(points=None, boxes=None, masks=None)
    out, _ = backbone.mask_decoder(emb, backbone.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
    return out


def test_trainable_parts(tiny_backbone):
    model = BloSam(tiny_backbone)
    assert model.lora_modules == 14
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    lower = {id(p) for p in model.lower_parameters()}
    upper = {id(p) for p in model.upper_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert lower.isdisjoint(upper) and lower | upper == trainable
    assert sum(p.numel() for p in model.upper_parameters()) == tiny_backbone.embedding_shape[0]
    names = {n for n, _ in model.named_lower_parameters()}
    assert any(".lora_A." in n for n in names) and any("output_upscaling" in n for n in names)
    assert not any(n.startswith("image_encoder") for n in names)
    assert PROMPT_PARAMETER not in names


def test_heads_frozen_when_asked(tiny_backbone):
    model = BloSam(tiny_backbone, train_heads=False)
    names = [n for n, _ in model.named_lower_parameters()]
    assert names and all("lora_" in n for n in names)


def test_encoder_stays_eval_and_backbone_untouched(tiny_backbone):
    model = BloSam(tiny_backbone).train()
    assert not model.image_encoder.training and model.mask_decoder.training
    # The backbone's own decoder is not injected (adapters share only the encoder).
    assert not any("lora_" in n for n, _ in tiny_backbone.mask_decoder.named_parameters())
    assert model.image_encoder is tiny_backbone.image_encoder


def test_fresh_model_equals_base_decoder(tiny_backbone):
    model = BloSam(tiny_backbone).eval()
    emb = torch.randn(3, *tiny_backbone.embedding_shape)
    with torch.no_grad():
        ours = model.forward_embeddings(emb)
        base = torch.cat([_base_logits(tiny_backbone, e[None]) for e in emb])
    assert ours.shape == (3, 1, 64, 64)
    assert (ours - base).abs().max() < 1e-5


def test_batched_equals_one_by_one_and_forward_images(tiny_backbone):
    model = BloSam(tiny_backbone, LoraSettings(rank=2, alpha=2.0)).eval()
    with torch.no_grad():
        for p in model.lower_parameters():
            p.add_(0.05 * torch.randn_like(p))
        images = torch.rand(4, 3, 64, 64)
        batched = model(images)
        single = torch.cat([model(im[None]) for im in images])
    assert (batched - single).abs().max() < 1e-4


def test_gradients_reach_lower_and_upper_only(tiny_backbone):
    model = BloSam(tiny_backbone).train()
    model.forward_embeddings(torch.randn(2, *tiny_backbone.embedding_shape)).sum().backward()
    assert model.prompt.grad is not None and model.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.image_encoder.parameters())
    lora_b = [p for n, p in model.named_lower_parameters() if "lora_B" in n]
    assert all(p.grad is not None for p in lora_b)


def test_wrong_embedding_shape_is_refused(tiny_backbone):
    model = BloSam(tiny_backbone)
    try:
        model.forward_embeddings(torch.randn(2, 8, 16, 16))
    except ValueError as err:
        assert "(B, 32, 16, 16)" in str(err)
    else:
        raise AssertionError("a wrong embedding shape was accepted")


def test_postprocess_restores_original_size(tiny_backbone):
    model = BloSam(tiny_backbone)
    logits = torch.zeros(1, 1, 64, 64)
    logits[..., :16, :] = 1.0  # the resized 100x50 image occupies the top-left 64x32 of the padded frame
    out = model.postprocess(logits, (100, 50))
    assert out.shape == (1, 1, 100, 50)
    assert (out[..., :20, :] > 0).all() and (out[..., 30:, :] <= 0).all()


def test_box_prompt_tokens_start_at_the_frame_box_and_are_upper_level(tiny_backbone):
    model = BloSam(tiny_backbone, prompt_init="box")
    size = float(tiny_backbone.preprocessing.input_size)
    sparse, _ = tiny_backbone.prompt_encoder(
        points=None, boxes=torch.tensor([[0.0, 0.0, size - 1, size - 1]]), masks=None
    )
    assert torch.equal(model.prompt_tokens.detach(), sparse)
    upper = {id(p) for p in model.upper_parameters()}
    assert id(model.prompt_tokens) in upper and id(model.prompt) in upper
    assert upper.isdisjoint({id(p) for p in model.lower_parameters()})
    # the decoder sees the box tokens: the prompt-free call equals the backbone's own call with that box
    emb = torch.randn(2, *tiny_backbone.embedding_shape)
    _, dense = tiny_backbone.prompt_encoder(points=None, boxes=None, masks=None)
    ref, _ = tiny_backbone.mask_decoder(
        emb, tiny_backbone.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
    )
    assert torch.allclose(model.forward_embeddings(emb), ref, atol=1e-5)
    assert not torch.allclose(BloSam(tiny_backbone).forward_embeddings(emb), ref, atol=1e-5)


def test_upper_heads_move_the_mask_heads_to_the_upper_level(tiny_backbone):
    import pytest

    plain, moved = BloSam(tiny_backbone), BloSam(tiny_backbone, upper_heads=True)
    assert [n for n, p in plain.named_parameters() if p.requires_grad] == [
        n for n, p in moved.named_parameters() if p.requires_grad
    ]  # the same tensors train (an adapter's keys do not change), only their level does
    lower = {n for n, _ in moved.named_lower_parameters()}
    upper = {id(p) for p in moved.upper_parameters()}
    assert moved.upper_parameters()[0] is moved.prompt
    assert all("lora_" in n or n.startswith("mask_decoder.iou_prediction_head") for n in lower)
    assert any("lora_" in n for n in lower)
    heads = [p for n, p in moved.named_parameters() if n.startswith("mask_decoder.output_hypernetworks_mlps")]
    assert heads and all(id(p) in upper for p in heads)
    assert len(upper) + len(lower) == len(plain.upper_parameters()) + len(plain.lower_parameters())
    with pytest.raises(ValueError, match="upper_heads=True .* needs train_heads=True"):
        BloSam(tiny_backbone, train_heads=False, upper_heads=True)


def test_unknown_prompt_init_is_refused(tiny_backbone):
    import pytest

    with pytest.raises(ValueError, match="prompt_init must be one of"):
        BloSam(tiny_backbone, prompt_init="points")
