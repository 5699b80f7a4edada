"""Reading images and masks through MONAI into windowed image/mask pairs and 2D samples.

Readers (chosen by file type, never left to MONAI's guess): ``PILReader`` for PNG/JPEG/TIFF/BMP/GIF (images converted
to grey or RGB through Pillow first: :mod:`blosam_med.data.raster`), ``NibabelReader`` for
NIfTI, ``ITKReader`` for DICOM series folders and single DICOM files (it applies Rescale Slope/Intercept and shows
MONOCHROME1 with MONOCHROME2 polarity). Files are checked first (pydicom for DICOM) so errors name the file.

Array layout after reading:

- 2D images: (C, H, W) = (channels, rows, columns), spacing (row, col) in mm in ``meta["spacing"]``;
- volumes (NIfTI, DICOM series, multi-frame DICOM): (C, X, Y, Z) reoriented to RAS with ``Orientationd``;
  the affine (and ``meta["original_affine"]`` as read) stays in the MetaTensor.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import torch
from monai.data import ITKReader, MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import EnsureChannelFirstd, LoadImaged, Orientationd

from blosam_med.data.dicom import (
    NON_IMAGE_MODALITIES,
    check_dicom_file,
    check_dicom_series,
    is_dicom_file,
    itk_series_id,
    quiet_native_stderr,
)
from blosam_med.data.files import DICOM_EXT, NIFTI_EXT, RASTER_EXT, case_id
from blosam_med.data.keys import PairKeys, Sample, SampleKeys
from blosam_med.data.raster import mode_converter, raster_frames
from blosam_med.data.slices import volume_to_slices
from blosam_med.data.tasks import TaskConfig
from blosam_med.data.windowing import WindowIntensity

__all__ = ["read_image", "load_pair", "load_samples", "image_kind"]

logger = logging.getLogger(__name__)

_KEY = "image"


def image_kind(path: str | Path) -> str:
    """``"series"``, ``"nifti"``, ``"raster"`` or ``"dicom"`` by what ``path`` is; ValueError for anything else."""
    path = Path(path)
    if path.is_dir():
        return "series"
    name = path.name.lower()
    if name.endswith(NIFTI_EXT):
        return "nifti"
    if name.endswith(RASTER_EXT):
        return "raster"
    if name.endswith(DICOM_EXT) or is_dicom_file(path):
        return "dicom"
    raise ValueError(
        f"{path}: unsupported file type; expected PNG/JPEG/TIFF/BMP/GIF, NIfTI (.nii, .nii.gz), a DICOM "
        "file or a DICOM series folder"
    )


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_default_readers() -> Iterator[None]:
    """Silence the notice MONAI gives each time ``LoadImage`` builds its default readers without nvImageCodec (a
    GPU DICOM decoder we never use: readers are named explicitly)."""
    log, drop = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin"), _DropRecords()
    log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            yield
    finally:
        log.removeFilter(drop)


def _load(path: Path, reader: Any, ensure_channel_first: bool = True, compressed: bool = False) -> MetaTensor:
    """``path`` read by ``reader`` alone: given at call time, MONAI tries no other reader when it fails (given to the
    constructor, it would go on through its default readers and could read a DICOM without the MONOCHROME1
    inversion); ``compressed``: GDCM's notes on stderr ("Unsupported JPEG data precision 12") go to the debug log."""
    with _quiet_default_readers():
        loader = LoadImaged(_KEY, image_only=True)
    quiet = quiet_native_stderr() if compressed else contextlib.nullcontext()
    try:
        with quiet:
            data = loader({_KEY: str(path)}, reader=reader)
        img = EnsureChannelFirstd(_KEY)(data)[_KEY] if ensure_channel_first else data[_KEY]
        return cast(MetaTensor, img)  # LoadImaged and EnsureChannelFirstd keep the MetaTensor
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, ValueError) and str(cause).startswith(f"{path}: "):  # ours already names the file
            raise ValueError(str(cause)) from err
        raise ValueError(
            f"{path}: unreadable ({type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300]})"
        ) from err


def _as_2d(img: MetaTensor, path: Path, spacing: tuple[float, float] | None, extra: dict) -> MetaTensor:
    """(C, X, Y[, 1]) in ITK/NIfTI voxel order -> (C, rows, cols) with the spacing (row, col) recorded
    (``None``: unknown)."""
    arr = torch.as_tensor(img)
    if arr.ndim == 4:
        arr = arr[..., 0]
    return _meta_2d(arr.transpose(-1, -2).contiguous(), path, spacing, extra)


def _meta_2d(arr: torch.Tensor, path: Path, spacing: tuple[float, float] | None, extra: dict) -> MetaTensor:
    known = spacing is not None
    row, col = spacing if spacing is not None else (1.0, 1.0)
    affine = torch.diag(torch.tensor([row, col, 1.0, 1.0], dtype=torch.float64))
    meta = {"filename_or_obj": str(path), "spacing": (float(row), float(col)), "spacing_known": known, **extra}
    return MetaTensor(arr, affine=affine, meta=meta)


def _check_nifti_dims(path: Path) -> None:
    """Refuse a NIfTI with a 4th (time or channel) axis longer than 1, naming the file and its shape."""
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))  # a Nifti1Image / Nifti2Image: the stubs name only the base class
        shape = tuple(int(s) for s in image.shape)
    except Exception:
        return
    if len(shape) > 3 and any(s > 1 for s in shape[3:]):
        raise ValueError(
            f"{path}: a {len(shape)}D NIfTI of shape {shape} (time series or several channels); expected a 2D "
            "image or a 3D volume (a 4th axis of size 1 is accepted); save one volume per file"
        )


def _load_dicom_file(path: Path, info: dict[str, Any]) -> MetaTensor:
    """A DICOM file read by ITK, or, for compressed pixel data that only pydicom decodes (with a plugin such as
    pylibjpeg-openjpeg for HTJ2K), by MONAI's ``PydicomReader``, MONOCHROME1 then inverted as ITK does."""
    syntax = pydicom.uid.UID(info.get("transfer_syntax") or "1.2.840.10008.1.2")
    try:
        return _load(path, ITKReader(), compressed=syntax.is_compressed)
    except ValueError as err:
        if not syntax.is_compressed:
            raise
        logger.info("%s: ITK cannot decode %s; read with pydicom (%s)", path, syntax.name, err)
    img = _load(path, PydicomReader())
    if info["photometric"] == "MONOCHROME1":  # rescale(max stored - stored), the value ITK gives
        slope, intercept = info["rescale"]
        img = cast(MetaTensor, (2 ** info["bits_stored"] - 1) * slope + 2 * intercept - img)
    return img


def read_image(path: str | Path, *, spatial_dims: int | None = None, mask: bool = False) -> MetaTensor:
    """Read one image or mask as a channel-first MetaTensor with its geometry.

    Args:
        path: a PNG/JPEG/TIFF/BMP/GIF, NIfTI or DICOM file, or a DICOM series folder.
        spatial_dims: what the caller works on. ``2``: a multi-frame DICOM keeps its frame order (no
            reorientation) and a one-slice NIfTI (X, Y, 1) is a 2D image; ``3``: a one-slice NIfTI is a volume;
            ``None``: one-slice NIfTI files are 2D, multi-frame files volumes.
        mask: a mask: Pillow images keep their raw values (a palette mask's indices are its labels); images are
            converted to grey or RGB through Pillow (:mod:`blosam_med.data.raster`: palette, CMYK, YCbCr...).

    Returns:
        2D inputs as (C, H, W) with ``meta["spacing"]`` (row, col) mm and ``meta["spacing_known"]``; volumes as
        (C, X, Y, Z). ``meta["kind"]`` is ``"2d"`` or ``"volume"``. DICOM adds ``meta["photometric"]`` (as stored;
        MONOCHROME1 is already inverted) and ``meta["modality"]``. Pillow images add ``meta["frames_in_file"]``
        (an animated GIF or multi-page TIFF is read as its first frame, with a warning).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file: unsupported type, not DICOM, truncated, no pixel data, several series, missing
            slices, unreadable by the reader.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = image_kind(path)
    if kind == "raster":
        converter = None if mask else mode_converter(path)
        img = _load(path, PILReader(converter=converter, reverse_indexing=False))  # (C, H, W)
        extra = {"kind": "2d", "frames_in_file": raster_frames(path)}
        return _meta_2d(torch.as_tensor(img), path, None, extra)
    if kind == "dicom":
        info = check_dicom_file(path)
        img = _load_dicom_file(path, info)
        extra = {
            "photometric": info["photometric"],
            "modality": info["modality"],
            "frames": info["frames"],
            "dicom_spacing": info["spacing"],
        }
        if info["frames"] == 1:
            return _as_2d(img, path, info["spacing"], {**extra, "kind": "2d"})
    elif kind == "series":
        info = check_dicom_series(path)
        packed = pydicom.uid.UID(info["transfer_syntax"] or "1.2.840.10008.1.2").is_compressed
        if info["skipped"]:  # read the image series by its id; MONAI's note about several series is expected
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*more than one DICOM series")
                img = _load(path, ITKReader(series_name=itk_series_id(path, info["files"])), compressed=packed)
        else:
            img = _load(path, ITKReader(), compressed=packed)
        extra = {"photometric": info["photometric"], "modality": info["modality"]}
    else:
        _check_nifti_dims(path)
        img = _load(path, NibabelReader())
        extra = {}
        if img.ndim == 3 or (img.ndim == 4 and img.shape[-1] == 1 and spatial_dims != 3):  # 2D: (C, X, Y[, 1])
            return _as_2d(img, path, (float(img.pixdim[1]), float(img.pixdim[0])), {"kind": "2d"})
    if img.ndim != 4:
        raise ValueError(
            f"{path}: expected a 2D image or a 3D volume, got array shape {tuple(img.shape)} "
            "(channel first); 4D (time series) volumes are not supported"
        )
    img.meta.update(extra, kind="volume", filename_or_obj=str(path))
    if spatial_dims == 2 and kind == "dicom":  # multi-frame in a 2D task: frames as stored
        return img
    oriented = Orientationd(_KEY, axcodes="RAS", labels=None)({_KEY: img})[_KEY]
    return cast(MetaTensor, oriented)  # Orientationd keeps the MetaTensor (its signature says Tensor)


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
