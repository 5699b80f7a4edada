"""Intensity windowing to [0, 1]: CT window presets, custom width/level, per-image percentiles (optionally followed
by adaptive histogram equalisation), RGB passthrough.

The array transform :class:`WindowIntensity` holds the math; its dictionary twin :class:`WindowIntensityd` wraps it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = ["WINDOW_PRESETS", "WINDOW_NAMES", "window_range", "WindowIntensity", "WindowIntensityd"]

#: CT windows in Hounsfield units as (width, level):
#: ``level - width/2 -> 0``, ``level -> 0.5``, ``level + width/2 -> 1``.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (400.0, 40.0),
    "abdomen": (350.0, 50.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}

#: Every accepted ``window`` name: the CT presets, ``custom`` (width/level), ``percentile``, ``rgb``, ``minmax``,
#: ``none``.
WINDOW_NAMES: tuple[str, ...] = (*WINDOW_PRESETS, "custom", "percentile", "clahe", "rgb", "minmax", "none")


def window_range(
    window: str | None = None, width: float | None = None, level: float | None = None
) -> tuple[float, float]:
    """The intensity range ``(level - width/2, level + width/2)`` of a CT preset or of a custom width/level.

    Raises:
        ValueError: unknown preset, or a custom window without a positive ``width`` and a ``level``.
    """
    if window in WINDOW_PRESETS:
        width, level = WINDOW_PRESETS[window]
    elif window not in (None, "custom"):
        raise ValueError(f"window '{window}' has no fixed range; presets: {', '.join(WINDOW_PRESETS)}")
    if width is None or level is None or not width > 0:
        raise ValueError(f"a custom window needs width > 0 and a level, got width={width}, level={level}")
    return float(level - width / 2), float(level + width / 2)


class WindowIntensity(Transform):
    """Map intensities to float32 in [0, 1].

    Args:
        window: how to map intensities:
            a CT preset of :data:`WINDOW_PRESETS` (``lung``, ``mediastinum``, ``abdomen``, ``bone``, ``brain``),
            clipped outside the window; ``"custom"`` with ``width`` and ``level``; ``"percentile"``: clip to the
            ``lower``-``upper`` percentiles of this image (all channels together), then scale (X-ray, endoscopy);
            ``"clahe"``: ``"percentile"``, then contrast-limited adaptive histogram equalisation of each channel
            (scikit-image ``equalize_adapthist``, tiles of 1/8 of each side, clip limit ``clip_limit``);
            ``"rgb"``: 8-bit colour divided by 255 when the maximum exceeds 1, data already in [0, 1] passed through;
            ``"minmax"``: this image's minimum -> 0, maximum -> 1; ``"none"``: data already in [0, 1], passed
            through unchanged. ``None`` with ``width`` and ``level`` means ``"custom"``.
        width: window width (same units as the image, HU for CT); with ``level`` overrides a preset.
        level: window centre.
        lower: lower percentile for ``"percentile"``, defaults to 0.5.
        upper: upper percentile for ``"percentile"``, defaults to 99.5.
        clip_limit: ``"clahe"``'s contrast limit in (0, 1] (higher: more contrast), defaults to 0.01.

    Raises:
        ValueError: an unknown window name or incomplete width/level (at construction); NaN or infinite input, or
            ``"none"`` / ``"rgb"`` data outside the range they accept (at call).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]  # noqa: RUF012 (MONAI's Transform attribute)

    def __init__(
        self,
        window: str | None = "percentile",
        width: float | None = None,
        level: float | None = None,
        lower: float = 0.5,
        upper: float = 99.5,
        clip_limit: float = 0.01,
    ) -> None:
        if window is None or (width is not None and level is not None):
            window = window if window in WINDOW_PRESETS else "custom"
        if window not in WINDOW_NAMES:
            raise ValueError(f"unknown window '{window}'; use one of {', '.join(WINDOW_NAMES)} (or width= and level=)")
        self.window = window
        self._scaler: Transform | None = None
        if window in WINDOW_PRESETS or window == "custom":
            custom = width is not None and level is not None
            a_min, a_max = window_range("custom" if custom else window, width, level)
            self.range = (a_min, a_max)
            self._scaler = ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True, dtype=torch.float32)  # type: ignore[arg-type]  # MONAI accepts torch dtypes
        elif window in ("percentile", "clahe"):
            if window == "clahe" and not 0 < clip_limit <= 1:
                raise ValueError(f"clahe needs 0 < clip_limit <= 1, got {clip_limit}")
            self.clip_limit = clip_limit
            if not 0 <= lower < upper <= 100:
                raise ValueError(f"percentiles need 0 <= lower < upper <= 100, got {lower}, {upper}")
            self._scaler = ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=True, dtype=torch.float32)  # type: ignore[arg-type]  # MONAI accepts torch dtypes

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Window ``img`` (any shape, channel-first by MONAI convention); returns float32 in [0, 1], same type."""
        x = convert_to_tensor(img, track_meta=True).float()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"image has {bad} NaN or infinite values; fix or mask them before windowing")
        if self._scaler is not None:
            if self.window in ("percentile", "clahe") and x.numel() and x.max() == x.min():
                out = torch.zeros_like(x)  # a constant image has no range to scale
            else:
                out = self._scaler(x)
                if self.window == "clahe":
                    out = self._equalize(out)
        elif self.window == "rgb":
            if x.numel() and x.min() < 0:
                raise ValueError(f"window 'rgb' expects 0-255 or [0, 1] colour values, found minimum {float(x.min())}")
            out = x / 255.0 if x.numel() and x.max() > 1.0 else x
            if out.numel() and out.max() > 1.0:
                raise ValueError(f"window 'rgb' expects 8-bit colour, found maximum {float(x.max())}; use 'percentile'")
        elif self.window == "minmax":
            out = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8) if x.numel() else x
        else:  # none
            if x.numel() and (x.min() < 0 or x.max() > 1):
                raise ValueError(
                    f"window 'none' expects data in [0, 1], found [{float(x.min())}, {float(x.max())}]; "
                    "choose a window (percentile, a CT preset, ...)"
                )
            out = x
        out = convert_to_tensor(out, dtype=torch.float32, track_meta=True)
        return convert_to_dst_type(out, dst=img, dtype=torch.float32)[0]

    def _equalize(self, x: torch.Tensor) -> torch.Tensor:
        from skimage.exposure import equalize_adapthist

        a = x.detach().cpu().float().numpy()
        eq = [equalize_adapthist(c, clip_limit=self.clip_limit) if c.max() > c.min() else c for c in a]
        return torch.as_tensor(np.stack(eq), dtype=torch.float32)


class WindowIntensityd(MapTransform):
    """Dictionary-based :class:`WindowIntensity`.

    Args:
        keys: keys of the images to window.
        window: see :class:`WindowIntensity`.
        width: see :class:`WindowIntensity`.
        level: see :class:`WindowIntensity`.
        lower: see :class:`WindowIntensity`.
        upper: see :class:`WindowIntensity`.
        clip_limit: see :class:`WindowIntensity`.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = WindowIntensity.backend

    def __init__(
        self,
        keys: KeysCollection,
        window: str | None = "percentile",
        width: float | None = None,
        level: float | None = None,
        lower: float = 0.5,
        upper: float = 99.5,
        clip_limit: float = 0.01,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = WindowIntensity(window, width, level, lower, upper, clip_limit)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d
