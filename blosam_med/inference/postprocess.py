"""Mask post-processing of a task, with MONAI transforms: keep the largest connected components, fill holes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.transforms import Compose, FillHoles, KeepLargestConnectedComponent

__all__ = ["mask_postprocess"]


def mask_postprocess(keep_components: int = 0, fill_holes: bool = False) -> Compose | None:
    """A transform on binary (1, H, W) masks, or ``None`` when there is nothing to do.

    Args:
        keep_components: keep only the ``n`` largest connected components (``0``: keep all), e.g. 1 for a polyp,
            2 for the lung fields on a chest X-ray.
        fill_holes: fill enclosed holes of the foreground.
    """
    if keep_components < 0:
        raise ValueError(f"keep_components must be >= 0, got {keep_components}")
    steps: list[Callable] = []
    if keep_components:
        steps.append(KeepLargestConnectedComponent(applied_labels=[1], num_components=keep_components))
    if fill_holes:
        steps.append(FillHoles(applied_labels=[1]))
    if not steps:
        return None
    # KeepLargestConnectedComponent edits its input in place: work on a copy of the caller's mask
    return Compose([lambda m: torch.as_tensor(m).clone(), *steps, lambda m: torch.as_tensor(m).to(torch.uint8)])
