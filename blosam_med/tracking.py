"""MLflow defaults: where runs are stored, how they are named, and logging results into an existing run."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["sqlite_uri", "find_run", "log_evaluation"]

logger = logging.getLogger(__name__)


def sqlite_uri(output_dir: str | Path) -> str:
    """``sqlite:///<abs>/mlruns.db`` in ``output_dir`` (MLflow's file store is retired; sqlite is the default)."""
    from monai.utils import path_to_sqlite_uri

    return path_to_sqlite_uri(str(Path(output_dir) / "mlruns.db"))


def _sqlite_missing(uri: str) -> bool:
    parsed = urlparse(uri)
    return parsed.scheme == "sqlite" and not Path(unquote(parsed.path)).is_file()


def find_run(tracking_uri: str, experiment_name: str, run_name: str) -> Any | None:
    """The most recent run named ``run_name`` in ``experiment_name``; ``None`` when tracking was never on."""
    if _sqlite_missing(tracking_uri):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.runName = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def log_evaluation(
    result: dict[str, Any], tracking_uri: str, experiment_name: str, run_name: str, prefix: str = "test"
) -> bool:
    """Add an evaluation's mean metrics (``test_dice``, ``test_hd95_mm``, ``test_nsd``) and its JSON to the
    training run of that name. Returns whether a run was found."""
    run = find_run(tracking_uri, experiment_name, run_name)
    if run is None:
        logger.info("no MLflow run '%s' in %s; evaluation not tracked", run_name, tracking_uri)
        return False
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    names = {"dice": "dice", "hd95": "hd95_mm", "nsd": "nsd"}
    for key, name in names.items():
        stats = result.get("mean", {}).get(key)
        if isinstance(stats, dict) and stats.get("mean") is not None:
            client.log_metric(run.info.run_id, f"{prefix}_{name}", float(stats["mean"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{prefix}_metrics.json"
        path.write_text(json.dumps(result, indent=1))
        client.log_artifact(run.info.run_id, str(path))
    return True
