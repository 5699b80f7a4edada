"""File kinds the package reads and the case name of a file: a leaf module (imports nothing of ours)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RASTER_EXT", "NIFTI_EXT", "DICOM_EXT", "IMAGE_EXT", "case_id"]

#: File endings read with PIL.
RASTER_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
#: File endings read with nibabel.
NIFTI_EXT = (".nii", ".nii.gz")
#: The ending of a single DICOM file (files without it are recognised by their content).
DICOM_EXT = (".dcm",)
#: Every image file ending.
IMAGE_EXT = (*RASTER_EXT, *NIFTI_EXT, *DICOM_EXT)


def case_id(path: str | Path) -> str:
    """A case name from a file or folder: the name without image endings (``a.nii.gz`` -> ``a``).

    A DICOM series folder named ``dicom`` (the ``<case>/dicom/`` layout) takes its parent's name.
    """
    p = Path(str(path).rstrip("/"))
    if p.name.lower() == "dicom" and p.parent.name:
        return p.parent.name
    name = p.name
    for ext in sorted(IMAGE_EXT, key=len, reverse=True):  # .nii.gz before .nii
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name
