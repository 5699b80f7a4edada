"""``blosam prepare`` and loading on the shared development data (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import torch

from blosam_med.cli import main
from blosam_med.data import load_datalist, load_samples, load_task, read_image

pytestmark = pytest.mark.realdata

# task folder -> (extra prepare options, expected cases, task preset for loading one sample)
FOLDERS = {
    "lung_xray": ([], 40, "lung_xray"),
    "polyp": ([], 40, "polyp"),
    "teeth": ([], 40, "teeth"),
    "lung_ct": ([], 1, "lung_ct"),
    "ct_dicom": (["--label-values", "1", "2", "3"], 2, "lung_ct"),  # dcmqi_ct3slice: 1 liver, 2 spine, 3 heart
}


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_prepare_on_shared_data(shared_data_dir, tmp_path, capsys, name):
    extra, n_cases, preset = FOLDERS[name]
    out = tmp_path / f"{name}.json"
    rc = main(["prepare", "--images", str(shared_data_dir / name), "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["training"] + summary["test"] == n_cases
    train, test = load_datalist(out, "training"), load_datalist(out, "test")
    assert not {it["case"] for it in train} & {it["case"] for it in test}
    samples = load_samples(train[:1], load_task(preset), foreground_only=False)
    for s in samples:
        assert type(s["image"]) is torch.Tensor and s["image"].dtype == torch.float32
        assert 0 <= float(s["image"].min()) <= float(s["image"].max()) <= 1
        assert s["label"].dtype == torch.uint8 and s["label"].shape[1:] == s["image"].shape[1:]
    assert sum(int(s["label"].sum()) for s in samples) > 0


def test_lung_ct_nifti_and_dicom_series_agree(shared_data_dir):
    task = load_task("lung_ct")
    case = "cip_copdgene_10002K_ct64"
    nifti = load_samples(
        [{"image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz"}],
        task,
        base_dir=shared_data_dir / "lung_ct",
        foreground_only=False,
    )
    dicom = load_samples(
        [{"image": f"{case}/dicom", "label": f"{case}/label.nii.gz"}],
        task,
        base_dir=shared_data_dir / "ct_dicom",
        foreground_only=False,
    )
    assert len(nifti) == len(dicom) == 79 and dicom[0]["case"] == "cip_copdgene_10002K_ct64"
    np.testing.assert_allclose(nifti[40]["image"].numpy(), dicom[40]["image"].numpy(), atol=1e-5)
    np.testing.assert_allclose(nifti[40]["source"]["affine"], dicom[40]["source"]["affine"], atol=1e-3)
    assert int(sum(s["label"].sum() for s in nifti)) == 65624  # lung voxels per the README


def test_monochrome1_xray_has_monochrome2_polarity(shared_data_dir):
    path = shared_data_dir / "xray_dicom" / "highdicom_dx_thorax_monochrome1.dcm"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = np.asarray(read_image(path)[0])
    stored = ds.pixel_array.astype(float)
    assert np.corrcoef(img.ravel(), stored.ravel())[0, 1] < -0.99  # inverted relative to the stored values
    h, w = img.shape
    air = img[int(0.85 * h) :, int(0.7 * w) :].mean()  # air below the thorax (bottom right) is dark, as in MONOCHROME2
    assert air < 0.5 * img.mean()
    m2 = np.asarray(read_image(shared_data_dir / "xray_dicom" / "nih_cxr14_dx_monochrome2.dcm")[0])
    assert (
        np.corrcoef(
            m2.ravel(),
            pydicom.dcmread(shared_data_dir / "xray_dicom" / "nih_cxr14_dx_monochrome2.dcm")
            .pixel_array.astype(float)
            .ravel(),
        )[0, 1]
        > 0.99
    )  # MONOCHROME2 is left as stored
