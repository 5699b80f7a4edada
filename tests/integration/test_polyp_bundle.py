"""The bundle commands of the README on real polyp images with LiteMedSAM (a few iterations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = "['blosam_med/bundle/configs/train.yaml','configs/polyp.yaml']"
EVAL_CONFIGS = "['blosam_med/bundle/configs/train.yaml','configs/polyp.yaml','blosam_med/bundle/configs/evaluate.yaml']"


def _bundle(run_id, configs, *args, env):
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", configs, *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_bundle_train_track_evaluate(shared_data, tmp_path):
    import mlflow

    env = {**os.environ, "BLOSAM_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    common = [
        "--dataset_dir",
        str(shared_data / "polyp"),
        "--output_dir",
        str(out),
        "--iterations",
        "6",
        "--method",
        "blosam",
    ]
    _bundle("training", CONFIGS, *common, "--tracking", "mlflow", env=env)
    assert (out / "adapter.pt").stat().st_size < 20 * 2**20
    _bundle("evaluating", EVAL_CONFIGS, *common, env=env)
    result = json.loads((out / "test_metrics.json").read_text())
    assert result["mean"]["dice"]["n"] == 8 and result["mean"]["hd95"]["mean"] > 0  # seeded 20% of 40 images

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlruns.db'}")
    (run,) = mlflow.search_runs(experiment_names=["blosam_polyp"], output_format="list")
    assert run.info.run_name == "polyp_k4_s0_blosam-first_order"
    assert run.data.params["method"] == "blosam" and run.data.params["lora.rank"] == "4"
    assert {"loss_lower", "loss_upper", "val_dice", "test_dice", "test_hd95_mm", "test_nsd"} <= set(run.data.metrics)
    assert run.data.metrics["test_dice"] == pytest.approx(result["mean"]["dice"]["mean"])
