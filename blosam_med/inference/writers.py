"""Writers for predictions: NIfTI on the source grid, PNG masks and overlays, DICOM-SEG referencing the source.

NIfTI files go through :class:`AtomicNiftiWriter`, a MONAI ``NibabelWriter`` (usable wherever MONAI takes an image
writer, e.g. ``SaveImage(writer=AtomicNiftiWriter)``) that writes atomically and never overwrites silently.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import NibabelWriter
from monai.data.utils import to_affine_nd
from PIL import Image
from scipy import ndimage

from blosam_med import __version__
from blosam_med.data.dicom import non_image_modality
from blosam_med.io import atomic_write

__all__ = [
    "to_source_grid",
    "AtomicNiftiWriter",
    "write_nifti",
    "write_png_mask",
    "write_overlay",
    "write_montage",
    "write_dicom_seg",
    "COLOURS",
]

logger = logging.getLogger(__name__)

#: Contour colours of structures 1, 2, ... (RGB).
COLOURS = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (200, 64, 255))


def to_source_grid(
    array: np.ndarray, ras_affine: np.ndarray, original_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Undo the RAS reorientation: an (X, Y, Z[, ...]) array on the RAS grid -> the source file's voxel order.

    Returns:
        the reordered array and its affine (equal to ``original_affine`` up to float precision).
    """
    src = nib.orientations.io_orientation(np.asarray(original_affine))
    ras = nib.orientations.io_orientation(np.asarray(ras_affine))
    transform = nib.orientations.ornt_transform(ras, src)
    out = nib.orientations.apply_orientation(array, transform)
    affine = np.asarray(ras_affine) @ nib.orientations.inv_ornt_aff(transform, array.shape[:3])
    if not np.allclose(affine, original_affine, atol=1e-3):
        logger.warning(
            "reoriented affine differs from the source affine by %.2g", np.abs(affine - original_affine).max()
        )
    return np.ascontiguousarray(out), np.asarray(original_affine, dtype=float)


class AtomicNiftiWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` for arrays already on their output grid, written atomically.

    The array is written as given (``(X, Y, Z)``, ``(H, W, 1)``, or with a trailing channel axis): no channel moves,
    squeezing or resampling, so the file's shape is the array's. The affine is both qform and sform (code 1, as
    ``NibabelWriter`` and ITK write them). The file appears whole or not at all (``atomic_write``), and an existing
    file is refused unless ``overwrite``.

    Args:
        output_dtype: dtype on disk; ``None``: the array's.
        overwrite: replace an existing file.
        kwargs: passed to MONAI's ``ImageWriter`` (``SaveImage`` gives ``scale``, unused here).
    """

    def __init__(self, output_dtype: Any = None, *, overwrite: bool = False, **kwargs: Any) -> None:
        super().__init__(output_dtype=output_dtype, **kwargs)
        self.overwrite = overwrite

    def set_data_array(
        self, data_array: Any, channel_dim: Any = None, squeeze_end_dims: bool = False, **kwargs: Any
    ) -> None:
        """The array as it is (``channel_dim=None``, the default), or channel-first data made channel-last as MONAI's
        writers do (``SaveImage`` passes ``channel_dim=0``)."""
        if channel_dim is None:
            self.data_obj = np.asarray(data_array)
        else:
            self.data_obj = np.asarray(
                self.convert_to_channel_last(
                    data_array, channel_dim, squeeze_end_dims, spatial_ndim=kwargs.pop("spatial_ndim", 3)
                )
            )

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = False, **options: Any) -> None:
        """Take ``meta_dict["affine"]`` (identity when absent).

        Raises:
            ValueError: ``resample=True``: this writer writes the grid it is given.
        """
        if resample:
            raise ValueError("AtomicNiftiWriter writes arrays on their own grid; resample before writing")
        _, affine, _ = self.get_meta_info(meta_dict)
        self.affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
        if self.output_dtype is None and self.data_obj is not None:
            self.output_dtype = np.asarray(self.data_obj).dtype

    def write(self, filename: str | Path, verbose: bool = False, **obj_kwargs: Any) -> Path:  # type: ignore[override]
        """Write the NIfTI; returns its path.

        Raises:
            OutputExistsError: the file exists and ``overwrite`` is False.
        """
        img = self.create_backend_obj(self.data_obj, affine=self.affine, dtype=self.output_dtype, **obj_kwargs)
        affine = to_affine_nd(r=3, affine=np.asarray(self.affine, dtype=float))
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        if verbose:
            logger.info("writing: %s", filename)
        return atomic_write(filename, lambda tmp: nib.save(img, str(tmp)), overwrite=self.overwrite)


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, overwrite: bool = False) -> Path:
    """A NIfTI (``.nii.gz``) of ``array`` as given, this affine as both qform and sform, written atomically through
    :class:`AtomicNiftiWriter`."""
    writer = AtomicNiftiWriter(overwrite=overwrite)
    writer.set_data_array(array)
    writer.set_metadata({"affine": affine})
    return writer.write(path)


def write_png_mask(mask: np.ndarray, path: str | Path, overwrite: bool = False) -> Path:
    """(H, W) label map as an 8-bit PNG: one structure 0/255, several structures their label values."""
    mask = np.asarray(mask)
    out = (mask > 0).astype(np.uint8) * 255 if mask.max() <= 1 else mask.astype(np.uint8)
    return atomic_write(path, lambda tmp: Image.fromarray(out).save(tmp, format="PNG"), overwrite=overwrite)


def _rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8."""
    img = np.asarray(image, dtype=np.float32)
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def overlay(image: np.ndarray, masks: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Contours of each (H, W) mask in ``masks`` (n, H, W) drawn over the windowed image; (H, W, 3) uint8."""
    rgb = _rgb(image).copy()
    for i, m in enumerate(np.asarray(masks).astype(bool)):
        edge = m & ~ndimage.binary_erosion(m, iterations=thickness, border_value=0)
        rgb[edge] = COLOURS[i % len(COLOURS)]
    return rgb


def write_overlay(image: np.ndarray, masks: np.ndarray, path: str | Path, overwrite: bool = False) -> Path:
    """PNG of mask contours over the windowed image."""
    rgb = overlay(image, masks, thickness=max(1, max(np.asarray(image).shape[-2:]) // 256))
    return atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"), overwrite=overwrite)


def write_montage(
    slices: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    path: str | Path,
    columns: int = 4,
    count: int = 16,
    overwrite: bool = False,
) -> Path:
    """A grid of up to ``count`` evenly spaced slices with contours (slices with foreground preferred)."""
    n = len(slices)
    with_fg = [i for i in range(n) if np.asarray(masks[i]).any()]
    pool = with_fg if len(with_fg) >= min(count, n) // 2 and with_fg else list(range(n))
    pick = [pool[round(j)] for j in np.linspace(0, len(pool) - 1, min(count, len(pool)))]
    tiles = [overlay(slices[i], masks[i]) for i in pick]
    scale = max(1, 192 // max(tiles[0].shape[:2]))  # small CT grids are enlarged (nearest) to stay readable
    if scale > 1:
        tiles = [np.kron(t, np.ones((scale, scale, 1), np.uint8)) for t in tiles]
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * h : r * h + t.shape[0], c * w : c * w + t.shape[1]] = t
    return atomic_write(path, lambda tmp: Image.fromarray(canvas).save(tmp, format="PNG"), overwrite=overwrite)


def write_dicom_seg(
    masks: np.ndarray, source: str | Path, path: str | Path, labels: Sequence[str], overwrite: bool = False
) -> Path:
    """A binary DICOM Segmentation (highdicom) referencing the source series or image, one segment per structure.

    Args:
        masks: (n, X, Y, Z) on the source series' ITK grid (x = columns, y = rows, z = slices by position), or
            (n, H, W) for a single-frame source image.
        source: the DICOM series folder or single DICOM file the prediction was made on.
        labels: a name per structure (segment label).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    source = Path(source)
    files = (
        sorted(p for p in source.iterdir() if p.is_file() and non_image_modality(p) is None)
        if source.is_dir()
        else [source]
    )
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        age = str(ds.get("PatientAge", ""))
        if age and not re.fullmatch(r"\d{3}[DWMY]", age):  # e.g. "81" in some public sets: AS needs "081Y"
            ds.PatientAge = f"{int(age):03d}Y" if age.isdigit() else ""
        for keyword in _PATIENT_STUDY_TYPE2:  # type 2 attributes highdicom copies: present, possibly empty
            if keyword not in ds:
                setattr(ds, keyword, "")
    masks = np.asarray(masks).astype(bool)
    if masks.ndim == 3:  # single frame: (n, H, W) -> frames (1, H, W, n)
        pixels = masks.transpose(1, 2, 0)[None]
    else:  # (n, X, Y, Z) ITK order -> (Z, rows, cols, n) with datasets sorted along the slice normal
        orient = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orient[:3], orient[3:])
        datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))
        pixels = masks.transpose(3, 2, 1, 0)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="blosam_med BLO-SAM", family=codes.DCM.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, name in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="blosam_med",
        manufacturer_model_name="BLO-SAM",
        software_versions=__version__,
        device_serial_number="0",
        series_description="BLO-SAM segmentation",
        omit_empty_frames=False,
    )
    if "ImageOrientationPatient" not in datasets[0]:  # projection images (DX/CR): Patient Orientation, type 2C
        seg.PatientOrientation = datasets[0].get("PatientOrientation", "")
    return atomic_write(path, lambda tmp: seg.save_as(tmp), overwrite=overwrite)


_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyTime",
)
