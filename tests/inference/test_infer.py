"""Inference outputs land on the source geometry; DICOM in gives a valid DICOM-SEG; bad input is refused clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from synthetic import write_series

from blosam_med.cli import main
from blosam_med.data import load_task
from blosam_med.inference import CasePrediction, Predictor, collect_inputs, predict_case, write_case
from blosam_med.model import BloSam, EmbeddingCache, build_backbone, save_adapter

LUNG_CT = load_task("lung_ct")


def _adapter(path, backbone="tiny", task=LUNG_CT, seed=0):
    model = BloSam(build_backbone(backbone))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.prompt.add_(torch.randn(model.prompt.shape, generator=g))
    return save_adapter(model, path, extra={"task": task.to_dict()})


def _oracle(pred: CasePrediction, label_slices) -> CasePrediction:
    """Replace the logits by +/-1 from the label: write-back geometry can then be checked voxel for voxel."""
    pred.logits = [torch.where(lab.bool(), 1.0, -1.0).float()[None] for lab in label_slices]
    return pred


def _volume(shape=(12, 10, 7)):
    rng = np.random.default_rng(0)
    hu = rng.normal(-700, 100, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[2:7, 3:8, 1:5] = 1
    label[8:10, 1:3, 5] = 1  # an asymmetric blob: flips and transposes would move it
    return hu, label


def test_nifti_round_trip_on_source_grid(tmp_path):
    hu, label = _volume()
    affine = np.array([[-0.8, 0, 0, 10], [0, 0, 2.5, -5], [0, -1.2, 0, 30], [0, 0, 0, 1]])  # not RAS, anisotropic
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "ct_label.nii.gz")
    adapter = _adapter(tmp_path / "a.pt")
    from blosam_med.inference import load_adapters

    models, task, _ = load_adapters([adapter])
    pred = predict_case({"image": str(tmp_path / "ct.nii.gz")}, task, Predictor(models, batch_size=4), progress=False)
    assert pred.kind == "volume" and len(pred.slices) == 10  # the original j axis is superior-inferior here
    from blosam_med.data import load_samples

    labels = load_samples(
        [{"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "ct_label.nii.gz")}],
        task,
        foreground_only=False,
        every_n=1,
    )
    _oracle(pred, [s["label"][0] for s in labels])
    written = write_case(pred, tmp_path / "out", ["nifti", "png"], ["lungs"])
    out = nib.load(written["nifti"])
    assert out.shape == hu.shape and np.allclose(out.affine, affine, atol=1e-4)
    assert np.array_equal(np.asarray(out.dataobj), label)
    itk = sitk.ReadImage(written["nifti"])
    ref = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    assert itk.GetSize() == ref.GetSize() and np.allclose(itk.GetDirection(), ref.GetDirection())
    assert np.allclose(itk.GetOrigin(), ref.GetOrigin()) and np.allclose(itk.GetSpacing(), ref.GetSpacing())
    assert (tmp_path / "out" / "ct_montage.png").is_file()


def test_dicom_series_to_dicom_seg(tmp_path):
    hd = pytest.importorskip("highdicom")
    hu, label = _volume((6, 16, 20))  # (Z, rows, cols) for the writer
    series = tmp_path / "series"
    write_series(series, (hu + 1024).astype(np.int16), decreasing=True)
    adapter = _adapter(tmp_path / "a.pt")
    from blosam_med.inference import load_adapters

    models, task, _ = load_adapters([adapter])
    pred = predict_case({"image": str(series)}, task, Predictor(models), progress=False)
    # oracle: the label given in DICOM (Z, rows, cols) order, mapped through the same reader as the image
    nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.diag([1, 1, 1, 1.0])), tmp_path / "ignored.nii.gz")
    vol = np.zeros(pred.source["shape"], np.uint8)
    # the RAS grid of the series: compute each voxel's DICOM (z, row, col) from the affines
    inv = np.linalg.inv(pred.source["affine"])
    ds_affine = _series_affine(series)
    for k in range(label.shape[0]):
        for r in range(label.shape[1]):
            for c in range(label.shape[2]):
                if label[k, r, c]:
                    x, y, z, _ = np.rint(inv @ ds_affine @ np.array([c, r, k, 1.0])).astype(int)
                    vol[x, y, z] = 1
    from blosam_med.data import slice_view

    _oracle(pred, [slice_view(torch.as_tensor(vol)[None], pred.source["axis"], i)[0] for i in pred.slices])
    written = write_case(pred, tmp_path / "out", ["dicom-seg"], ["lungs"])
    seg = hd.seg.segread(written["dicom-seg"])
    import pydicom

    by_z = sorted((pydicom.dcmread(p) for p in series.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    uids = [d.SOPInstanceUID for d in by_z]
    back = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], combine_segments=True, skip_overlap_checks=True
    )
    assert np.array_equal(np.asarray(back).astype(np.uint8), label)
    if shutil.which("dciodvfy"):
        done = subprocess.run(["dciodvfy", written["dicom-seg"]], capture_output=True, text=True)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors


def _series_affine(series):
    """Voxel (col, row, slice-by-z) -> RAS world, from the synthetic series' DICOM geometry."""
    import pydicom

    ds = sorted((pydicom.dcmread(p) for p in series.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    o = np.asarray(ds[0].ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds[0].PixelSpacing)
    dz = float(ds[1].ImagePositionPatient[2]) - float(ds[0].ImagePositionPatient[2])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = o[:3] * dc, o[3:] * dr, np.cross(o[:3], o[3:]) * dz
    lps[:3, 3] = np.asarray(ds[0].ImagePositionPatient, float)
    return np.diag([-1, -1, 1, 1.0]) @ lps


def test_several_adapters_share_one_encoder_pass(tmp_path):
    from blosam_med.inference import load_adapters

    a, b = _adapter(tmp_path / "a.pt", seed=0), _adapter(tmp_path / "b.pt", seed=1)
    models, _, _ = load_adapters([a, b])
    assert models[0].image_encoder is models[1].image_encoder
    cache = EmbeddingCache(models[0].backbone, None, batch_size=4, progress=False)
    images = [torch.rand(1, 30, 40) for _ in range(6)]
    logits = Predictor(models, cache, batch_size=4).logits(images)
    assert cache.encoder_calls == 2 and logits[0].shape == (2, 30, 40)  # 6 slices, 2 batches, for both adapters
    assert not torch.equal(logits[0][0], logits[0][1])


def test_cli_png_and_errors(tmp_path, synthetic_2d, capsys):
    task = load_task("lung_xray")
    adapter = _adapter(tmp_path / "xray.pt", task=task)
    image = synthetic_2d / "images" / "case00.png"
    args = [
        "infer",
        "--adapter",
        str(adapter),
        "--input",
        str(image),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(record["outputs"]) == {"png", "overlay"}
    mask = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(record["outputs"]["png"]))
    assert mask.shape == (48, 56) and set(np.unique(mask)) <= {0, 255}
    written_at = Path(record["outputs"]["png"]).stat().st_mtime_ns
    assert main(args) == 0  # a rerun skips the finished case
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "skipped"
    assert Path(record["outputs"]["png"]).stat().st_mtime_ns == written_at
    shutil.rmtree(tmp_path / "out" / ".blosam_status")  # outputs no run of ours recorded: no silent overwrite
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0

    sam_like = tmp_path / "other.pt"
    torch.save({**torch.load(adapter, weights_only=True), "backbone": "sam_vit_b"}, sam_like)
    bad = {
        "different backbones": ["--adapter", str(adapter), "--adapter", str(sam_like), "--input", str(image)],
        "unsupported file type": ["--adapter", str(adapter), "--input", str(_write(tmp_path / "notes.txt", b"x"))],
        "not a DICOM file": ["--adapter", str(adapter), "--input", str(_write(tmp_path / "broken.dcm", b"x" * 200))],
        "without pixel data": ["--adapter", str(adapter), "--input", _rtstruct(tmp_path)],
        "not a readable adapter": ["--adapter", str(_write(tmp_path / "junk.pt", b"junk")), "--input", str(image)],
    }
    for problem, extra in bad.items():
        assert main(["infer", *extra, "--out", str(tmp_path / "bad"), "--device", "cpu"]) == 2, problem
        err = capsys.readouterr().err
        assert problem in err and "Traceback" not in err, err


def test_two_series_and_missing_slices_are_refused(tmp_path, capsys):
    adapter = _adapter(tmp_path / "a.pt")
    hu, _ = _volume((5, 8, 8))
    write_series(tmp_path / "two", hu)
    for f in write_series(tmp_path / "second", hu, series_uid="1.2.3.4.5"):
        f.rename(tmp_path / "two" / f"B{f.name}")
    write_series(tmp_path / "gap", hu, z_positions=[0, 2.5, 5, 12.5, 15])
    for folder, problem in (("two", "series"), ("gap", "missing slices")):
        assert (
            main(
                [
                    "infer",
                    "--adapter",
                    str(adapter),
                    "--input",
                    str(tmp_path / folder),
                    "--out",
                    str(tmp_path / "o"),
                    "--device",
                    "cpu",
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert str(tmp_path / folder) in err and problem in err


def test_collect_inputs_folder(tmp_path, synthetic_2d):
    entries = collect_inputs(synthetic_2d / "images")
    assert len(entries) == 8 and entries[0]["case"] == "case00"


def _write(path, data):
    path.write_bytes(data)
    return path


def _rtstruct(tmp_path):
    """pydicom's RTSTRUCT test file, saved as a proper Part 10 file (the shipped one has no preamble)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    path = tmp_path / "rtstruct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path)
