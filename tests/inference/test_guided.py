"""Guided filtering of a predicted probability: its edge moves onto the image's edge."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blosam_med.inference.guided import guided_filter, guided_logits


def _step(width: int, at: float, sharpness: float) -> torch.Tensor:
    """(32, width) map rising from 0 to 1 across column ``at``."""
    cols = torch.arange(width, dtype=torch.float32)
    return torch.sigmoid((cols - at) * sharpness).expand(32, width).clone()


def test_a_blurred_displaced_edge_snaps_to_the_guide_edge():
    guide = (_step(64, 31.5, 100.0) * 0.8 + 0.1)[None]  # a sharp edge between columns 31 and 32, 1 channel
    prob = _step(64, 33.0, 1.0)  # the prediction's edge 1.5 px to the right of the guide's, and blurred
    out = guided_filter(guide, prob, radius=4, eps=1e-3)
    assert (prob > 0.5).float().sum(1)[0] == 30  # columns 34-63
    assert (out > 0.5).float().sum(1)[0] == 32  # columns 32-63: the guide's edge
    assert torch.allclose(out[:, :20], prob[:, :20], atol=1e-3)  # far from the edge the probability is kept
    left = guided_filter(guide, _step(64, 29.0, 1.0), radius=4, eps=1e-3)  # an edge on the other side
    assert (left > 0.5).float().sum(1)[0] == 33  # from columns 30-63 to 31-63: towards the guide's edge


def test_a_flat_guide_only_smooths():
    """No edge in the guide: the local fit is a constant, the window mean, averaged once more over the windows."""
    prob = torch.rand(24, 40)
    out = guided_filter(torch.full((3, 24, 40), 0.5), prob, radius=2, eps=1e-2)
    box = lambda x: F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    expected = box(box(prob[None, None]))[0, 0]
    assert torch.allclose(out, expected, atol=1e-5)


def test_logits_keep_their_sign_where_guide_and_prediction_agree():
    guide = _step(64, 31.5, 100.0)
    logits = (guide - 0.5) * 12  # the prediction already on the guide's edge
    out = guided_logits(guide, logits, radius=3, eps=1e-3)
    assert torch.equal(out > 0, logits > 0)
    assert torch.isfinite(out).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"guide \(8, 9\) and map \(8, 8\)"):
        guided_filter(torch.zeros(8, 9), torch.zeros(8, 8), 2, 1e-3)
    with pytest.raises(ValueError, match="radius >= 1 and eps > 0"):
        guided_filter(torch.zeros(8, 8), torch.zeros(8, 8), 0, 1e-3)
