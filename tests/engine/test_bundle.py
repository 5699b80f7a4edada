"""The bundle's train/evaluate configs through ``blosam train`` / ``blosam evaluate`` on the tiny backbone."""

from __future__ import annotations

import json

import pytest
import torch

from blosam_med.cli import main

TINY = ["--backbone", "tiny", "--task", "lung_xray", "--device", "cpu"]


def _train(data, out, *extra):
    return main(["train", *TINY, "--data", str(data), "--out", str(out), "--shots", "4", *extra])


def test_train_then_evaluate(synthetic_2d, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(synthetic_2d, out, "--iterations", "6", "--method", "blosam", "--cross-fit", "1") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and set(metrics["final_loss"]) == {"loss_lower", "loss_upper"}
    draw = json.loads((out / "draw.json").read_text())
    a, b = {d["case"] for d in draw["A"]}, {d["case"] for d in draw["B"]}
    assert len(a) == 2 and len(b) == 2 and not a & b
    assert draw == metrics["draw"]

    result = tmp_path / "test.json"
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(out / "adapter.pt"),
                "--data",
                str(synthetic_2d),
                "--out",
                str(result),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    evaluation = json.loads(result.read_text())
    assert evaluation["mean"]["dice"]["n"] == len(evaluation["cases"]) == 2  # 8 cases, test fraction 0.2
    assert not {c["case"] for c in evaluation["cases"]} & (a | b)  # never evaluated on a training shot
    assert all(0.0 <= c["dice"] <= 1.0 and c["hd95"] >= 0 for c in evaluation["cases"])

    capsys.readouterr()
    before = (out / "adapter.pt").read_bytes()
    assert _train(synthetic_2d, out, "--iterations", "6", "--cross-fit", "1") == 2  # a finished run is not overwritten
    assert "already there" in capsys.readouterr().err
    assert (out / "adapter.pt").read_bytes() == before


def test_single_level_baseline_trains_on_all_shots(synthetic_2d, tmp_path):
    out = tmp_path / "single"
    assert _train(synthetic_2d, out, "--iterations", "4", "--method", "single") == 0
    draw = json.loads((out / "draw.json").read_text())
    assert len(draw["A"]) == 4 and draw["B"] == []
    assert set(json.loads((out / "metrics.json").read_text())["final_loss"]) == {"loss_joint"}


def test_amp_bf16_trains_in_bfloat16_and_records_it(synthetic_2d, tmp_path, monkeypatch):
    """--amp bf16 reaches the trainer (its adapter differs from float32's, its tensors stay float32) and the run
    params; without it the params record no amp."""
    import blosam_med.engine.trainer as trainer_module
    from blosam_med.model import load_adapter

    monkeypatch.setattr(trainer_module, "_native_bf16_cpu", lambda: True)  # emulated bf16 computes the same, slower

    states = {}
    for amp in ([], ["--amp", "bf16"]):
        out = tmp_path / ("bf16" if amp else "fp32")
        assert _train(synthetic_2d, out, "--iterations", "2", "--cross-fit", "1", *amp) == 0
        assert json.loads((out / "metrics.json").read_text())["params"]["amp"] == ("bf16" if amp else None)
        states[bool(amp)] = load_adapter(out / "adapter.pt")[0].trainable_state_dict()
    assert all(t.dtype == torch.float32 for t in states[True].values())
    assert any(not torch.equal(states[True][k], states[False][k]) for k in states[False])


def test_upper_heads_override_reaches_the_adapter_and_the_run_params(synthetic_2d, tmp_path):
    from blosam_med.model import load_adapter

    out = tmp_path / "uh"
    assert _train(synthetic_2d, out, "--iterations", "2", "--cross-fit", "1", "--set", "upper_heads=true") == 0
    model, _ = load_adapter(out / "adapter.pt")
    assert model.upper_heads and len(model.upper_parameters()) > 1
    assert json.loads((out / "metrics.json").read_text())["params"]["upper_heads"] is True


def test_resume_continues_the_same_run(synthetic_2d, tmp_path):
    common = ["--iterations", "8", "--cross-fit", "1", "--set", "epoch_length=4", "--hypergradient", "second_order"]
    assert _train(synthetic_2d, tmp_path / "full", *common) == 0
    # interrupted after the first of two epochs, then resumed
    assert _train(synthetic_2d, tmp_path / "cut", *common[:6], "train#trainer#max_epochs=1", *common[6:]) == 0
    assert _train(synthetic_2d, tmp_path / "cut", *common, "--resume") == 0
    full = torch.load(tmp_path / "full" / "adapter.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "cut" / "adapter.pt", weights_only=True)["state_dict"]
    assert set(full) == set(resumed)
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["iterations"] == 8


def test_tracking_mlflow(synthetic_2d, tmp_path):
    import mlflow

    out = tmp_path / "tracked"
    assert _train(synthetic_2d, out, "--iterations", "4", "--tracking", "--cross-fit", "1") == 0
    uri = f"sqlite:///{out / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["blosam_lung_xray"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "lung_xray_k4_s0_blosam-first_order" and run.info.status == "FINISHED"
    assert run.data.params["shots"] == "4" and run.data.params["task.window"] == "percentile"
    assert {"loss_lower", "loss_upper", "lr_group_0", "lr_group_1", "val_dice"} <= set(run.data.metrics)
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "loss_upper")
    assert len(history) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter.pt", "draw.json", "metrics.json"} <= artifacts

    # blosam evaluate --tracking logs into the same run, as evaluate.yaml does (one evaluation path)
    result = tmp_path / "test.json"
    args = ["--adapter", str(out / "adapter.pt"), "--data", str(synthetic_2d), "--out", str(result), "--device", "cpu"]
    assert main(["evaluate", *args, "--tracking"]) == 0
    metrics = client.get_run(run.info.run_id).data.metrics
    mean = json.loads(result.read_text())["mean"]
    assert metrics["test_dice"] == mean["dice"]["mean"] and metrics["test_hd95_mm"] == mean["hd95"]["mean"]
    assert "test_metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_default_cross_fits_two_folds_into_one_averaged_adapter(synthetic_2d, tmp_path, capsys):
    out = tmp_path / "cf"
    assert _train(synthetic_2d, out, "--iterations", "4") == 0  # the default: BLO-SAM, 2 folds, best epoch on B
    draws = [json.loads((out / f"fold{k}" / "draw.json").read_text()) for k in (0, 1)]
    cases = [{h: {d["case"] for d in draw[h]} for h in ("A", "B")} for draw in draws]
    assert cases[1]["A"] == cases[0]["B"] and cases[1]["B"] == cases[0]["A"]  # every shot trains both levels
    from blosam_med.model import AdapterEnsemble, load_adapter

    model, extra = load_adapter(out / "adapter.pt")
    assert isinstance(model, AdapterEnsemble) and len(model) == 2
    folds = [load_adapter(out / f"fold{k}" / "adapter.pt", model.backbone)[0] for k in (0, 1)]
    for member, fold in zip(model.members, folds, strict=True):
        assert all(torch.equal(member.trainable_state_dict()[n], t) for n, t in fold.trainable_state_dict().items())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cross_fit"] == 2 and metrics["iterations"] == 8 and extra["cross_fit"]["folds"] == 2
    assert metrics["params"]["method"] == "blosam" and metrics["params"]["keep_best"] is True
    assert metrics["validation"] and len(metrics["folds"]) == 2
    for name, value in metrics["validation"].items():  # the out-of-fold validation Dice, averaged
        assert value == pytest.approx(sum(f["validation"][name] for f in metrics["folds"]) / 2)
    for fold in metrics["folds"]:  # of the round each fold's adapter holds
        assert fold["validation"]["val_dice"] == fold["selected"]["value"]
    assert metrics["wall_seconds"] > 0 and metrics["train_seconds"] == pytest.approx(
        sum(f["train_seconds"] for f in metrics["folds"]), abs=0.02
    )
    # the one file is what evaluate takes
    result = tmp_path / "test.json"
    args = ["evaluate", "--adapter", str(out / "adapter.pt"), "--data", str(synthetic_2d), "--out", str(result)]
    assert main([*args, "--device", "cpu"]) == 0
    assert json.loads(result.read_text())["mean"]["dice"]["n"] == 2
    capsys.readouterr()
    assert _train(synthetic_2d, out, "--iterations", "4", "--method", "blosam", "--cross-fit", "2") == 2
    assert "already there" in capsys.readouterr().err


def test_cross_fit_needs_whole_folds(synthetic_2d, tmp_path, capsys):
    assert _train(synthetic_2d, tmp_path / "cf", "--iterations", "4", "--cross-fit", "0") == 2
    assert "--cross-fit 0 folds" in capsys.readouterr().err and not (tmp_path / "cf").exists()


def test_single_level_cross_fit_is_a_seed_ensemble_on_the_same_shots(synthetic_2d, tmp_path):
    """Single-level has no A/B split to turn: its folds train on the same shots and views, reseeded."""
    out = tmp_path / "ens"
    assert _train(synthetic_2d, out, "--iterations", "4", "--method", "single", "--cross-fit", "2") == 0
    draws = [json.loads((out / f"fold{k}/draw.json").read_text()) for k in (0, 1)]
    assert draws[0]["A"] == draws[1]["A"] and not draws[0]["B"] and "member" not in draws[0]
    assert draws[1]["member"] == 1
    members = [torch.load(out / f"fold{k}/adapter.pt", weights_only=True)["state_dict"] for k in (0, 1)]
    lora = [k for k in members[0] if "lora_A" in k]
    assert lora and any(not torch.equal(members[0][k], members[1][k]) for k in lora)  # initialised apart
    assert len(torch.load(out / "adapter.pt", weights_only=True)["members"]) == 2


def test_cross_fit_resume_keeps_finished_folds_and_continues_the_cut_one(synthetic_2d, tmp_path, caplog):
    out = tmp_path / "cf"
    common = ["--iterations", "4", "--set", "epoch_length=2", "--method", "blosam", "--cross-fit", "2"]
    assert _train(synthetic_2d, out, *common) == 0
    fold0 = (out / "fold0/adapter.pt").read_bytes()
    for name in ("adapter.pt", "metrics.json", "fold1/adapter.pt", "fold1/metrics.json"):
        (out / name).unlink()  # cut while fold 1 was training: its epoch checkpoints remain
    assert any((out / "fold1/checkpoints").glob("*.pt"))
    with caplog.at_level("INFO", logger="blosam_med.engine.handlers"):
        assert _train(synthetic_2d, out, *common, "--resume") == 0
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming from")]
    assert len(resumed) == 1 and "fold1" in resumed[0]  # fold 1 continued from its checkpoint
    assert (out / "fold0/adapter.pt").read_bytes() == fold0  # kept, not trained again
    assert json.loads((out / "fold1/metrics.json").read_text())["iterations"] == 4
    assert json.loads((out / "metrics.json").read_text())["cross_fit"] == 2

    # a fold trained before bundle 0.9 recorded no run name: the ensemble is named after the output folder
    record = json.loads((out / "fold0/metrics.json").read_text())
    del record["params"]["run_name"]
    (out / "fold0/metrics.json").write_text(json.dumps(record))
    (out / "adapter.pt").unlink()
    (out / "metrics.json").unlink()
    assert _train(synthetic_2d, out, *common, "--resume") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["run_name"] == "cf" and metrics["folds"][0]["run_name"] == "cf_fold0"
    assert metrics["folds"][1]["run_name"].endswith("_fold1") and metrics["folds"][1]["run_name"] != "cf_fold1"


def test_cross_fit_tracks_its_folds_and_the_ensemble_in_one_store(synthetic_2d, tmp_path):
    import mlflow

    out = tmp_path / "cf"
    assert _train(synthetic_2d, out, "--iterations", "4", "--tracking") == 0
    uri = f"sqlite:///{out / 'mlruns.db'}"
    assert not list(out.glob("fold*/mlruns.db"))  # one store for the folds and their ensemble
    mlflow.set_tracking_uri(uri)
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["blosam_lung_xray"], output_format="list")}
    name = "lung_xray_k4_s0_blosam-first_order"
    assert set(runs) == {name, f"{name}_fold0", f"{name}_fold1"}
    ensemble = runs[name]
    assert ensemble.data.params["cross_fit"] == "2" and ensemble.info.status == "FINISHED"
    assert ensemble.data.tags["blosam.cross_fit_folds"] == f"{name}_fold0, {name}_fold1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert ensemble.data.metrics["val_dice"] == pytest.approx(metrics["validation"]["val_dice"])
    client = mlflow.MlflowClient(uri)
    assert {"adapter.pt", "metrics.json"} <= {a.path for a in client.list_artifacts(ensemble.info.run_id)}
    assert "loss_upper" in runs[f"{name}_fold1"].data.metrics  # each fold is tracked by MONAI's handler

    assert _train(synthetic_2d, out, "--iterations", "4", "--tracking", "--resume") == 0  # finished folds kept
    again = mlflow.search_runs(experiment_names=["blosam_lung_xray"], output_format="list")
    assert sorted(r.info.run_name for r in again) == sorted(runs)  # and no second ensemble run

    result = tmp_path / "test.json"
    args = ["--adapter", str(out / "adapter.pt"), "--data", str(synthetic_2d), "--out", str(result), "--device", "cpu"]
    assert main(["evaluate", *args, "--tracking"]) == 0  # into the ensemble's run
    assert (
        client.get_run(ensemble.info.run_id).data.metrics["test_dice"]
        == json.loads(result.read_text())["mean"]["dice"]["mean"]
    )


def test_early_stopping_ends_training_rounds_after_the_best_on_b(synthetic_2d, tmp_path):
    out = tmp_path / "es"
    common = ["--iterations", "40", "--cross-fit", "1", "--set", "epoch_length=2", "lr=0.0"]
    assert _train(synthetic_2d, out, *common, "--early-stop", "2") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    selected = metrics["selected"]
    # lr 0: B's Dice never rises after the first round, so training stops 2 rounds after it
    assert [e for e, _ in selected["rounds"]] == [1, 2, 3] and selected["epoch"] == 3  # a tie keeps the later round
    assert metrics["iterations"] == 6 and metrics["params"]["early_stop_patience"] == 2
    assert _train(synthetic_2d, tmp_path / "full", *common) == 0  # patience 0 (the default): every iteration
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["iterations"] == 40


def test_amp_bf16_on_a_cpu_without_native_bfloat16_is_one_line_before_any_work(
    synthetic_2d, tmp_path, monkeypatch, capsys
):
    import blosam_med.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_native_bf16_cpu", lambda: False)
    out = tmp_path / "run"
    assert _train(synthetic_2d, out, "--iterations", "2", "--amp", "bf16") == 2
    err = capsys.readouterr().err
    assert "--amp bf16: amp: this CPU has no native bfloat16" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
