"""preprocess: encoder input geometry and its exact inverse for logits."""

from __future__ import annotations

import pytest
import torch

from blosam_med.model.backbones import Preprocessing
from blosam_med.model.preprocess import postprocess_logits, preprocess_image, resized_shape

MINMAX = Preprocessing(input_size=64, normalize="minmax")


def test_longest_side_to_input_size_padded_bottom_right():
    assert resized_shape(30, 60, 64) == (32, 64)
    image = torch.rand(1, 30, 60) * 0.5 + 0.25
    x = preprocess_image(image, MINMAX)
    assert x.shape == (3, 64, 64)
    assert x[:, 32:, :].abs().sum() == 0  # padding below the resized image
    assert x[:, :32, :].min() == 0 and x[:, :32, :].max() == pytest.approx(1.0)  # min-max to [0, 1]


def test_mean_std_uses_the_0_255_scale():
    prep = Preprocessing(input_size=8, normalize="mean_std", pixel_mean=(100.0,) * 3, pixel_std=(50.0,) * 3)
    x = preprocess_image(torch.ones(3, 8, 8), prep)
    assert torch.allclose(x, torch.full_like(x, (255.0 - 100.0) / 50.0))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        preprocess_image(torch.rand(2, 8, 8), MINMAX)
    with pytest.raises(ValueError, match="NaN or inf"):
        preprocess_image(torch.full((1, 8, 8), float("nan")), MINMAX)


def test_postprocess_puts_a_mask_back_on_the_original_grid():
    mask = torch.zeros(1, 30, 60)
    mask[:, 5:20, 10:40] = 1
    x = preprocess_image(mask, MINMAX)[:1]  # the mask through the same geometry, as logits
    logits = (x[None] - 0.5) * 10
    back = postprocess_logits(logits, MINMAX, (30, 60))
    assert back.shape == (1, 1, 30, 60)
    agreement = ((back[0] > 0) == (mask > 0)).float().mean()
    assert agreement > 0.97
