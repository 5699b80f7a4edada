"""Reading one image file or DICOM series through MONAI into a MetaTensor.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pydicom
import torch
from monai.data import ITKReader, MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import EnsureChannelFirstd, LoadImaged, Orientationd

from blosam_med.data.dicom import (
    check_dicom_file,
    check_dicom_series,
    is_dicom_file,
    itk_series_id,
    quiet_native_stderr,
)
from blosam_med.data.files import DICOM_EXT, NIFTI_EXT, RASTER_EXT
from blosam_med.data.raster import mode_converter, raster_frames

__all__ = ["read_image", "image_kind"]

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
