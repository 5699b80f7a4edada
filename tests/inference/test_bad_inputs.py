"""Bad inputs and I/O faults of ``blosam infer``: exit status 2, a message naming the file, the output folder kept.

Each test builds the bad input, runs the CLI, and compares the output folder before and after.
"""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
from synthetic import snapshot, write_nifti, write_rtstruct, write_seg, write_series, write_tiny_adapter

from blosam_med.cli import main


def _infer(adapter, input, out, *extra):
    return main(
        ["infer", "--adapter", str(adapter), "--input", str(input), "--out", str(out), "--device", "cpu", *extra]
    )


def _pacs_case(root):
    """A study folder as a PACS exports it: ``dicom/`` (a 4-slice CT series with a SEG inside), a SEG, an RTSTRUCT
    and a NIfTI label beside it."""
    series = root / "dicom"
    hu = np.random.default_rng(0).integers(0, 2000, (4, 16, 20)).astype(np.int16)
    write_series(series, hu)
    write_seg(root / "seg_beside.dcm", series)
    write_seg(root / "inside.dcm", series, seed=1).rename(series / "zz_seg_inside.dcm")
    write_rtstruct(root / "rtstruct.dcm")
    write_nifti(root / "label.nii.gz", np.zeros((20, 16, 4), np.uint8))
    return root


def test_pacs_folder_skips_non_images_and_lists_them(tmp_path, capsys, caplog):
    case = _pacs_case(tmp_path / "study1")
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    with caplog.at_level(logging.WARNING):
        assert _infer(adapter, case, tmp_path / "out") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["case"], r["status"]) for r in records] == [("study1", "done")]  # the series only
    assert nib.load(records[0]["outputs"]["nifti"]).shape == (20, 16, 4)  # the series' 4 slices, not the SEG's frames
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    ignored = {p["path"].rsplit("/", 1)[-1]: p["reason"] for p in manifest["ignored"]}
    assert ignored == {
        "seg_beside.dcm": "DICOM SEG object, not an image",
        "rtstruct.dcm": "DICOM RTSTRUCT object, not an image",
        "label.nii.gz": "NIfTI label beside a DICOM series, not an image",
        "zz_seg_inside.dcm": "DICOM SEG object, not an image",
    }
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    for name, modality in (("seg_beside.dcm", "SEG"), ("rtstruct.dcm", "RTSTRUCT"), ("zz_seg_inside.dcm", "SEG")):
        assert sum(name in line and modality in line for line in lines) == 1, lines  # one line each
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".blosam_status",
        "manifest.json",
        "study1.nii.gz",
        "study1_montage.png",
    ]


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_seg_or_rtstruct_alone_is_not_an_image(tmp_path, capsys, kind):
    series = tmp_path / "series"
    write_series(series, np.zeros((3, 8, 8), np.int16))
    bad = write_seg(tmp_path / "seg.dcm", series) if kind == "seg" else write_rtstruct(tmp_path / "rtstruct.dcm")
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path / "out")
    assert _infer(adapter, bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not an image" in err and kind.upper() in err and "Traceback" not in err, err
    assert snapshot(tmp_path / "out") == before


def test_folder_of_non_images_only_is_refused(tmp_path, capsys):
    series = tmp_path / "series"
    write_series(series, np.zeros((3, 8, 8), np.int16))
    only = tmp_path / "only"
    only.mkdir()
    write_seg(only / "a.dcm", series)
    write_rtstruct(only / "b.dcm")
    assert _infer(write_tiny_adapter(tmp_path / "a.pt"), only, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(only) in err and "not an image" in err and "a.dcm (SEG)" in err and "b.dcm (RTSTRUCT)" in err, err


@pytest.mark.realdata
def test_real_pacs_folder_with_seg(tmp_path, capsys, shared_data):
    """../shared/data/ct_dicom/dcmqi_ct3slice: dicom/ (3 CT slices), label.nii.gz and seg_liver.dcm (dcmqi)."""
    case = shared_data / "ct_dicom" / "dcmqi_ct3slice"
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    assert _infer(adapter, case, tmp_path / "out") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["case"], r["status"], r["slices"]) for r in records] == [("dcmqi_ct3slice", "done", 3)]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted((p["path"].rsplit("/", 1)[-1], p["reason"].split(",")[0]) for p in manifest["ignored"]) == [
        ("label.nii.gz", "NIfTI label beside a DICOM series"),
        ("seg_liver.dcm", "DICOM SEG object"),
    ]


def test_manifest_not_written_by_a_run_is_kept(tmp_path, capsys):
    image = tmp_path / "in" / "ct.nii.gz"
    write_nifti(image, np.random.default_rng(0).normal(-500, 200, (10, 9, 3)).astype(np.int16))
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "own file"}\n')
    before = snapshot(out)
    assert _infer(adapter, image, out) == 2
    err = capsys.readouterr().err
    assert str(out / "manifest.json") in err and "--overwrite" in err and "overwrite=True" not in err, err
    assert snapshot(out) == before  # nothing computed or written
    assert _infer(adapter, image, out, "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "blosam_med.manifest/1" and manifest["counts"]["done"] == 1
    capsys.readouterr()
    assert _infer(adapter, image, out) == 0  # a manifest of our own run is replaced by the rerun
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "skipped"


def test_output_folder_not_writable(tmp_path, capsys):
    image = tmp_path / "in" / "ct.nii.gz"
    write_nifti(image, np.zeros((10, 9, 3), np.int16))
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert _infer(adapter, image, blocker / "out") == 2
    err = capsys.readouterr().err
    assert str(blocker / "out") in err and "is a file, not a folder" in err and "Traceback" not in err, err
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        if _can_write(readonly):
            pytest.skip("permission bits do not stop this user (root); the file-in-the-way case ran")
        assert _infer(adapter, image, readonly / "out") == 2
        err = capsys.readouterr().err
        assert str(readonly / "out") in err and "not writable" in err, err
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)


def _can_write(folder):
    try:
        (folder / ".probe").write_text("")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_disk_full_while_writing_is_one_line(tmp_path, capsys, monkeypatch):
    """ENOSPC injected into the NIfTI writer: the case fails naming the file, no partial file is left, exit 2."""
    import errno

    image = tmp_path / "in" / "ct.nii.gz"
    write_nifti(image, np.zeros((10, 9, 3), np.int16))
    adapter = write_tiny_adapter(tmp_path / "a.pt")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full)
    out = tmp_path / "out"
    assert _infer(adapter, image, out) == 2
    err = capsys.readouterr().err
    assert f"{out / 'ct.nii.gz'}: could not be written (No space left on device); free some space" in err, err
    assert "Traceback" not in err
    assert not (out / "ct.nii.gz").exists() and not [p for p in out.iterdir() if p.name.startswith(".ct.nii")]
    monkeypatch.undo()
    assert _infer(adapter, image, out) == 0  # the rerun finishes the case
    shutil.rmtree(out)


def test_4d_nifti_is_refused_unless_the_extra_axis_is_one(tmp_path, capsys):
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    rng = np.random.default_rng(0)
    four_d = write_nifti(tmp_path / "in" / "fmri.nii.gz", rng.normal(0, 100, (64, 64, 8, 2)).astype(np.float32))
    out = tmp_path / "out"
    assert _infer(adapter, four_d, out) == 2
    err = capsys.readouterr().err
    assert f"{four_d}: a 4D NIfTI of shape (64, 64, 8, 2)" in err and "Traceback" not in err, err
    assert not (out / "fmri.nii.gz").exists()
    one = write_nifti(tmp_path / "in2" / "ct.nii.gz", rng.normal(0, 100, (16, 12, 3, 1)).astype(np.float32))
    assert _infer(adapter, one, out) == 0  # a 4th axis of size 1 is a plain volume
    assert nib.load(out / "ct.nii.gz").shape == (16, 12, 3)


def test_grayscale_image_for_an_rgb_task_warns(tmp_path, caplog, capsys):
    from synthetic import write_png

    image = write_png(tmp_path / "frame.png", np.random.default_rng(0).integers(0, 255, (32, 40)))
    adapter = write_tiny_adapter(tmp_path / "polyp.pt", task="polyp")
    with caplog.at_level(logging.WARNING):
        assert _infer(adapter, image, tmp_path / "out") == 0
    said = [r.getMessage() for r in caplog.records if "grayscale" in r.getMessage()]
    assert len(said) == 1 and str(image) in said[0] and "task 'polyp' expects 3 channels (RGB)" in said[0], said
