"""The study runner on the tiny backbone: grid, nested MLflow runs, resume, failed cells, report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blosam_med.cli import main
from blosam_med.data import load_task
from blosam_med.inference import preset_options
from blosam_med.study import load_study, slab_split
from blosam_med.study.baselines import BoxPromptPredictor, UNetBaseline
from blosam_med.study.report import aggregate, paired_differences
from blosam_med.study.runner import pin_config
from tests.synthetic import write_nifti

METHODS = {
    "blosam": {"kind": "bundle", "label": "BLO-SAM", "set": {"method": "blosam"}},
    "single": {"kind": "bundle", "set": {"method": "single"}},
    "unet": {"kind": "unet", "iterations": 2, "channels": [4, 8]},
    "zero": {"kind": "zero_shot"},
    "box": {"kind": "box_prompt"},
}


def _config(tmp_path: Path, data: Path, methods: dict = METHODS, **extra) -> Path:
    study = {
        "name": "t",
        "output_dir": str(tmp_path / "study"),
        "data_root": str(data.parent),
        "tasks": {"lung_xray": {"data": data.name}},
        "shots": [2],
        "seeds": [0, 1],
        "train": {"iterations": 2, "backbone": "tiny"},
        "dev_size": 3,
        "methods": methods,
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": study}))
    return path


def _mlflow_runs(out: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    exp = client.get_experiment_by_name("blosam_study_t")
    return client.search_runs([exp.experiment_id])


def test_load_study_rejects_bad_configs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "study": {
                    "name": "x",
                    "tasks": ["polyp"],
                    "shots": [2],
                    "seeds": [0],
                    "methods": {"m": {"kind": "magic"}},
                }
            }
        )
    )
    with pytest.raises(ValueError, match=r"bad.yaml: study.methods.m.kind"):
        load_study(bad)
    bad.write_text(
        yaml.safe_dump(
            {
                "study": {
                    "name": "x",
                    "tasks": ["polyp"],
                    "shots": [1],
                    "seeds": [0],
                    "methods": {"m": {"kind": "zero_shot"}},
                }
            }
        )
    )
    with pytest.raises(ValueError, match="shots must be >= 2"):
        load_study(bad)
    bad.write_text(
        yaml.safe_dump(
            {
                "study": {
                    "name": "x",
                    "tasks": ["polyp"],
                    "shots": [2],
                    "seeds": [0],
                    "methods": {"m": {"kind": "bundle", "baseline": "singel"}},  # codespell:ignore singel
                }
            }
        )
    )
    with pytest.raises(ValueError, match=r"study.methods.m.baseline names no method: 'singel'"):
        load_study(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_study(tmp_path / "nope.yaml")


def test_default_grid_cells():
    config = load_study(Path(__file__).resolve().parents[2] / "configs/study/fewshot.yaml")
    cells = config.cells()
    trained = [m for m in config.methods if m.trains]
    per_task = (
        len(config.methods) - len(trained) + sum(len(m.shots or config.shots) for m in trained) * len(config.seeds)
    )
    assert len(cells) == len(config.tasks) * per_task
    assert len({c.id for c in cells}) == len(cells)
    assert {m.kind for m in config.methods} == {"bundle", "unet", "zero_shot", "box_prompt"}
    assert len(config.seeds) >= 3


def test_a_method_may_run_at_some_of_the_grids_shots(tmp_path):
    study = {"name": "x", "tasks": ["polyp"], "shots": [2, 4], "seeds": [0, 1]}
    methods = {"all": {"kind": "bundle"}, "four": {"kind": "bundle", "shots": [4]}, "oracle": {"kind": "box_prompt"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"study": {**study, "methods": methods}}))
    ids = {c.id for c in load_study(path).cells()}
    assert {i for i in ids if i.endswith("/four")} == {"polyp/k4_s0/four", "polyp/k4_s1/four"}
    assert len([i for i in ids if i.endswith("/all")]) == 4 and "polyp/oracle" in ids
    for bad in ([8], [], "4"):
        path.write_text(yaml.safe_dump({"study": {**study, "methods": {"four": {"kind": "bundle", "shots": bad}}}}))
        with pytest.raises(ValueError, match=r"s.yaml: study.methods.four.shots must list shot counts of study.shots"):
            load_study(path)


def test_box_prompt_predictor_shapes_and_empty(tiny_backbone, tmp_path):
    from blosam_med.model import EmbeddingCache

    cache = EmbeddingCache(tiny_backbone, None, "cpu", progress=False)
    image = torch.rand(1, 40, 50)
    label = torch.zeros(1, 40, 50, dtype=torch.uint8)
    (empty,) = BoxPromptPredictor(tiny_backbone, cache).masks([image], [label])
    assert empty.shape == (1, 40, 50) and not empty.any()
    label[0, 10:30, 5:25] = 1
    (boxed,) = BoxPromptPredictor(tiny_backbone, cache).masks([image], [label])
    assert boxed.shape == (1, 40, 50) and boxed.dtype == torch.uint8


def test_unet_baseline_learns_a_disc(synthetic_2d):
    from blosam_med.data import load_samples, open_datalist
    from blosam_med.model.backbones import Preprocessing

    samples = load_samples(open_datalist(synthetic_2d)["training"][:4], load_task("lung_xray"))
    unet = UNetBaseline(Preprocessing(64, "minmax"), channels=(8, 16, 32), iterations=60, lr=1e-2)
    losses = unet.fit(samples)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    masks = unet.masks([s["image"] for s in samples])
    assert [tuple(m.shape) for m in masks] == [tuple(s["label"].shape) for s in samples]


def test_slab_split_keeps_a_gap(tmp_path):
    vol = np.zeros((16, 16, 20), np.int16)
    lab = np.zeros((16, 16, 20), np.uint8)
    lab[4:12, 4:12, 2:18] = 1
    item = {
        "image": str(write_nifti(tmp_path / "ct.nii.gz", vol)),
        "label": str(write_nifti(tmp_path / "l.nii.gz", lab)),
    }
    task = load_task("lung_ct")
    split = slab_split({"training": [item], "test": []}, task, (0.4, 0.6), gap=2)
    (test,) = split["test"]
    assert test["slices"] == [8, 12]
    assert [t["slices"] for t in split["training"]] == [[0, 6], [14, 20]]
    from blosam_med.data import load_samples

    got = {s["slice"] for s in load_samples(split["training"], task, foreground_only=False, every_n=1)}
    assert got == set(range(0, 6)) | set(range(14, 20))


_TRACKER = """
import sys, time
from pathlib import Path
from blosam_med.study import load_study
from blosam_med.study.tracking import StudyTracker
config = load_study(sys.argv[1])
Path(sys.argv[3]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
print(StudyTracker(config).parent_id)
"""


def test_studies_started_together_share_one_store_and_parent_run(synthetic_2d, tmp_path):
    """Without the store lock, three processes opening a fresh mlruns.db together fail in MLflow's migrations."""
    import subprocess
    import sys
    import time

    pytest.importorskip("mlflow")
    cfg, go = _config(tmp_path, synthetic_2d), tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TRACKER, str(cfg), str(go), str(r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-800:] for _, err in outs]
    ids = {out.strip() for out, _ in outs}
    assert len(ids) == 1
    runs = _mlflow_runs(tmp_path / "study")
    assert [r.info.run_id for r in runs] == list(ids)
    assert json.loads((tmp_path / "study" / "mlflow_run.json").read_text())["run_id"] in ids


def test_study_runs_tracks_resumes_and_survives_a_failed_cell(synthetic_2d, tmp_path, capsys):
    methods = dict(METHODS, broken={"kind": "unet", "channels": [8]})  # MONAI's UNet needs two levels or more
    config = _config(tmp_path, synthetic_2d, methods)
    out = tmp_path / "study"
    assert main(["study", str(config), "--device", "cpu"]) == 1  # the broken cells fail, the others finish
    captured = capsys.readouterr()
    assert "cell lung_xray/k2_s0/broken failed" in captured.err
    done = sorted(p.parent.relative_to(out / "cells").as_posix() for p in (out / "cells").rglob("result.json"))
    assert done == [
        "lung_xray/box",
        "lung_xray/k2_s0/blosam",
        "lung_xray/k2_s0/single",
        "lung_xray/k2_s0/unet",
        "lung_xray/k2_s1/blosam",
        "lung_xray/k2_s1/single",
        "lung_xray/k2_s1/unet",
        "lung_xray/zero",
    ]
    assert (out / "cells/lung_xray/k2_s0/broken/error.txt").read_text().count("length of `channels`") >= 1

    result = json.loads((out / "cells/lung_xray/k2_s0/blosam/result.json").read_text())
    assert result["mean"]["dice"]["n"] == 2 and result["train"]["iterations"] == 2
    assert 1 <= result["dev"]["mean"]["dice"]["n"] <= 3  # dev samples outside the draw only
    draw = result["train"]["draw"]
    dev_cases = {c["case"].split("#")[0] for c in result["dev"]["cases"]}
    assert not dev_cases & {Path(d["image_path"]).name for d in draw["A"] + draw["B"]}

    runs = _mlflow_runs(out)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 10
    assert sum(r.info.status == "FAILED" for r in children) == 2
    assert all("test_dice" in r.data.metrics for r in children if r.info.status == "FINISHED")

    table = (out / "report/table.md").read_text()
    assert "| lung_xray | BLO-SAM |" in table and "blosam − single" in table
    assert (out / "report/dice_vs_shots.png").stat().st_size > 1000
    assert (out / "report/overlays_lung_xray.png").is_file()

    # rerun without the broken method: nothing is recomputed, nothing is tracked twice
    stamp = (out / "cells/lung_xray/k2_s0/blosam/result.json").stat().st_mtime_ns
    config = _config(tmp_path, synthetic_2d)
    assert main(["study", str(config), "--device", "cpu"]) == 0
    assert (out / "cells/lung_xray/k2_s0/blosam/result.json").stat().st_mtime_ns == stamp
    assert len(_mlflow_runs(out)) == 11


def test_aggregate_and_paired_differences():
    config = load_study(
        Path(__file__).resolve().parents[2] / "configs/study/fewshot_v1.yaml", {"shots": [2], "seeds": [0, 1]}
    )
    config.tasks = {"polyp": {}}
    rows = []
    for seed, (a, b) in enumerate([(0.6, 0.5), (0.4, 0.45)]):
        for method, dice in (("blosam", a), ("single", b)):
            rows.append(
                {
                    "task": "polyp",
                    "method": method,
                    "trains": True,
                    "shots": 2,
                    "seed": seed,
                    "dice": dice,
                    "hd95": 10.0,
                    "nsd": 0.5,
                    "dev_dice": dice,
                    "cpu_seconds": 1.0,
                }
            )
    rows.append(
        {
            "task": "polyp",
            "method": "box-oracle",
            "trains": False,
            "shots": None,
            "seed": None,
            "dice": 0.9,
            "hd95": 3.0,
            "nsd": 0.9,
            "dev_dice": None,
            "cpu_seconds": 1.0,
        }
    )
    agg = {(a["method"], a["shots"]): a for a in aggregate(config, rows)}
    assert agg[("blosam", 2)]["dice_mean"] == pytest.approx(0.5) and agg[("blosam", 2)]["dice_std"] == pytest.approx(
        0.1
    )
    assert agg[("box-oracle", 2)]["dice_mean"] == 0.9 and agg[("box-oracle", 2)]["dice_std"] is None
    (pair,) = paired_differences(rows, "blosam", "single")
    assert pair["mean"] == pytest.approx(0.025) and pair["wins"] == 1 and pair["n"] == 2


@pytest.mark.parametrize(
    "extra, where, first",
    [
        ({"seed": [0]}, "study: unknown key 'seed'", "seeds"),
        ({"train": {"iteration": 2}}, "study.train: unknown key 'iteration'", "iterations"),
        ({"tasks": {"lung_xray": {"dat": "x"}}}, "study.tasks.lung_xray: unknown key 'dat'", "data"),
    ],
)
def test_unknown_study_keys_are_refused(tmp_path, synthetic_2d, capsys, extra, where, first):
    config = _config(tmp_path, synthetic_2d, **extra)
    assert main(["study", str(config), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: {where}; valid keys: {first}" in err and "Traceback" not in err, err
    assert not (tmp_path / "study").exists()


def test_a_filtered_run_keeps_the_whole_report(tmp_path, synthetic_2d, capsys):
    """``--methods``/``--seeds`` choose what runs; its report still lists every finished cell of the grid."""
    methods = {"zero": METHODS["zero"], "single": METHODS["single"]}
    config = _config(tmp_path, synthetic_2d, methods, seeds=[0])
    run = ["study", str(config), "--device", "cpu", "--no-tracking"]
    assert main([*run, "--methods", "zero"]) == 0
    assert main([*run, "--methods", "single", "--seeds", "3"]) == 0  # a seed outside the grid widens it
    cells = tmp_path / "study/cells/lung_xray"
    assert (cells / "zero/result.json").is_file() and (cells / "k2_s3/single/result.json").is_file()
    assert not (cells / "k2_s0").exists()  # seed 0 of single was not asked for
    with open(tmp_path / "study/report/cells.csv") as f:
        assert sorted(r["cell"] for r in csv.DictReader(f)) == ["lung_xray/k2_s3/single", "lung_xray/zero"]
    assert main([*run, "--report-only", "--methods", "zero"]) == 0  # a report of the chosen methods only
    with open(tmp_path / "study/report/cells.csv") as f:
        assert [r["cell"] for r in csv.DictReader(f)] == ["lung_xray/zero"]
    capsys.readouterr()
    assert main([*run, "--methods", "singel"]) == 2
    assert "no method 'singel' in the study (methods: ['single', 'zero'])" in capsys.readouterr().err


def test_unknown_method_option_is_refused(tmp_path, synthetic_2d):
    methods = dict(METHODS, single={"kind": "bundle", "set": {"methd": "single"}})
    with pytest.raises(ValueError, match=r"study.methods.single.set: unknown key 'methd'; valid keys: method"):
        load_study(_config(tmp_path, synthetic_2d, methods))
    methods = dict(METHODS, unet={"kind": "unet", "iteration": 2})
    with pytest.raises(ValueError, match=r"study.methods.unet: unknown key 'iteration'; valid keys: iterations"):
        load_study(_config(tmp_path, synthetic_2d, methods))


def test_a_bundle_method_may_adapt_the_encoder_tail(synthetic_2d, tmp_path):
    """A method with ``encoder_tail`` trains with the pinned encoder_tail.yaml (what ``blosam train --encoder-tail``
    merges) and is scored on a cache of its head's features; a bad name or tail key is refused naming the method."""
    methods = {"tail": {"kind": "bundle", "encoder_tail": "neck", "set": {"views": 0, "tail_neck": "lora"}}}
    config = _config(tmp_path, synthetic_2d, methods, seeds=[0], dev_size=0)
    data = yaml.safe_load(config.read_text())
    data["study"]["train"] = {"iterations": 2, "epoch_length": 2, "backbone": "tiny_vit", "engine": "torch"}
    config.write_text(yaml.safe_dump(data))
    assert main(["study", str(config), "--device", "cpu", "--no-tracking", "--engine", "torch"]) == 0
    cell = tmp_path / "study/cells/lung_xray/k2_s0/tail"
    result = json.loads((cell / "result.json").read_text())
    assert result["mean"]["dice"]["n"] > 0 and result["train"]["params"]["encoder_tail"]["neck"] == "lora"
    pinned = tmp_path / "study/configs" / result["train"]["configs"]["encoder_tail"]
    assert pinned.name.startswith("encoder_tail-") and pinned.is_file()
    assert torch.load(cell / "train/adapter.pt", weights_only=True)["encoder_tail"]["cut"] == "neck"
    assert not (tmp_path / "cache" / "tiny_vit").exists()  # trained and scored on the head's features only
    for bad, match in (
        ({"encoder_tail": "stem"}, r"study.methods.tail.encoder_tail 'stem' is not one of: neck, stage"),
        ({"set": {"tail_nek": "lora"}}, r"study.methods.tail.set: unknown key 'tail_nek'; valid keys: tail_neck"),
    ):
        with pytest.raises(ValueError, match=match):
            load_study(_config(tmp_path, synthetic_2d, {"tail": {**methods["tail"], **bad}}))
    # no encoder_tail (nor the preset's): no tail keys
    plain = {"plain": {"kind": "bundle", "set": {"tail_neck": "lora"}}}
    with pytest.raises(ValueError, match=r"study.methods.plain.set: unknown key 'tail_neck'"):
        load_study(_config(tmp_path, synthetic_2d, plain))
    frozen = {"frozen": {"kind": "bundle", "encoder_tail": "none", "set": {"tail_neck": "lora"}}}
    with pytest.raises(ValueError, match=r"study.methods.frozen.set: unknown key 'tail_neck'"):
        load_study(_config(tmp_path, synthetic_2d, frozen))


def test_pin_config_names_a_copy_by_its_content(tmp_path):
    src = tmp_path / "train.yaml"
    src.write_text("iterations: 300\n")
    first = pin_config(src, tmp_path / "pinned")
    assert first.parent == tmp_path / "pinned" and first.name.startswith("train-") and first.suffix == ".yaml"
    assert pin_config(src, tmp_path / "pinned") == first  # same content, same copy
    src.write_text("iterations: 50\n")
    second = pin_config(src, tmp_path / "pinned")
    assert second != first and first.read_text() == "iterations: 300\n" and second.read_text() == "iterations: 50\n"


def test_cells_run_the_bundle_pinned_when_the_study_started(synthetic_2d, tmp_path, monkeypatch):
    """Editing train.yaml while a study runs does not reach its later cells (their code is the old one)."""
    import blosam_med.study.runner as runner
    from blosam_med.workflow import bundle_config

    train = tmp_path / "bundle" / "train.yaml"
    train.parent.mkdir()
    train.write_text(bundle_config("train.yaml").read_text())
    original = train.read_text()
    monkeypatch.setattr(runner, "bundle_config", lambda name: train if name == "train.yaml" else bundle_config(name))
    saved = runner.save_record

    def save_then_break_the_bundle(*args, **kwargs):  # after the first cell, the bundle on disk stops parsing
        saved(*args, **kwargs)
        train.write_text("network_def: [unclosed\n")

    monkeypatch.setattr(runner, "save_record", save_then_break_the_bundle)
    config = _config(tmp_path, synthetic_2d, {"single": METHODS["single"]})
    assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    cells = tmp_path / "study/cells/lung_xray"
    results = [json.loads((cells / f"k2_s{s}/single/result.json").read_text()) for s in (0, 1)]
    names = {r["train"]["configs"]["train"] for r in results}
    assert len(names) == 1 and (tmp_path / "study/configs" / names.pop()).read_text() == original
    assert results[1]["train"]["configs"]["preset"].startswith("lung_xray-")


def test_cross_fit_method_trains_folds_and_scores_their_ensemble(synthetic_2d, tmp_path):
    methods = {"cf": {"kind": "bundle", "cross_fit": 2, "set": {"method": "blosam"}}}
    assert (
        main(["study", str(_config(tmp_path, synthetic_2d, methods, seeds=[0])), "--device", "cpu", "--no-tracking"])
        == 0
    )
    train = tmp_path / "study/cells/lung_xray/k2_s0/cf/train"
    assert (train / "fold0/adapter.pt").is_file() and (train / "fold1/adapter.pt").is_file()
    result = json.loads((train.parent / "result.json").read_text())
    assert result["train"]["cross_fit"] == 2 and result["mean"]["dice"]["n"] > 0
    assert len(torch.load(train / "adapter.pt", weights_only=True)["members"]) == 2
    # cut while training fold 1: fold 0 is kept, fold 1 and the ensemble are made again
    fold0 = (train / "fold0/adapter.pt").read_bytes()
    for name in ("result.json", "train/metrics.json", "train/adapter.pt", "train/fold1/metrics.json"):
        (train.parent / name).unlink()
    assert (
        main(["study", str(_config(tmp_path, synthetic_2d, methods, seeds=[0])), "--device", "cpu", "--no-tracking"])
        == 0
    )
    assert (train / "fold0/adapter.pt").read_bytes() == fold0
    assert (train / "fold1/metrics.json").is_file() and (train.parent / "result.json").is_file()
    bad = {"cf": {"kind": "bundle", "cross_fit": 0, "set": {"method": "single"}}}
    with pytest.raises(
        ValueError,
        match=r"study.methods.cf.cross_fit: 0 folds: give a whole number, 1 \(one run\) or more",
    ):
        load_study(_config(tmp_path, synthetic_2d, bad))


def test_a_cell_cut_after_training_is_only_scored_again(synthetic_2d, tmp_path):
    config = _config(tmp_path, synthetic_2d, {"single": METHODS["single"]}, seeds=[0])
    assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    cell = tmp_path / "study/cells/lung_xray/k2_s0/single"
    first = json.loads((cell / "result.json").read_text())
    adapter = (cell / "train/adapter.pt").read_bytes()
    (cell / "result.json").unlink()  # killed while scoring
    assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    again = json.loads((cell / "result.json").read_text())
    assert (cell / "train/adapter.pt").read_bytes() == adapter  # not trained again
    assert again["scored_after_training"] and again["mean"] == first["mean"] and again["train"] == first["train"]
    with open(tmp_path / "study/report/cells.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["cell"] == "lung_xray/k2_s0/single")
    assert float(row["cpu_seconds"]) == pytest.approx(again["cpu_seconds"] + again["train"]["train_seconds"])
    (cell / "result.json").unlink()
    (cell / "train/adapter.pt").write_bytes(b"cut")  # an unreadable adapter: the cell trains again
    assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    assert "scored_after_training" not in json.loads((cell / "result.json").read_text())


def test_study_predicts_empty_the_slices_the_preset_calls_empty(synthetic_2d, tmp_path, monkeypatch):
    from blosam_med.inference import empty_slices

    asked = []

    def every_slice_empty(samples, task):  # as if every sample were an air-only slice under empty_below
        asked.append(task.name)
        return [True] * len(samples)

    monkeypatch.setattr(empty_slices, "empty_slices", every_slice_empty)
    config = _config(tmp_path, synthetic_2d, {"single": METHODS["single"]}, seeds=[0])
    assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    result = json.loads((tmp_path / "study/cells/lung_xray/k2_s0/single/result.json").read_text())
    assert asked and set(asked) == {"lung_xray"}  # the cell's own preset decides, as in blosam infer / evaluate
    assert all(c["dice"] == 0.0 for c in result["cases"])  # foreground everywhere, nothing predicted


def test_cells_are_scored_on_the_evaluation_pool(synthetic_2d, tmp_path):
    n_pairs = len(list((synthetic_2d / "images").iterdir()))
    methods = {"single": METHODS["single"]}
    tasks = {"lung_xray": {"data": synthetic_2d.name, "eval": synthetic_2d.name}}
    config = _config(tmp_path, synthetic_2d, methods, seeds=[0], tasks=tasks)
    assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    cell = tmp_path / "study/cells/lung_xray/k2_s0/single"
    result = json.loads((cell / "result.json").read_text())
    assert result["mean"]["dice"]["n"] == n_pairs  # the whole pool is scored
    assert result["test"]["mean"]["dice"]["n"] < n_pairs  # the test split is kept aside
    saved = np.load(cell / "eval_masks.npz")
    assert len(saved["shapes"]) == n_pairs
    table = (tmp_path / "study/report/table.md").read_text()
    assert "evaluation pool" in table and "Runs that ended at empty masks" in table


def test_bootstrap_interval_covers_the_mean_and_widens_with_noise():
    from blosam_med.study.report import bootstrap_interval

    rng = np.random.default_rng(0)
    tight = 0.05 + 0.01 * rng.standard_normal((5, 160))
    noisy = 0.05 + 0.30 * rng.standard_normal((5, 160))
    lo, hi = bootstrap_interval(tight)
    assert lo < tight.mean() < hi and lo > 0
    lo2, hi2 = bootstrap_interval(noisy)
    assert hi2 - lo2 > 5 * (hi - lo)
    lo3, hi3 = bootstrap_interval(np.array([0.1, 0.2, 0.3]))  # one value per seed
    assert 0.1 <= lo3 < 0.2 < hi3 <= 0.3


def test_rescore_scores_finished_cells_again_with_todays_preset(synthetic_2d, tmp_path, monkeypatch):
    """``--rescore`` re-predicts a trained cell from its adapter with the current task preset, without training."""
    from blosam_med.study import runner

    used = []
    monkeypatch.setattr(runner, "preset_options", lambda presets: used.append(presets[0]) or preset_options(presets))
    preset = tmp_path / "lungs.yaml"
    task = load_task("lung_xray").to_dict()
    preset.write_text(yaml.safe_dump({"task": task}))
    tasks = {"lung_xray": {"data": synthetic_2d.name, "eval": synthetic_2d.name, "preset": str(preset)}}
    config = _config(tmp_path, synthetic_2d, {"single": METHODS["single"]}, seeds=[0], tasks=tasks)
    assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    cell = tmp_path / "study/cells/lung_xray/k2_s0/single"
    first = json.loads((cell / "result.json").read_text())
    adapter = (cell / "train/adapter.pt").stat().st_mtime_ns
    assert first["inference"]["flips"] == list(task["flips"]) and "rescored" not in first

    preset.write_text(yaml.safe_dump({"task": {**task, "flips": ["h", "v"], "refine_boxes": 2, "refine_gate": 0.0}}))
    used.clear()
    assert main(["study", str(config), "--device", "cpu", "--no-tracking", "--rescore"]) == 0
    assert [(t.flips, t.refine_boxes, t.refine_gate) for t in used] == [(("h", "v"), 2, 0.0)]  # the predictor's
    again = json.loads((cell / "result.json").read_text())
    assert again["inference"] == {**first["inference"], "flips": ["h", "v"], "refine_boxes": 2, "refine_gate": 0.0}
    assert again["rescored"] and (cell / "train/adapter.pt").stat().st_mtime_ns == adapter  # not retrained
    assert again["train"] == first["train"] and again["cpu_seconds"] == first["cpu_seconds"]
    assert again["mean"]["dice"]["n"] == first["mean"]["dice"]["n"]


def test_records_outlive_the_output_folder(synthetic_2d, tmp_path, capsys):
    """Finished cells are copied to ``study.records``; a lost output folder is restored from them, not rerun."""
    import shutil

    methods = {"zero": METHODS["zero"], "single": METHODS["single"], "blosam": METHODS["blosam"]}
    records = tmp_path / "records"
    config = _config(tmp_path, synthetic_2d, methods, seeds=[0], records=str(records))
    run = ["study", str(config), "--device", "cpu", "--no-tracking"]
    assert main([*run, "--methods", "zero", "single"]) == 0
    cells = tmp_path / "study/cells"
    first = json.loads((cells / "lung_xray/k2_s0/single/result.json").read_text())
    assert json.loads((records / "lung_xray/k2_s0/single.json").read_text()) == first
    assert (records / "lung_xray/zero.json").is_file() and not (records / "lung_xray/k2_s0/blosam.json").exists()
    table = (tmp_path / "study/report/table.md").read_text()

    shutil.rmtree(tmp_path / "study")  # a new machine: only the committed records are left
    assert main([*run, "--report-only"]) == 0
    assert (tmp_path / "study/report/table.md").read_text() == table
    restored = json.loads((cells / "lung_xray/k2_s0/single/result.json").read_text())
    assert restored.pop("restored_from") == str(records / "lung_xray/k2_s0/single.json") and restored == first

    # the grid resumes: the recorded cells are skipped, the missing one runs and is recorded
    stamp = (cells / "lung_xray/k2_s0/single/result.json").stat().st_mtime_ns
    assert main([*run, "--methods", "single", "blosam"]) == 0
    assert (cells / "lung_xray/k2_s0/single/result.json").stat().st_mtime_ns == stamp
    assert not (cells / "lung_xray/k2_s0/single/train").exists()  # not trained again
    assert (records / "lung_xray/k2_s0/blosam.json").is_file()
    capsys.readouterr()

    (records / "lung_xray/zero.json").write_text("{not json")
    shutil.rmtree(cells / "lung_xray/zero")
    assert main([*run, "--report-only"]) == 2
    assert "records/lung_xray/zero.json: unreadable cell record" in capsys.readouterr().err


def test_pairs_over_cells_without_per_image_scores_resample_draws_only():
    rows = [
        {"task": "polyp", "method": m, "trains": True, "shots": 2, "seed": s, "dice": d, "case_dice": cases}
        for s, (a, b) in enumerate([(0.7, 0.6), (0.5, 0.45)])
        for m, d, cases in (("default", a, [a, a]), ("single", b, [b, b] if s else []))
    ]
    (pair,) = paired_differences(rows, "default", "single")
    assert pair["resampled"] == "draws" and pair["mean"] == pytest.approx(0.075)
    rows[1]["case_dice"] = [0.6, 0.6]  # seed 0's baseline regains its per-image scores
    assert paired_differences(rows, "default", "single")[0]["resampled"] == "draws and images"


def test_study_pairs_pairs_methods_of_two_studies(synthetic_2d, tmp_path):
    """``scripts/study_pairs.py --against``: a method of one study minus a method of another, on the same draws."""
    import subprocess
    import sys

    methods = {"single": METHODS["single"]}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = _config(tmp_path / "a", synthetic_2d, methods, seeds=[0], name="a")
    second = _config(
        tmp_path / "b", synthetic_2d, methods, seeds=[0], name="b", train={"iterations": 3, "backbone": "tiny"}
    )
    for config in (first, second):
        assert main(["study", str(config), "--device", "cpu", "--no-tracking"]) == 0
    cell = "study/cells/lung_xray/k2_s0/single/result.json"
    dice = [json.loads((tmp_path / s / cell).read_text())["mean"]["dice"]["mean"] for s in ("a", "b")]
    script = Path(__file__).parents[2] / "scripts" / "study_pairs.py"
    run = [sys.executable, str(script), str(first), "single:single", "--digits", "4"]
    out = subprocess.run([*run, "--against", str(second)], capture_output=True, text=True, check=True).stdout
    assert out.startswith("lung_xray 2 shots, single - single@b: ")
    assert float(out.split(": ")[1].split()[0]) == pytest.approx(dice[0] - dice[1], abs=1e-4)
    refused = subprocess.run([*run[:3], "single:unet", "--against", str(second)], capture_output=True, text=True)
    assert refused.returncode == 2 and "single:unet" in refused.stderr


def test_cell_cpu_seconds_include_finished_child_processes():
    import subprocess
    import sys
    import time

    from blosam_med.study.runner import cpu_seconds

    before, own = cpu_seconds(), time.process_time()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)  # like a cross-fit fold's spawned process
    assert cpu_seconds() - before >= 0.45 and time.process_time() - own < 0.3
