"""File kinds and case names (the one leaf module for both)."""

from __future__ import annotations

import pytest

from blosam_med.data.files import DICOM_EXT, IMAGE_EXT, NIFTI_EXT, RASTER_EXT, case_id


@pytest.mark.parametrize(
    "path, case",
    [
        ("a/b/scan.nii.gz", "scan"),
        ("scan.NII.GZ", "scan"),  # endings in any case; the name keeps its own
        ("scan.nii", "scan"),
        ("x/IM0001.dcm", "IM0001"),
        ("img.v2.png", "img.v2"),
        ("patient7/dicom", "patient7"),  # the <case>/dicom/ layout takes the parent's name
        ("patient7/dicom/", "patient7"),
        ("series_folder", "series_folder"),
        ("notes.txt", "notes.txt"),
    ],
)
def test_case_id(path, case):
    assert case_id(path) == case


def test_every_ending_is_listed_once_and_lower_case():
    assert (*RASTER_EXT, *NIFTI_EXT, *DICOM_EXT) == IMAGE_EXT
    assert len(set(IMAGE_EXT)) == len(IMAGE_EXT) and all(e == e.lower() and e.startswith(".") for e in IMAGE_EXT)
