"""tracking: MLflow params, finding the training run, logging an evaluation into it."""

from __future__ import annotations

import pytest

from blosam_med.metrics import mean_metrics
from blosam_med.tracking import find_run, flatten_params, log_evaluation, record_run, sqlite_uri

RESULT = {"mean": {"dice": {"mean": 0.8}, "hd95": {"mean": 3.5}, "nsd": {"mean": None}}, "cases": []}


def test_flatten_params_nests_with_dots_and_lists_as_json():
    flat = flatten_params({"task": {"window": "lung", "label_values": [1, 2]}, "lr": 0.001})
    assert flat == {"task.window": "lung", "task.label_values": "[1, 2]", "lr": "0.001"}


def test_mean_metrics_use_the_tracked_names_and_skip_empty():
    assert mean_metrics(RESULT, "test") == {"test_dice": 0.8, "test_hd95_mm": 3.5}


def test_no_database_means_no_run_and_nothing_logged(tmp_path):
    uri = sqlite_uri(tmp_path)
    assert uri.startswith("sqlite:") and uri.endswith("mlruns.db")
    assert find_run(uri, "blosam_polyp", "run") is None
    assert log_evaluation(RESULT, uri, "blosam_polyp", "run") is False
    assert not (tmp_path / "mlruns.db").exists()


def test_evaluation_goes_into_the_running_or_latest_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) stays out of the repository
    uri = sqlite_uri(tmp_path)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("blosam_polyp")
    run = client.create_run(exp, run_name="polyp_k4_s0_single")
    assert find_run(uri, "blosam_polyp", "polyp_k4_s0_single", status="RUNNING").info.run_id == run.info.run_id
    client.set_terminated(run.info.run_id)
    assert find_run(uri, "blosam_polyp", "polyp_k4_s0_single", status="RUNNING") is None
    assert log_evaluation(RESULT, uri, "blosam_polyp", "polyp_k4_s0_single", prefix="test") is True
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged == {"test_dice": 0.8, "test_hd95_mm": 3.5}
    assert "test_metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_recorded_runs_keep_their_artifacts_beside_the_database(tmp_path, monkeypatch):
    """MLflow's default for a sqlite store is ./mlruns under the current directory: artifacts would scatter."""
    mlflow = pytest.importorskip("mlflow")
    work, out = tmp_path / "cwd", tmp_path / "out"
    work.mkdir()
    monkeypatch.chdir(work)
    result = out / "result.json"
    out.mkdir()
    result.write_text("{}")
    uri = sqlite_uri(out)
    run_id = record_run(uri, "blosam_polyp", "ens", {"folds": [0, 1]}, {"test_dice": 0.7}, [result])
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params == {"folds": "[0, 1]"} and run.data.metrics == {"test_dice": 0.7}
    assert (out / "mlruns" / run_id / "artifacts" / "result.json").is_file()  # as MONAI's MLFlowHandler puts them
    assert not (work / "mlruns").exists()
    assert record_run(uri, "blosam_polyp", "ens2", {}, {}, []) != run_id  # the experiment is reused, not recreated
    assert len(client.search_experiments()) == 2  # Default and blosam_polyp
