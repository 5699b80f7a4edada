"""Box refinement: boxes of the first mask's components, prompted to the backbone's pretrained decoder, gated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blosam_med.data import SampleKeys, TaskConfig, load_samples, load_task
from blosam_med.data.datalist import open_datalist
from blosam_med.inference import Predictor, preset_options
from blosam_med.inference.refine import BoxRefiner, box_logits, component_boxes
from blosam_med.model import BloSam, EmbeddingCache


def test_component_boxes_largest_first_without_specks():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:9] = 1  # 24 pixels
    mask[10:18, 20:28] = 1  # 64 pixels
    mask[0, 29] = 1  # a speck: 1 of 89 foreground pixels
    assert component_boxes(mask, min_fraction=0.05).tolist() == [[20, 10, 28, 18], [3, 2, 9, 6]]
    assert component_boxes(mask).shape == (3, 4)
    assert component_boxes(mask, largest=1).tolist() == [[20, 10, 28, 18]]
    assert component_boxes(np.zeros((5, 5))).shape == (0, 4)


def _first_logits(h: int = 30, w: int = 44) -> torch.Tensor:
    logits = torch.full((h, w), -4.0)
    logits[5:20, 10:30] = 3.0
    logits[25:28, 2:5] = 2.0  # a smaller second component
    return logits


def test_box_is_scaled_like_the_image(tiny_backbone, monkeypatch):
    """A box in the pixels of a 30x44 image reaches the prompt encoder in the longest-side-resized frame."""
    seen = []
    encode = tiny_backbone.prompt_encoder.forward
    monkeypatch.setattr(
        tiny_backbone.prompt_encoder, "forward", lambda **kw: seen.append(kw["boxes"].clone()) or encode(**kw)
    )
    emb = torch.randn(1, *tiny_backbone.embedding_shape)
    out = box_logits(tiny_backbone, emb, np.array([[10, 5, 30, 20]], np.float32), (30, 44))
    assert out.shape == (30, 44)
    scale = tiny_backbone.preprocessing.input_size / 44
    assert torch.allclose(seen[0], torch.tensor([[10, 5, 30, 20]]) * scale)


def test_gate_keeps_or_replaces_the_first_logits(tiny_backbone):
    emb = torch.randn(1, *tiny_backbone.embedding_shape, generator=torch.Generator().manual_seed(0))
    first = _first_logits()
    refined = box_logits(tiny_backbone, emb, component_boxes(first.numpy() > 0, largest=1), (30, 44))
    assert torch.equal(BoxRefiner(tiny_backbone, components=1, gate=0.0)(emb, first), refined)
    a, b = first > 0, refined > 0
    agreement = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert agreement < 1.0  # a random decoder does not redraw the rectangle
    assert torch.equal(BoxRefiner(tiny_backbone, 1, gate=min(1.0, agreement + 1e-3))(emb, first), first)
    two = box_logits(tiny_backbone, emb, component_boxes(first.numpy() > 0), (30, 44))
    assert torch.equal(BoxRefiner(tiny_backbone, components=2, gate=0.0)(emb, first), two)
    empty = torch.full((30, 44), -1.0)
    assert torch.equal(BoxRefiner(tiny_backbone, 1, 0.0)(emb, empty), empty)  # nothing to box: unchanged
    with pytest.raises(ValueError, match="at least one component"):
        BoxRefiner(tiny_backbone, 0)
    with pytest.raises(ValueError, match="Dice in"):
        BoxRefiner(tiny_backbone, 1, gate=1.5)


def test_predictor_refines_its_own_logits_and_leaves_other_models_alone(tiny_backbone):
    torch.manual_seed(0)
    model, other = BloSam(tiny_backbone), BloSam(tiny_backbone)
    with torch.no_grad():
        model.prompt.add_(3.0 * torch.randn_like(model.prompt))  # a first mask that is neither empty nor full
    image = torch.rand(1, 30, 44, generator=torch.Generator().manual_seed(1))
    cache = EmbeddingCache(tiny_backbone, None, progress=False)
    plain = Predictor([model, other], cache, batch_size=1).logits([image])[0]
    assert (plain[0] > 0).any()
    both = Predictor([model, other], cache, batch_size=1, refine=[(1, 0.0), (0, 0.6)]).logits([image])[0]
    expected = BoxRefiner(tiny_backbone, 1, 0.0)(cache.embed([image]), plain[0])
    assert torch.allclose(both[0], expected, atol=1e-5)
    assert torch.equal(both[1], plain[1])
    with pytest.raises(ValueError, match="refinement entries"):
        Predictor([model], refine=[(1, 0.5), (1, 0.5)])


def test_refinement_comes_from_the_task_preset():
    task = TaskConfig(name="x", refine_boxes=2, refine_gate=0.7)
    assert TaskConfig.from_dict(task.to_dict()) == task
    assert preset_options([task, TaskConfig(name="y")])["refine"] == [(2, 0.7), (0, 0.6)]
    with pytest.raises(ValueError, match="refine_boxes must be >= 0"):
        TaskConfig(name="x", refine_boxes=-1)
    with pytest.raises(ValueError, match="refine_gate a Dice"):
        TaskConfig(name="x", refine_boxes=1, refine_gate=2.0)


@pytest.mark.realdata
def test_litemedsam_box_refinement_tightens_a_coarse_polyp_mask(litemedsam, shared_data):
    """A rectangle 1.5 times the polyp's box, centred on it, becomes a much better mask from the pretrained decoder."""
    task = load_task("polyp")
    items = open_datalist(shared_data / "polyp", test_fraction=0.0)
    samples = load_samples([it for s in items.values() for it in s][:3], task)
    cache = EmbeddingCache(litemedsam, None, progress=False)
    for sample in samples:
        label = sample[SampleKeys.LABEL][0] > 0
        (x0, y0, x1, y1) = component_boxes(label.numpy(), largest=1)[0].astype(int)
        h, w = label.shape
        cx, cy, bw, bh = (x0 + x1) // 2, (y0 + y1) // 2, x1 - x0, y1 - y0
        coarse = torch.full((h, w), -2.0)
        ry, rx = bh // 2 + bh // 4, bw // 2 + bw // 4
        coarse[max(0, cy - ry) : cy + ry, max(0, cx - rx) : cx + rx] = 2.0
        refined = BoxRefiner(litemedsam, 1, 0.0)(cache.embed([sample[SampleKeys.IMAGE]]), coarse)
        assert _dice(refined > 0, label) > _dice(coarse > 0, label) + 0.1, sample[SampleKeys.IMAGE_PATH]


def _dice(mask: torch.Tensor, ref: torch.Tensor) -> float:
    return float(2 * (mask & ref).sum() / (mask.sum() + ref.sum()))
