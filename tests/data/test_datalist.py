"""Datalists: layouts, checks of every pair, seeded case-level split, atomic writing, and ``blosam prepare``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from synthetic import disc, png_pairs, write_nifti, write_png, write_series

from blosam_med.cli import main
from blosam_med.data import (
    DatalistError,
    build_datalist,
    find_pairs,
    load_datalist,
    open_datalist,
    validate_pairs,
    write_datalist,
)
from blosam_med.io import OutputExistsError


def _cases(items):
    return {Path(it["image"]).name for it in items}


def test_png_layout_split_is_seeded_and_by_case(tmp_path):
    png_pairs(tmp_path / "task", n=10)
    dl = build_datalist(tmp_path / "task", test_fraction=0.2, seed=0)
    assert len(dl["training"]) == 8 and len(dl["test"]) == 2
    assert not _cases(dl["training"]) & _cases(dl["test"])
    for it in dl["training"]:
        assert Path(it["image"]).parent.name == "images" and Path(it["label"]).parent.name == "masks"
        assert Path(it["image"]).name == Path(it["label"]).name == f"{it['case']}.png"
    again = build_datalist(tmp_path / "task" / "images", tmp_path / "task" / "masks", seed=0)
    assert again["test"] == dl["test"]
    others = [_cases(build_datalist(tmp_path / "task", seed=s)["test"]) for s in range(1, 6)]
    assert any(o != _cases(dl["test"]) for o in others)


def test_nifti_layout_with_labels_folder(tmp_path):
    for i in range(3):
        write_nifti(tmp_path / "images" / f"v{i}.nii.gz", np.zeros((4, 4, 3), np.int16))
        lab = np.zeros((4, 4, 3), np.uint8)
        lab[1, 1, 1] = 1
        write_nifti(tmp_path / "labels" / f"v{i}.nii.gz", lab)
    dl = build_datalist(tmp_path, test_fraction=0.34, seed=0)
    assert len(dl["training"]) == 2 and len(dl["test"]) == 1
    assert {it["case"] for it in dl["training"] + dl["test"]} == {"v0", "v1", "v2"}


def test_dicom_series_layout(tmp_path):
    for name in ("p1", "p2"):
        write_series(tmp_path / name / "dicom", np.zeros((3, 6, 5), np.int16))
        lab = np.zeros((5, 6, 3), np.uint8)
        lab[2, 2, 1] = 1
        aff = np.diag([0.661468, 0.661468, 2.5, 1.0])
        write_nifti(tmp_path / name / "label.nii.gz", lab, aff)
    pairs = find_pairs(tmp_path)
    assert [p["case"] for p in pairs] == ["p1", "p2"] and pairs[0]["image"].endswith("p1/dicom")
    assert validate_pairs(pairs) == []
    dl = build_datalist(tmp_path, seed=0)
    assert len(dl["training"]) == 1 and len(dl["test"]) == 1  # two volumes: one each, never a volume in both


def test_write_is_relative_and_reads_back(tmp_path):
    png_pairs(tmp_path / "task", n=5)
    dl = build_datalist(tmp_path / "task", seed=0)
    out = write_datalist(dl, tmp_path / "lists" / "datalist.json")
    raw = json.loads(out.read_text())
    assert raw["training"][0]["image"].startswith("../task/images/")
    train = load_datalist(out, "training")
    assert [Path(it["image"]).resolve() for it in train] == [Path(it["image"]) for it in dl["training"]]
    assert all(Path(it["label"]).is_file() for it in train)
    assert set(open_datalist(out)) == {"training", "test"}
    with pytest.raises(OutputExistsError, match="datalist.json: already exists"):
        write_datalist(dl, out)
    with pytest.raises(ValueError, match="no 'validation' section; found training, test"):
        load_datalist(out, "validation")


def test_single_volume_goes_to_training(tmp_path):
    write_nifti(tmp_path / "images" / "v.nii.gz", np.zeros((4, 4, 3), np.int16))
    write_nifti(tmp_path / "labels" / "v.nii.gz", np.ones((4, 4, 3), np.uint8))
    dl = build_datalist(tmp_path, seed=0)
    assert len(dl["training"]) == 1 and dl["test"] == []


def test_label_values_declare_multi_label_masks(tmp_path):
    png_pairs(tmp_path, n=2)
    lab = np.zeros((24, 32), np.uint8)
    lab[:5], lab[10:15] = 1, 2
    write_png(tmp_path / "masks" / "case1.png", lab)
    problems = validate_pairs(find_pairs(tmp_path))
    assert len(problems) == 1 and "case1.png: not a binary mask: values [1, 2]" in problems[0]
    problems = validate_pairs(find_pairs(tmp_path), label_values=[1, 2])
    assert len(problems) == 1 and "case0.png: mask values [255] are not in the declared label set [1, 2]" in problems[0]
    assert validate_pairs(find_pairs(tmp_path), label_values=[1, 2, 255]) == []


# ------------------------------------------------------------------------------------------- blosam prepare
def _prepare(tmp_path, *extra):
    out = tmp_path / "out" / "datalist.json"
    return main(["prepare", "--images", str(tmp_path / "data"), "--out", str(out), *extra]), out


def test_prepare_cli_writes_a_datalist(tmp_path, capsys):
    png_pairs(tmp_path / "data", n=5)
    rc, out = _prepare(tmp_path, "--test-fraction", "0.4", "--seed", "3")
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"datalist": str(out), "training": 3, "test": 2}
    assert json.loads(out.read_text())["numTest"] == 2
    rc, _ = _prepare(tmp_path)
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert _prepare(tmp_path, "--overwrite")[0] == 0


def _bad(root: Path, kind: str) -> tuple[str, str]:
    """Four good pairs plus one bad input; returns (file named in the error, problem text)."""
    png_pairs(root, n=4)
    if kind == "truncated_dicom":
        data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
        (root / "images" / "ct9.dcm").write_bytes(data[:-2000])
        write_png(root / "masks" / "ct9.png", disc(64, 64))
        return "images/ct9.dcm", "truncated"
    if kind == "size_mismatch":
        write_png(root / "masks" / "case2.png", disc(20, 32))
        return "masks/case2.png", r"mask size \(20, 32\) differs from image case2.png size \(24, 32\)"
    if kind == "three_channel_mask":
        colour = np.zeros((24, 32, 3), np.uint8)
        colour[:5, :, 0], colour[10:, :, 2] = 255, 255
        write_png(root / "masks" / "case1.png", colour)
        return "masks/case1.png", "mask has 3 channels with different values"
    if kind == "empty_mask":
        write_png(root / "masks" / "case3.png", np.zeros((24, 32)))
        return "masks/case3.png", "empty mask"
    if kind == "nan_voxels":
        arr = np.zeros((4, 4, 3), np.float32)
        arr[0, 0, 0] = np.nan
        write_nifti(root / "images" / "vol.nii.gz", arr)
        write_nifti(root / "masks" / "vol.nii.gz", np.ones((4, 4, 3), np.uint8))
        return "images/vol.nii.gz", "1 NaN or infinite values"
    if kind == "unreadable":
        (root / "images" / "case0.png").write_bytes(b"\x89PNG broken")
        return "images/case0.png", "unreadable"
    if kind == "duplicate_stem":
        write_png(root / "images" / "case1.jpg", np.zeros((24, 32)))
        return "images/case1", r"duplicate stem 'case1' \(case1.jpg, case1.png\)"
    if kind == "missing_mask":
        (root / "masks" / "case2.png").unlink()
        return "images/case2.png", "missing mask"
    raise AssertionError(kind)


BAD = [
    "truncated_dicom",
    "size_mismatch",
    "three_channel_mask",
    "empty_mask",
    "nan_voxels",
    "unreadable",
    "duplicate_stem",
    "missing_mask",
]


@pytest.mark.parametrize("kind", BAD)
def test_prepare_refuses_each_bad_input(tmp_path, capsys, kind):
    name, problem = _bad(tmp_path / "data", kind)
    rc, out = _prepare(tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "nothing written" in err
    assert any(name in line and re.search(problem, line) for line in err.splitlines()), err
    assert not out.exists() and not (tmp_path / "out").exists()  # no datalist, no partial file, no folder


def test_prepare_reports_all_problems_at_once(tmp_path, capsys):
    root = tmp_path / "data"
    png_pairs(root, n=8)
    write_png(root / "masks" / "case2.png", disc(20, 32))
    write_png(root / "masks" / "case3.png", np.zeros((24, 32)))
    (root / "images" / "case0.png").write_bytes(b"\x89PNG broken")
    (root / "masks" / "case5.png").unlink()
    write_png(root / "images" / "case6.bmp", np.zeros((24, 32)))
    expected = ["masks/case2.png", "masks/case3.png", "images/case0.png", "images/case5.png", "duplicate stem 'case6'"]
    rc, out = _prepare(tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "5 problem(s); nothing written" in err
    for e in expected:
        assert e in err, e
    assert not out.exists()
    with pytest.raises(DatalistError) as info:
        build_datalist(root)
    assert len(info.value.problems) == 5
