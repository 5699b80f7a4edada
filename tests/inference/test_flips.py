"""Test-time flips: each flipped image is encoded once, predicted, flipped back and averaged as probabilities."""

from __future__ import annotations

import pytest
import torch
from synthetic import CountingEncoder

from blosam_med.data import TaskConfig
from blosam_med.inference import Predictor, preset_options
from blosam_med.model import BloSam, EmbeddingCache


def _model(backbone, seed: int) -> BloSam:
    torch.manual_seed(seed)
    model = BloSam(backbone)
    with torch.no_grad():  # a decoder that is not left-right symmetric
        for p in model.lower_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _image(h: int = 30, w: int = 44) -> torch.Tensor:
    return torch.rand(1, h, w, generator=torch.Generator().manual_seed(3))


def test_flip_averages_probabilities_of_the_flipped_back_prediction(tiny_backbone):
    model = _model(tiny_backbone, 0)
    image = _image()
    plain = Predictor([model], batch_size=2)
    base = plain.logits([image])[0]
    mirrored = plain.logits([image.flip(-1)])[0].flip(-1)
    tta = Predictor([model], batch_size=2, flips=[("h",)]).logits([image])[0]
    expected = torch.logit((base.sigmoid() + mirrored.sigmoid()) / 2, eps=1e-6)
    assert torch.allclose(tta, expected, atol=1e-5)
    assert not torch.allclose(tta, base, atol=1e-3)  # the flip changed the prediction


@pytest.mark.parametrize("flips,dims", [(("h",), (-1,)), (("v",), (-2,))])
def test_flipped_input_gives_the_mirrored_prediction(tiny_backbone, flips, dims):
    """Averaging over an image and its mirror makes the prediction mirror-equivariant; a non-square image checks
    that logits are flipped back after the padding is cropped, not before."""
    predictor = Predictor([_model(tiny_backbone, 1)], batch_size=1, flips=[flips])
    image = _image()
    a = predictor.logits([image])[0]
    b = predictor.logits([image.flip(dims)])[0]
    assert a.shape == (1, 30, 44)
    assert torch.allclose(b.flip(dims), a, atol=1e-5)


def test_models_share_passes_and_a_model_without_flips_is_unchanged(tiny_backbone):
    tiny_backbone.image_encoder = CountingEncoder(tiny_backbone.image_encoder)
    flipped, plain = _model(tiny_backbone, 2), _model(tiny_backbone, 3)
    images = [_image(), _image(40, 40)]
    cache = EmbeddingCache(tiny_backbone, None, progress=False)
    both = Predictor([flipped, plain], cache, batch_size=2, flips=[("h", "v"), ()]).logits(images)
    assert tiny_backbone.image_encoder.images == 3 * len(images)  # original, left-right, up-down
    alone = Predictor([plain], batch_size=2).logits(images)
    for b, a in zip(both, alone, strict=True):
        assert torch.equal(b[1:], a)


def test_flips_from_the_task_preset_are_checked(tiny_backbone):
    task = TaskConfig(name="x", flips=["h"])
    assert task.flips == ("h",) and TaskConfig.from_dict(task.to_dict()) == task
    assert preset_options([task, TaskConfig(name="y")])["flips"] == [("h",), ()]
    with pytest.raises(ValueError, match="flips must be distinct names among"):
        TaskConfig(name="x", flips=["x"])
    with pytest.raises(ValueError, match="flips must"):
        Predictor([BloSam(tiny_backbone)], flips=[("h",), ("v",)])  # one entry per model
