"""Edge-aware refinement of a predicted probability with the image as the guide (He, Sun and Tang's guided filter).

The mask decoder draws its outline on a 256 x 256 grid that is upsampled bilinearly to the image; where the image
has a sharper edge than that (the dark gap between two teeth), the guided filter moves the probability's edge onto
the image's: locally the output is a linear function of the guide, fitted to the probability in a window, so it
follows the guide's edges where the guide varies (variance well above ``eps``) and smooths the probability where it
is flat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["guided_filter", "guided_logits"]


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, the window cut at the borders (counting only the pixels inside)."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """The grey-guide guided filter.

    Args:
        guide: (H, W) or (C, H, W) image in [0, 1]; channels are averaged into one grey guide.
        src: (H, W) map to filter (a probability).
        radius: window radius in pixels of the image.
        eps: regularisation, in squared guide units: edges whose local variance is well above it are kept.

    Returns:
        (H, W) float32, ``src`` filtered.
    """
    if radius < 1 or eps <= 0:
        raise ValueError(f"guided filter needs radius >= 1 and eps > 0, got {radius} and {eps}")
    g = guide.float().mean(0) if guide.ndim == 3 else guide.float()
    if g.shape != src.shape:
        raise ValueError(f"guide {tuple(g.shape)} and map {tuple(src.shape)} differ in size")
    g, p = g[None, None], src.float()[None, None]
    mean_g, mean_p = _box(g, radius), _box(p, radius)
    var_g = _box(g * g, radius) - mean_g * mean_g
    cov_gp = _box(g * p, radius) - mean_g * mean_p
    a = cov_gp / (var_g + eps)
    b = mean_p - a * mean_g
    return (_box(a, radius) * g + _box(b, radius))[0, 0]


def guided_logits(guide: torch.Tensor, logits: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Logits (H, W) -> the logits of their probability guided-filtered by the image (threshold at 0 as before)."""
    prob = guided_filter(guide, torch.sigmoid(logits.float()), radius, eps).clamp(1e-6, 1 - 1e-6)
    return torch.logit(prob)
