"""DICOM series folders: read through MONAI's ITK reader in RAS, checked first with pydicom."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid
from synthetic import write_nifti, write_series

from blosam_med.data import TaskConfig, check_dicom_series, load_pair, load_samples, read_image, slice_view

CT = TaskConfig(name="ct", window="lung", spatial_dims=3, foreground_only=False)


def _volume(z: int = 5, rows: int = 12, cols: int = 10) -> np.ndarray:
    """Stored values (Z, rows, cols); HU = stored - 1024 (CT_small's intercept)."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 2000, (z, rows, cols)).astype(np.int16)


@pytest.mark.parametrize("decreasing", [False, True])
def test_series_loads_in_ras_with_hu(tmp_path, decreasing):
    vol = _volume()
    write_series(tmp_path / "s", vol, spacing_z=2.5, decreasing=decreasing)
    img = read_image(tmp_path / "s")
    assert img.shape == (1, 10, 12, 5) and img.meta["kind"] == "volume" and img.meta["modality"] == "CT"
    aff = np.asarray(img.affine)
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [0.661468, 0.661468, 2.5], atol=1e-5)
    assert np.all(np.diag(aff)[:3] > 0)  # RAS
    # axial index k (inferior -> superior) is the slice at the k-th lowest z, whatever the instance numbers
    # DICOM rows run to posterior, columns to the patient's left: RAS flips both
    for k in range(5):
        np.testing.assert_array_equal(np.asarray(img[0, :, :, k]), (vol[k].T[::-1, ::-1] - 1024.0))


def test_series_slices_match_the_nifti_of_the_same_grid(tmp_path):
    vol = _volume(z=4)
    write_series(tmp_path / "case1" / "dicom", vol, spacing_z=2.0)
    series = read_image(tmp_path / "case1" / "dicom")
    # a label written on the series' RAS grid pairs with it
    lab = (np.asarray(series[0]) > 0).astype(np.uint8)
    write_nifti(tmp_path / "case1" / "label.nii.gz", lab, np.asarray(series.affine))
    samples = load_samples([{"image": "case1/dicom", "label": "case1/label.nii.gz"}], CT, base_dir=tmp_path)
    assert len(samples) == 4 and samples[0]["case"] == "case1"
    assert samples[0]["image"].shape == (1, 12, 10) and samples[0]["spacing"] == pytest.approx((0.661468, 0.661468))
    for s in samples:
        assert torch.equal(s["label"], slice_view(torch.as_tensor(lab)[None], "axial", s["slice"]).to(torch.uint8))
    pair = load_pair(tmp_path / "case1" / "dicom", tmp_path / "case1" / "label.nii.gz", CT)
    np.testing.assert_array_equal(pair["label"][0].numpy(), lab)


def test_two_series_in_one_folder_are_refused(tmp_path):
    write_series(tmp_path / "s", _volume(z=3), series_uid=generate_uid())
    for p in write_series(tmp_path / "other", _volume(z=3), series_uid=generate_uid()):
        p.rename(tmp_path / "s" / f"b_{p.name}")
    with pytest.raises(ValueError, match=r"s: 2 series in one folder"):
        read_image(tmp_path / "s")


def test_missing_slices_are_refused(tmp_path):
    write_series(tmp_path / "gap", _volume(z=5), z_positions=[0, 2, 4, 8, 10])
    with pytest.raises(ValueError, match=r"gap: series has missing slices \(about 1 absent; gap of 4.00 mm"):
        check_dicom_series(tmp_path / "gap")


def test_duplicate_positions_are_refused(tmp_path):
    write_series(tmp_path / "dup", _volume(z=4), z_positions=[0, 2, 2, 4])
    with pytest.raises(ValueError, match="duplicate slice position"):
        check_dicom_series(tmp_path / "dup")


def test_truncated_file_in_a_series_is_named(tmp_path):
    paths = write_series(tmp_path / "s", _volume(z=4))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-100])
    with pytest.raises(ValueError, match=rf"{paths[2].name}: truncated pixel data"):
        read_image(tmp_path / "s")


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no DICOM files"):
        read_image(tmp_path / "empty")
