"""Encoder input preparation and its inverse for predicted logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blosam_med.model.backbones import Preprocessing

__all__ = ["resized_shape", "preprocess_image", "preprocess_batch", "postprocess_logits"]


def resized_shape(height: int, width: int, input_size: int) -> tuple[int, int]:
    """(h, w) after resizing the longest side to ``input_size`` with the aspect kept (SAM's rounding)."""
    scale = input_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess_image(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """One image to the encoder input.

    Args:
        image: (C, H, W) float, C = 1 (repeated to 3) or 3, values in [0, 1] after windowing.
        prep: the backbone's preprocessing.

    Returns:
        (3, S, S) float32 with S = ``prep.input_size``, resized longest side to S, normalised, zero-padded
        bottom/right.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    x = image.float()
    if not torch.isfinite(x).all():
        raise ValueError("image contains NaN or inf values")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    h, w = resized_shape(x.shape[1], x.shape[2], prep.input_size)
    x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    if prep.normalize == "minmax":
        lo, hi = x.min(), x.max()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    elif prep.normalize == "mean_std":
        mean = torch.tensor(prep.pixel_mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(prep.pixel_std, dtype=x.dtype).view(-1, 1, 1)
        x = (x.clamp(0, 1) * 255.0 - mean) / std
    else:
        raise ValueError(f"unknown normalisation '{prep.normalize}' (expected 'minmax' or 'mean_std')")
    return F.pad(x, (0, prep.input_size - w, 0, prep.input_size - h))


def preprocess_batch(images: list[torch.Tensor], prep: Preprocessing) -> torch.Tensor:
    """A list of (C, H, W) images of any sizes -> (B, 3, S, S)."""
    return torch.stack([preprocess_image(im, prep) for im in images])


def postprocess_logits(logits: torch.Tensor, prep: Preprocessing, original_size: tuple[int, int]) -> torch.Tensor:
    """Undo padding and resizing: low-res logits back to the original image grid.

    Args:
        logits: (B, 1, h, w) decoder logits (h = w = 256 for SAM-family decoders), for images of one original size.
        prep: the backbone's preprocessing.
        original_size: (H, W) of the image before preprocessing.

    Returns:
        (B, 1, H, W) logits; threshold at 0 for a mask.
    """
    S = prep.input_size
    x = logits if logits.shape[-2:] == (S, S) else F.interpolate(logits, (S, S), mode="bilinear", align_corners=False)
    h, w = resized_shape(original_size[0], original_size[1], S)
    x = x[..., :h, :w]
    return F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False)
