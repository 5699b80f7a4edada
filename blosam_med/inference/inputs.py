"""Finding what to segment: images, DICOM files and series, NIfTI volumes, folders and datalists, and the files
beside them that are not images (DICOM SEG/RTSTRUCT/SR objects, NIfTI labels)."""

from __future__ import annotations

import logging
from pathlib import Path

from blosam_med.data import (
    IMAGE_EXT,
    case_id,
    check_dicom_file,
    is_dicom_file,
    non_image_modality,
    open_datalist,
    series_non_images,
)
from blosam_med.data.files import NIFTI_EXT, RASTER_EXT
from blosam_med.data.raster import frames_note

__all__ = ["collect_inputs", "find_inputs"]

logger = logging.getLogger(__name__)


#: NIfTI names taken for the label of a DICOM series beside them (``<case>/dicom/`` + ``<case>/label.nii.gz``, the
#: layout ``blosam prepare`` reads), never for an image to segment.
_LABEL_STEMS = ("label", "labels", "mask", "masks", "seg", "segmentation")


def _is_label_name(path: Path) -> bool:
    stem = case_id(path).lower()
    return stem in _LABEL_STEMS or stem.endswith(tuple(f"_{s}" for s in _LABEL_STEMS))


def find_inputs(path: str | Path, split: str | None = None) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The inputs to segment, and the files found beside them that are not images to segment.

    Inputs: an image or DICOM file, a DICOM series folder, a NIfTI volume, a folder of those, or a datalist JSON (its
    ``split``, default every entry of every split). Not inputs (each logged with one line and returned as
    ``{"path", "reason"}``): non-image DICOM objects (SEG, RTSTRUCT, SR, KO, PR...) beside or inside a series,
    NIfTI labels (``label.nii.gz``, ``*_mask.nii.gz``...) in a folder that holds a DICOM series, and in a folder
    every file of another type and every sub-folder that is not a DICOM series. An image of several frames (an
    animated GIF, a multi-page TIFF) is an input whose first frame is read: its entry's ``partial`` says so.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file: a single non-image DICOM object given as input, or a folder without images.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input not found")
    if path.is_file() and path.suffix == ".json":
        datalist = open_datalist(path)
        keys = [split] if split else [k for k, v in datalist.items() if isinstance(v, list)]
        return [_noted({"image": it["image"]}) for k in keys for it in datalist.get(k, [])], []
    if path.is_file():
        modality = non_image_modality(path)
        if modality is not None:
            check_dicom_file(path)  # an RTSTRUCT, SR... without pixel data: "without pixel data ... not an image"
            raise ValueError(f"{path}: a DICOM {modality} object; not an image (give the image or series it labels)")
        return [_noted({"image": str(path)})], []
    if _is_series(path):
        return [{"image": str(path)}], _series_ignored(path)
    entries: list[dict[str, str]] = []
    ignored: list[dict[str, str]] = []
    children = [c for c in sorted(path.iterdir()) if not c.name.startswith(".")]
    beside_series = any(c.is_dir() and _is_series(c / "dicom" if (c / "dicom").is_dir() else c) for c in children)
    for child in children:
        case = case_id(child)
        if child.is_dir():
            child = child / "dicom" if (child / "dicom").is_dir() else child
            if not _is_series(child):
                ignored.append(_ignore(child, "a folder that is not a DICOM series (sub-folders are not searched)"))
                continue
            ignored += _series_ignored(child)
        elif not child.name.lower().endswith(IMAGE_EXT) and not is_dicom_file(child):
            ignored.append(_ignore(child, f"not an image file (type '{_ending(child)}'; {_READ})"))
            continue
        elif (modality := non_image_modality(child)) is not None:
            ignored.append(_ignore(child, f"DICOM {modality} object, not an image"))
            continue
        elif beside_series and child.name.lower().endswith(NIFTI_EXT) and _is_label_name(child):
            ignored.append(_ignore(child, "NIfTI label beside a DICOM series, not an image"))
            continue
        entries.append(_noted({"image": str(child), "case": case}))
    if not entries:
        raise ValueError(f"{path}: no images, DICOM series or volumes found")
    return entries, ignored


#: What a folder's files may be, for the reason a file is skipped.
_READ = "read: PNG, JPEG, TIFF, BMP, GIF, NIfTI, DICOM"


def _ending(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix or "no ending"


def _noted(entry: dict[str, str]) -> dict[str, str]:
    """``entry`` with ``partial`` set when its image has several frames or pages, of which the first is read."""
    if str(entry["image"]).lower().endswith(RASTER_EXT):
        note = frames_note(entry["image"])
        if note is not None:
            entry["partial"] = note
    return entry


def _ignore(path: Path, reason: str) -> dict[str, str]:
    logger.warning("%s: %s; skipped", path, reason)
    return {"path": str(path), "reason": reason}


def _series_ignored(folder: Path) -> list[dict[str, str]]:
    """The non-image objects inside a series folder (the series reader skips them and logs each)."""
    return [{"path": str(f), "reason": f"DICOM {m} object, not an image"} for f, m in series_non_images(folder)]


def collect_inputs(path: str | Path, split: str | None = None) -> list[dict[str, str]]:
    """Datalist-style entries for an input (see :func:`find_inputs`, which also returns what it skipped)."""
    return find_inputs(path, split)[0]


def _is_series(folder: Path) -> bool:
    """A folder whose files are DICOM (a series; the series checks come when it is read)."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(is_dicom_file(p) for p in files[:3])
