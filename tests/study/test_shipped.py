"""The adapters that ship inside the package: present, documented, and `blosam infer --task` keeps their quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import SHARED_DATA

from blosam_med.cli import main
from blosam_med.data import open_datalist, read_image
from blosam_med.model.checkpoint import read_adapter
from blosam_med.model.shipped import shipped_adapter, shipped_adapters

TASKS = ("lung_xray", "polyp", "teeth", "lung_ct")
#: One image per task (the first of the seeded test split; lung_ct has a single volume, whose middle slab of
#: slices was the study's test set and never a shot) and the Dice that ``blosam infer --task`` reached on it when the
#: adapters were installed; the floor is 0.05 below.
EXPECTED = json.loads((Path(__file__).with_name("shipped_expectations.json")).read_text())


def test_every_task_ships_an_adapter_with_a_model_card():
    assert set(shipped_adapters()) == set(TASKS)
    for task in TASKS:
        payload = read_adapter(shipped_adapter(task))
        assert payload["backbone"] == "litemedsam" and payload["extra"]["task"]["name"] == task
        card = (shipped_adapter(task).parent / "MODEL_CARD.md").read_text()
        assert "Dice" in card and "Licence" in card and "shots" in card


def test_unknown_task_lists_the_shipped_ones(tmp_path, capsys):
    assert main(["infer", "--task", "liver", "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no shipped adapter for task 'liver'" in capsys.readouterr().err


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _held_out_slab(item: dict, slices: list[int], folder: Path) -> dict:
    """The study's held-out slab of a single-volume task, written as its own NIfTI pair (image and label)."""
    import nibabel as nib

    folder.mkdir(parents=True)
    out = {}
    for key in ("image", "label"):
        vol = nib.load(item[key])
        affine = vol.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, slices[0]], [0, 0, 0, 1]], dtype=float)
        out[key] = str(folder / f"{key}_slab.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(vol.dataobj)[..., slices[0] : slices[1]], affine), out[key])
    return out


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_infer_task_on_a_held_out_image(task, tmp_path, litemedsam):
    expected = EXPECTED[task]
    folder = SHARED_DATA / expected["folder"]
    if not folder.is_dir():
        pytest.skip(f"{folder} absent (development data are not part of a clone)")
    item = open_datalist(folder)[expected.get("split", "test")][0]
    assert Path(item["image"]).name == expected["image"]  # the same held-out image as when recorded
    if "slices" in expected:
        item = _held_out_slab(item, expected["slices"], tmp_path / "slab")
    out = tmp_path / "pred"
    assert main(["infer", "--task", task, "--input", item["image"], "--out", str(out), "--device", "cpu"]) == 0
    stem = Path(item["image"]).name.split(".")[0]
    if task == "lung_ct":
        import nibabel as nib

        pred = np.asarray(nib.load(out / f"{stem}.nii.gz").dataobj)
        label = np.asarray(nib.load(item["label"]).dataobj) == 1  # label map: 1 = lung
    else:
        pred = np.asarray(read_image(out / f"{stem}_mask.png"))
        label = np.asarray(read_image(item["label"]))
    dice = _dice(pred.squeeze(), label.squeeze())
    assert dice >= expected["floor"], f"{task}: Dice {dice:.3f} below the floor {expected['floor']}"


@pytest.mark.realdata
def test_infer_task_runs_from_the_package_alone(tmp_path, litemedsam):
    """No data folder, no adapter path: the packaged teeth adapter segments a synthetic radiograph."""
    from synthetic import disc, write_png

    image = np.stack([(60 + 150 * (disc(96, 128, r=20.0) > 0)).astype(np.uint8)] * 3, axis=-1)
    path = write_png(tmp_path / "radiograph.png", image)
    assert (
        main(["infer", "--task", "teeth", "--input", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    )
    mask = np.asarray(read_image(tmp_path / "out" / "radiograph_mask.png")).squeeze()
    assert mask.shape == (96, 128) and set(np.unique(mask)) <= {0, 255}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [c["status"] for c in manifest["cases"]] == ["done"]


def _shipped_script():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "train_shipped_adapters.py"
    spec = importlib.util.spec_from_file_location("train_shipped_adapters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_card_names_the_views_affine_when_the_run_recorded_it():
    script = _shipped_script()
    params = {"method": "blosam", "views": 8, "view_affine": {"rotate_deg": 180.0, "scale": 0.25, "translate": 0.1}}
    assert script._view_affine(params) == (
        " (rotated within ±180°, zoomed by 1 ± 0.25, shifted by up to 0.1 of the image)"
    )
    assert script._view_affine({"views": 4}) == ""  # a run before bundle 0.9.2 recorded no affine
    assert script._view_affine({**params, "views": 0}) == ""  # no views, no affine to describe


def test_model_card_says_what_training_did_to_the_encoder():
    script = _shipped_script()
    assert script._encoder({}) == "encoder frozen"  # a run before the encoder tail (issue 40) recorded none
    tail = {"cut": "neck", "neck": "full", "stage_lora": False, "lora": {"rank": 8, "alpha": 8.0, "dropout": 0.0}}
    assert script._encoder({"encoder_tail": tail}) == (
        "encoder frozen up to the neck (the neck fine-tuned), trained with the decoder"
    )
    stage = {**tail, "cut": "last_stage", "neck": "lora", "stage_lora": True}
    assert script._encoder({"encoder_tail": stage}) == (
        "encoder frozen up to the last stage (LoRA on the neck, rank-8 LoRA on the last stage), trained with the decoder"
    )
