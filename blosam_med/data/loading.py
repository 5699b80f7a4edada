"""Image/mask pairs and 2D samples: images read by :mod:`blosam_med.data.reading`, windowed, masks checked and
binarised, volumes cut into slices."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from blosam_med.data.dicom import NON_IMAGE_MODALITIES
from blosam_med.data.files import case_id
from blosam_med.data.keys import PairKeys, Sample, SampleKeys
from blosam_med.data.reading import read_image
from blosam_med.data.slices import volume_to_slices
from blosam_med.data.tasks import TaskConfig
from blosam_med.data.windowing import WindowIntensity

__all__ = ["load_pair", "load_samples", "mask_values", "binarise"]

logger = logging.getLogger(__name__)


def _to_channels(img: torch.Tensor, task: TaskConfig, path: Path) -> torch.Tensor:
    c, channels = img.shape[0], task.channels
    if c in (2, 4):  # grey + alpha, RGBA: drop alpha
        img, c = img[: c - 1], c - 1
    if c == channels:
        return img
    if channels == 1 and c == 3:
        return img.float().mean(0, keepdim=True)
    if channels == 3 and c == 1:
        logger.warning(
            "%s: a grayscale image (1 channel), but task '%s' expects 3 channels (RGB); the grey channel is copied "
            "to all three, and results may be much worse than on colour images",
            path,
            task.name,
        )
        return img.expand(3, *img.shape[1:]).contiguous()
    raise ValueError(f"{path}: {c} channels; the task expects {channels} (1 grey or 3 RGB)")


#: Mask files whose compression changes values: read as binary masks (:func:`mask_values`).
LOSSY_EXT = (".jpg", ".jpeg")


def mask_values(label: torch.Tensor, path: str | Path) -> torch.Tensor:
    """A (C, ...) mask as one channel: alpha dropped, identical colour channels merged.

    A JPEG mask (Kvasir-SEG ships its masks so) is binary: its colour channels are averaged and values of at least
    128 become 255, the rest 0, because compression spreads 0 and 255 over about 0-20 and 235-255 and "non-zero is
    foreground" would take the noise (a JPEG mask whose maximum is below 128, 0/1 values saved so: non-zero is 1).

    Raises:
        ValueError: naming the file: NaN/inf values, or several channels that differ (a colour label image).
    """
    lab = torch.as_tensor(label)
    if not torch.isfinite(lab.float()).all():
        raise ValueError(f"{path}: mask contains NaN or infinite values")
    if str(path).lower().endswith(LOSSY_EXT):
        grey = lab[: 3 if lab.shape[0] >= 3 else 1].float().mean(0, keepdim=True)
        top, cut = (255.0, 127.5) if float(grey.max()) >= 128 else (1.0, 0.5)
        return torch.where(grey >= cut, top, 0.0).to(torch.uint8)
    c = lab.shape[0]
    if c in (2, 4):
        lab = lab[: c - 1]
    if lab.shape[0] > 1:
        if not all(torch.equal(lab[0], lab[i]) for i in range(1, lab.shape[0])):
            raise ValueError(
                f"{path}: mask has {c} channels with different values (a colour image?); "
                "expected a single-channel mask (0 = background)"
            )
        lab = lab[:1]
    return lab


def _check_binary(label: torch.Tensor, path: Path, task: TaskConfig) -> None:
    """A task without declared ``label_values`` takes every non-zero value as foreground: refuse a mask with several
    non-zero values (a label map), as ``blosam prepare`` does, instead of merging its structures silently."""
    if task.foreground_values is not None:
        return
    present = [int(v) for v in torch.unique(torch.as_tensor(label)).tolist() if v != 0]
    if len(present) > 1:
        raise ValueError(
            f"{path}: not a binary mask: values {present[:8]} besides 0, but task '{task.name}' has one label "
            "(label_values: nonzero); declare the foreground values (label_values: [1]) or save 0/1 or 0/255 masks"
        )


def binarise(label: torch.Tensor, values: Sequence[int] | None) -> torch.Tensor:
    """uint8 0/1: 1 where ``label`` is one of ``values`` (``None``: where it is non-zero)."""
    lab = torch.as_tensor(label)
    if values is None:
        return (lab != 0).to(torch.uint8)
    return torch.isin(lab, torch.tensor(list(values), dtype=lab.dtype)).to(torch.uint8)


def load_pair(
    image_path: str | Path,
    label_path: str | Path | None = None,
    task: TaskConfig | None = None,
    *,
    check_labels: bool = False,
) -> dict[str, Any]:
    """An image windowed to [0, 1] with the task's channels, and its 0/1 mask on the same grid.

    Args:
        image_path: image file or DICOM series folder.
        label_path: mask file (PNG, NIfTI, DICOM) on the image's grid, or ``None``.
        task: the task (window, channels, label values, 2D or 3D).
        check_labels: refuse a mask with several non-zero values when the task has one label (``label_values:
            nonzero``), as ``blosam prepare`` does; training sets it, so structures are never merged silently.

    Returns:
        ``image``: MetaTensor float32 (C, H, W) or (C, X, Y, Z) RAS in [0, 1]; ``label``: MetaTensor uint8 (1, ...)
        0/1 (with a label); ``image_path``, ``label_path`` (str); ``kind``: ``"2d"``, ``"volume"`` or ``"frames"``
        (a multi-frame DICOM in a 2D task: (C, X, Y, F) in frame order).

    Raises:
        FileNotFoundError, ValueError: naming the file: unreadable, NaN/inf, wrong channel count, image and mask
            shapes differ, 2D/3D mismatch with the task, several mask labels for a one-label task
            (``check_labels``).
    """
    if task is None:
        raise TypeError("load_pair needs a task (TaskConfig or a preset name via load_task)")
    image_path = Path(image_path)
    image = read_image(image_path, spatial_dims=task.spatial_dims)
    modality = str(image.meta.get("modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES:  # a DICOM-SEG reads as pixels; it is a mask, not an image to segment
        raise ValueError(f"{image_path}: a DICOM {modality} object; not an image (give the image or series it labels)")
    kind = image.meta.get("kind", "2d")
    if kind == "volume" and task.spatial_dims == 2:
        if image.meta.get("frames", 1) <= 1:
            raise ValueError(
                f"{image_path}: a volume {tuple(image.shape[1:])}, but task '{task.name}' is 2D (set spatial_dims: 3)"
            )
        kind = "frames"
    if kind == "2d" and task.spatial_dims == 3:
        raise ValueError(f"{image_path}: a 2D image, but task '{task.name}' expects volumes (spatial_dims: 3)")
    try:
        windowed = WindowIntensity(task.window, task.width, task.level)(image.float())
    except ValueError as err:
        raise ValueError(f"{image_path}: {err}") from err
    pixels = _to_channels(torch.as_tensor(windowed), task, image_path).float()
    out: dict[str, Any] = {
        PairKeys.IMAGE: MetaTensor(pixels, affine=image.affine, meta=_meta(image)),
        PairKeys.IMAGE_PATH: str(image_path),
        PairKeys.KIND: kind,
    }
    if label_path is not None:
        label_path = Path(label_path)
        label = read_image(label_path, spatial_dims=task.spatial_dims, mask=True)
        lab = mask_values(label, label_path)
        if tuple(lab.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(
                f"{label_path}: mask size {tuple(lab.shape[1:])} differs from image {image_path.name} "
                f"size {tuple(image.shape[1:])}"
            )
        if check_labels:
            _check_binary(lab, label_path, task)
        if kind == "volume" and not np.allclose(np.asarray(label.affine), np.asarray(image.affine), atol=1e-2):
            logger.warning("%s: affine differs from image %s; using the image's geometry", label_path, image_path)
        out[PairKeys.LABEL] = MetaTensor(binarise(lab, task.foreground_values), affine=image.affine, meta=_meta(label))
        out[PairKeys.LABEL_PATH] = str(label_path)
    return out


def _meta(img: MetaTensor) -> dict[str, Any]:
    """A copy of ``img``'s metadata without the affine (given separately)."""
    return {k: v for k, v in img.meta.items() if k != "affine"}


def _frames(pair: dict[str, Any], every_n: int, foreground_only: bool, case: str) -> list[Sample]:
    """2D samples of a multi-frame file in frame order (no reorientation)."""
    image, label = pair[PairKeys.IMAGE], pair.get(PairKeys.LABEL)
    meta = image.meta
    spacing = meta.get("dicom_spacing")
    out = []
    for f in range(0, image.shape[-1], every_n):
        lab = None if label is None else label.as_tensor()[..., f].transpose(-1, -2).to(torch.uint8).contiguous()
        if foreground_only and lab is not None and not lab.any():
            continue
        s = {
            SampleKeys.IMAGE: image.as_tensor()[..., f].transpose(-1, -2).float().contiguous(),
            SampleKeys.SPACING: tuple(spacing or (1.0, 1.0)),
            SampleKeys.SPACING_KNOWN: spacing is not None,
            SampleKeys.CASE: case,
            SampleKeys.SLICE: f,
            SampleKeys.IMAGE_PATH: pair[PairKeys.IMAGE_PATH],
            SampleKeys.PHOTOMETRIC: meta.get("photometric"),
        }
        if lab is not None:
            s[SampleKeys.LABEL] = lab
        out.append(s)
    return out


def load_samples(
    items: Sequence[dict],
    task: TaskConfig,
    *,
    base_dir: str | Path | None = None,
    foreground_only: bool | None = None,
    every_n: int | None = None,
    axis: str | None = None,
    check_labels: bool = False,
) -> list[Sample]:
    """2D samples for datalist entries ``{"image": path, "label": path}`` (``label`` optional).

    Args:
        items: datalist entries; paths relative to ``base_dir`` (or absolute); an entry's ``case`` is kept; a volume
            entry's optional ``slices: [start, stop]`` keeps only that slab (slice indices along the axis).
        task: the task preset.
        base_dir: folder the paths are relative to.
        foreground_only: volumes: only slices with foreground (default: ``task.foreground_only``, meant for
            training; pass ``False`` for evaluation and inference).
        every_n: volumes: every n-th slice (default ``task.every_n``).
        axis: volumes: slicing axis (default ``task.axis``).
        check_labels: see :func:`load_pair` (training sets it).

    Returns:
        one dict per 2D sample (keys: :class:`blosam_med.data.keys.SampleKeys`): ``image`` float32 (C, H, W) in [0, 1]; ``label`` uint8 (1, H, W) 0/1 (when labelled);
        ``spacing`` (row, col) mm; ``spacing_known`` (False for PNG/JPEG/... and DICOM without pixel spacing, where
        spacing is (1.0, 1.0)); ``case``; ``slice`` (index along the axis, ``None`` for 2D images); ``image_path``;
        for volume slices ``source`` (see :func:`volume_to_slices`).
    """
    base = Path(base_dir) if base_dir is not None else None
    fg = task.foreground_only if foreground_only is None else bool(foreground_only)
    step = int(task.every_n if every_n is None else every_n)
    out: list[Sample] = []
    for item in items:
        if "image" not in item:
            raise ValueError(f"datalist entry {item} has no 'image'")
        image_path = _resolve(item["image"], base)
        label_path = None if item.get("label") is None else _resolve(item["label"], base)
        pair = load_pair(image_path, label_path, task=task, check_labels=check_labels)
        case = item.get("case") or case_id(image_path)
        if pair[PairKeys.KIND] == "volume":
            slices = volume_to_slices(pair, axis or task.axis, fg and label_path is not None, step, case)
            if item.get("slices") is not None:  # a slab of the volume: [start, stop) along the slicing axis
                start, stop = (int(v) for v in item["slices"])
                slices = [s for s in slices if start <= s[SampleKeys.SLICE] < stop]
            out.extend(slices)
        elif pair[PairKeys.KIND] == "frames":
            out.extend(_frames(pair, step, fg, case))
        else:
            meta = pair[PairKeys.IMAGE].meta
            sample = {
                SampleKeys.IMAGE: pair[PairKeys.IMAGE].as_tensor().float().contiguous(),
                SampleKeys.CASE: case,
                SampleKeys.SLICE: None,
                SampleKeys.SPACING: tuple(meta["spacing"]),
                SampleKeys.SPACING_KNOWN: bool(meta["spacing_known"]),
                SampleKeys.IMAGE_PATH: str(image_path),
            }
            if PairKeys.LABEL in pair:
                sample[SampleKeys.LABEL] = pair[PairKeys.LABEL].as_tensor().to(torch.uint8).contiguous()
            out.append(sample)
    return out


def _resolve(path: str | Path, base: Path | None) -> Path:
    p = Path(path)
    return p if base is None or p.is_absolute() else base / p
