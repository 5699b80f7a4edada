"""DICOM checks before reading, so that a bad file or series is refused with its name and the reason.

MONAI's ITK reader does the reading; these checks (pydicom, headers only where possible) turn what would be an
opaque reader error, or a silently wrong volume (two series mixed, missing slices), into a message naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

__all__ = [
    "is_dicom_file",
    "check_dicom_file",
    "check_dicom_series",
    "dicom_info",
    "non_image_modality",
    "series_non_images",
    "itk_series_id",
    "NON_IMAGE_MODALITIES",
    "install_hint",
    "undecodable_message",
    "quiet_native_stderr",
]

logger = logging.getLogger(__name__)

_SKIP_NAMES = {"dicomdir", "readme", "readme.txt", "license", "license.txt"}

#: Modalities of DICOM objects that are not images to segment: segmentations, RT structure sets, plans and
#: registrations, structured reports, key object selections, presentation states, encapsulated documents.
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "REG", "SR", "KO", "PR", "DOC"})


def is_dicom_file(path: str | Path) -> bool:
    """True when the file starts with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read(path: Path, stop_before_pixels: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise ValueError(f"{path}: not a DICOM file (no 'DICM' preamble or file meta header; {err})") from err
    except Exception as err:  # pydicom raises many types on truncated headers
        raise ValueError(f"{path}: unreadable or truncated DICOM header ({type(err).__name__}: {err})") from err


def non_image_modality(path: str | Path) -> str | None:
    """The modality of a DICOM file that is not an image (one of :data:`NON_IMAGE_MODALITIES`), else ``None``.

    Only the header is read; a file that is not DICOM or not readable gives ``None`` (the image checks name it).
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:
        return None
    modality = str(ds.get("Modality", "")).upper()
    return modality if modality in NON_IMAGE_MODALITIES else None


def _expected_bytes(ds: pydicom.Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated) // 8


def _check_pixels(path: Path, ds: pydicom.Dataset, decode: bool) -> None:
    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        raise ValueError(
            f"{path}: DICOM without pixel data (Modality {ds.get('Modality', '?')}, "
            f"{getattr(sop, 'name', sop)}); not an image"
        )
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        raise ValueError(f"{path}: DICOM pixel data without Rows/Columns/BitsAllocated; not a readable image")
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed if "TransferSyntaxUID" in ds.file_meta else False
    if not compressed:
        found, expected = len(ds.PixelData), _expected_bytes(ds)
        if found < expected:
            raise ValueError(f"{path}: truncated pixel data ({found} of {expected} bytes); the file is incomplete")
    if decode or compressed:
        try:
            with _quiet_pydicom():
                ds.pixel_array  # noqa: B018 - decoding catches corrupt or unsupported compressed data
        except Exception as err:
            if not compressed:
                raise ValueError(f"{path}: pixel data cannot be decoded ({_one_line(err)})") from err
            if _itk_decodes(path):  # the reader (ITK's GDCM) has a decoder pydicom lacks
                logger.info("%s: decoded by ITK (GDCM); pydicom could not (%s)", path, _one_line(err))
                return
            raise ValueError(undecodable_message(path, ds.file_meta.TransferSyntaxUID, err)) from err


def _one_line(err: BaseException) -> str:
    """``Type: message`` on one line (pydicom lists each decoding plugin's failure on a line of its own)."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()).replace(":; ", ": ")
    return f"{type(err).__name__}: {text}"


#: pip names of the packages that pydicom's ``missing_dependencies`` names by their import names.
_PIP_NAMES = {"gdcm": "python-gdcm"}


def install_hint(uid: str) -> str | None:
    """What to install so that pydicom decodes transfer syntax ``uid``, from pydicom's own list of the plugins it
    lacks: ``"pip install pylibjpeg pylibjpeg-libjpeg, or pip install python-gdcm"``; ``None`` when none is missing.
    """
    from pydicom.pixels import get_decoder

    try:
        missing = get_decoder(pydicom.uid.UID(uid)).missing_dependencies
    except NotImplementedError:  # pydicom has no decoder of this syntax at all
        return None
    options = []
    for line in missing:  # "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        _, _, required = line.partition(" - requires ")
        names = [r.split(">=")[0].split("==")[0].strip() for r in required.split(" and ")]
        names = [_PIP_NAMES.get(n, n) for n in names if n and n != "numpy"]
        if names:
            options.append("pip install " + " ".join(names))
    return ", or ".join(options) or None


def undecodable_message(path: str | Path, uid: str, err: BaseException | None = None) -> str:
    """One line: the file, its transfer syntax (name and UID), why decoding failed and what to install."""
    syntax = pydicom.uid.UID(uid)
    hint = install_hint(syntax)
    tried = err is not None and "raised by all available plugins" in str(err)
    if hint:
        fix = f"install a decoder pydicom uses: {hint}"
    elif tried:
        fix = "every installed decoder failed: the pixel data may be corrupt"
    else:
        fix = "neither pydicom nor ITK has a decoder for it; convert the file to an uncompressed transfer syntax"
    why = f" ({_one_line(err)})" if tried and err is not None else ""
    return (
        f"{path}: compressed pixel data in transfer syntax '{syntax.name}' ({syntax}) that neither pydicom nor ITK "
        f"decodes{why}; {fix}"
    )


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Keep pydicom's decoding log (a traceback per failing plugin) out of ours; the error says the same."""
    log = logging.getLogger("pydicom")
    before = log.propagate
    log.propagate = False
    try:
        yield
    finally:
        log.propagate = before


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Capture what native code (GDCM inside ITK) prints to the process's stderr, and log it at debug level.

    GDCM prints its decoders' notes ("Unsupported JPEG data precision 12") even when it then decodes the image.
    """
    fd = 2  # native code writes to the process's stderr, whatever Python's sys.stderr is
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()  # type: ignore[union-attr]
    try:
        saved = os.dup(fd)
    except OSError:  # no stderr at all: nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                logger.debug("native stderr: %s", text.replace("\n", "; "))


def _itk_decodes(path: Path) -> bool:
    """Whether ITK (the reader :mod:`blosam_med.data.loading` uses) decodes the file's pixel data."""
    import itk

    try:
        with quiet_native_stderr():
            itk.imread(str(path))
    except Exception:  # ITK raises RuntimeError naming GDCMImageIO; any failure means "no"
        return False
    return True


def dicom_info(ds: pydicom.Dataset) -> dict[str, Any]:
    """What a header says about display and geometry: frames, photometric interpretation, modality, spacing.

    ``spacing`` is (row, column) in mm from PixelSpacing, else ImagerPixelSpacing (projection radiographs), else
    ``None``.
    """
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return {
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "modality": str(ds.get("Modality", "")),
        "spacing": None if not spacing else (float(spacing[0]), float(spacing[1])),
        "rescale": (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)),
        "bits_stored": int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        "transfer_syntax": str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")),
    }


def check_dicom_file(path: str | Path) -> dict[str, Any]:
    """Check that one DICOM file holds a readable image and return :func:`dicom_info` of it.

    Raises:
        ValueError: naming the file: not DICOM, truncated header or pixel data, no pixel data (RTSTRUCT, SR, ...),
            compressed pixel data that neither pydicom nor ITK decodes (:func:`undecodable_message`: the transfer
            syntax and the package to install).
    """
    path = Path(path)
    ds = _read(path, stop_before_pixels=False)
    _check_pixels(path, ds, decode=False)
    return dicom_info(ds)


def _series_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name.lower() in _SKIP_NAMES:
            continue
        if p.suffix.lower() not in (".dcm", ".ima", "") and not is_dicom_file(p):
            logger.debug("%s: not DICOM, ignored in series folder %s", p.name, folder)
            continue
        files.append(p)
    return files


def series_non_images(folder: str | Path) -> list[tuple[Path, str]]:
    """The non-image DICOM objects (SEG, RTSTRUCT, SR, KO, PR...) in a series folder, with their modality."""
    found = []
    for f in _series_files(Path(folder)):
        modality = non_image_modality(f)
        if modality is not None:
            found.append((f, modality))
    return found


def check_dicom_series(folder: str | Path) -> dict[str, Any]:
    """Check that a folder holds exactly one complete image series; return :func:`dicom_info` of its first file.

    Non-image objects in the folder (SEG, RTSTRUCT, SR, KO, PR: a PACS export puts them beside the images) are
    skipped with a warning naming each; they are listed in the result's ``skipped`` as (path, modality), and
    ``files`` lists the series' image files.

    Raises:
        ValueError: naming the folder or file: no DICOM files, unreadable or truncated files, non-image objects,
            several series, inconsistent slice size, duplicate or missing slices (a gap in the slice positions).
    """
    folder = Path(folder)
    files = _series_files(folder)
    if not files:
        raise ValueError(f"{folder}: no DICOM files; expected the files of one series")
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    skipped: list[tuple[Path, str]] = []
    for f in files:
        ds = _read(f, stop_before_pixels=False)
        modality = str(ds.get("Modality", "")).upper()
        if modality in NON_IMAGE_MODALITIES:
            logger.warning("%s: DICOM %s object in series folder %s; skipped (not an image)", f, modality, folder)
            skipped.append((f, modality))
            continue
        _check_pixels(f, ds, decode=False)
        ds.PixelData = b""  # keep the header only
        series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    if not series:
        names = ", ".join(f"{f.name} ({m})" for f, m in skipped)
        raise ValueError(f"{folder}: no DICOM image files, only non-image objects ({names}); not an image")
    if len(series) > 1:
        counts = ", ".join(f"...{uid[-10:]} ({len(v)} files, e.g. {v[0][0].name})" for uid, v in series.items())
        raise ValueError(f"{folder}: {len(series)} series in one folder: {counts}; put each series in its own folder")
    (entries,) = series.values()
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in entries}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: slices of different sizes {sorted(sizes)}; not one volume")
    if len(entries) >= 3:
        _check_positions(folder, entries)
    return {**dicom_info(entries[0][1]), "skipped": skipped, "files": [f for f, _ in entries]}


def itk_series_id(folder: Path, files: Sequence[Path]) -> str:
    """The ITK (GDCM) series identifier of the image ``files`` in ``folder``, so that the reader takes them and
    not a non-image object beside them (MONAI's ITKReader otherwise reads the first series it finds)."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)  # as monai.data.ITKReader does
    names.AddSeriesRestriction("0008|0021")
    names.SetDirectory(str(folder))
    wanted = {Path(f).resolve() for f in files}
    for uid in names.GetSeriesUIDs():
        if {Path(f).resolve() for f in names.GetFileNames(uid)} == wanted:
            return uid
    raise ValueError(f"{folder}: the image series cannot be told apart from the other DICOM objects in the folder")


def _check_positions(folder: Path, entries: list[tuple[Path, pydicom.Dataset]]) -> None:
    if any("ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds for _, ds in entries):
        return  # no geometry to check (ITK orders by instance number)
    orient = np.array(entries[0][1].ImageOrientationPatient, dtype=float)
    normal = np.cross(orient[:3], orient[3:])
    pos = np.array([float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))) for _, ds in entries])
    order = np.argsort(pos)
    gaps = np.diff(pos[order])
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        a, b = entries[order[i]][0].name, entries[order[i + 1]][0].name
        raise ValueError(f"{folder}: duplicate slice position in {a} and {b}; not one volume")
    step = float(np.median(gaps))
    big = gaps > 1.5 * step
    if np.any(big):
        i = int(np.argmax(gaps))
        missing = int(np.round(gaps[big] / step).sum() - big.sum())
        raise ValueError(
            f"{folder}: series has missing slices (about {missing} absent; gap of {gaps[i]:.2f} mm after "
            f"{entries[order[i]][0].name} against a spacing of {step:.2f} mm)"
        )
