"""Pillow images (PNG, JPEG, TIFF, BMP, GIF) brought to grey or RGB before windowing, and multi-frame files noted.

Pillow opens an image in one of many modes; read as raw arrays most of them mean something else than grey levels or
RGB: a palette image (``P``) holds palette indices, a CMYK JPEG four ink channels, ``YCbCr``/``LAB``/``HSV`` other
colour spaces, ``1`` booleans, ``I;16B`` big-endian integers. :func:`convert_mode` converts each through Pillow
(``Image.convert``) to the mode that shows the same picture, keeping the precision of grey images:

==========================================  =====================================================
mode read                                   mode given to the reader
==========================================  =====================================================
``L``, ``RGB``, ``I;16``, ``I``, ``F``      unchanged (8-bit, 16-bit, 32-bit integer and float grey)
``I;16B``, ``I;16L``, ``I;16N``             ``I`` (32-bit integer grey, values unchanged)
``1``                                       ``L`` (0 / 255)
``LA``, ``La``                              ``L`` (alpha dropped)
``P``, ``PA`` with a grey palette           ``L``
``P``, ``PA`` with a colour palette         ``RGB``
``RGBA``, ``RGBa``, ``RGBX``, ``CMYK``,     ``RGB`` (alpha dropped)
``YCbCr``, ``LAB``, ``HSV``, any other
==========================================  =====================================================

Masks are not converted: the index of a palette mask is its label (PASCAL VOC masks are saved so).

An animated GIF or a multi-page TIFF is read as its first frame (page); :func:`raster_frames` counts them and
:func:`frames_note` says so, for the log and the inference manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PIL import Image

__all__ = ["convert_mode", "mode_converter", "raster_frames", "frames_note", "KEPT_MODES"]

logger = logging.getLogger(__name__)

#: Pillow modes read as they are (grey of 8, 16, 32 bits or float; RGB).
KEPT_MODES = ("L", "RGB", "I;16", "I", "F")

_GREY_MODES = {"1": "L", "LA": "L", "La": "L", "I;16B": "I", "I;16L": "I", "I;16N": "I"}


def _grey_palette(image: Image.Image) -> bool:
    palette = image.getpalette("RGB")
    if not palette:
        return True
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def convert_mode(image: Image.Image, path: str | Path = "") -> Image.Image:
    """``image`` in grey (``L``, ``I;16``, ``I``, ``F``) or ``RGB``, converted through Pillow (see the module table).

    Raises:
        ValueError: naming ``path`` and the mode, when Pillow cannot convert it.
    """
    mode = image.mode
    if mode in KEPT_MODES:
        return image
    try:
        if mode == "La":
            return image.convert("LA").convert("L")
        if mode in _GREY_MODES:
            return image.convert(_GREY_MODES[mode])
        if mode in ("P", "PA"):
            return image.convert("L" if _grey_palette(image) else "RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(
            f"{path}: Pillow image mode '{mode}' cannot be converted to grey or RGB ({err}); save the image as a grey "
            "or RGB PNG"
        ) from err


def raster_frames(path: str | Path) -> int:
    """The number of frames (GIF) or pages (TIFF) of an image file; 1 for single images and unreadable files."""
    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1) or 1)
    except (OSError, ValueError):
        return 1


def frames_note(path: str | Path, frames: int | None = None) -> str | None:
    """``"first of 3 frames read (animated GIF)"`` for a file of several frames (pages), else ``None``."""
    frames = raster_frames(path) if frames is None else frames
    if frames <= 1:
        return None
    what = "pages" if str(path).lower().endswith((".tif", ".tiff")) else "frames"
    fmt = {"frames": "animated GIF", "pages": "multi-page TIFF"}[what]
    if not str(path).lower().endswith((".gif", ".tif", ".tiff")):
        fmt = "multi-frame image"
    return f"first of {frames} {what} read ({fmt})"


def mode_converter(path: str | Path) -> Callable[[Image.Image], Image.Image]:
    """A ``converter`` for ``monai.data.PILReader``: :func:`convert_mode`, and a warning when the file has several
    frames (pages), of which the reader takes the first."""

    def convert(image: Image.Image) -> Image.Image:
        note = frames_note(path, int(getattr(image, "n_frames", 1) or 1))
        if note is not None:
            logger.warning("%s: %s; save each frame as its own image to segment the others", path, note)
        return convert_mode(image, path)

    return convert
