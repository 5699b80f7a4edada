"""MLflow defaults: where runs are stored, how they are named, and logging results into an existing run."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from blosam_med.metrics import mean_metrics

__all__ = [
    "sqlite_uri",
    "store_lock",
    "artifact_location",
    "experiment_id",
    "find_run",
    "log_evaluation",
    "flatten_params",
    "record_run",
]

logger = logging.getLogger(__name__)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config values as flat MLflow params (``task.window``); lists become their JSON text."""
    flat: dict[str, str] = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten_params(v, name + "."))
        else:
            flat[name] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return flat


def sqlite_uri(output_dir: str | Path) -> str:
    """``sqlite:///<abs>/mlruns.db`` in ``output_dir`` (MLflow's file store is retired; sqlite is the default)."""
    from monai.utils import path_to_sqlite_uri

    return path_to_sqlite_uri(str(Path(output_dir) / "mlruns.db"))


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs/db`` absolute, ``sqlite:///db`` relative, as in
    SQLAlchemy); ``None`` for other stores."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)[1:]) if parsed.scheme == "sqlite" else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` (an exclusive file lock) while opening a sqlite MLflow store and creating what a run
    needs in it. MLflow migrates a fresh database's schema on first use, and two processes doing that together
    fail ("table ... already exists"); they also race to create the same experiment. Other stores: no lock.
    """
    database = _sqlite_path(uri)
    if database is None:
        yield
        return
    from filelock import FileLock

    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        yield


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: ``mlruns/`` beside the database, as MONAI's
    ``MLFlowHandler`` does (MLflow's own default is ``./mlruns`` under the current directory). Other stores: MLflow
    decides (``None``)."""
    from monai.utils import path_to_uri

    database = _sqlite_path(uri)
    return None if database is None else path_to_uri(database.parent / "mlruns")


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, created (artifacts at :func:`artifact_location`) when missing; call it under
    :func:`store_lock`."""
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri)))


def _sqlite_missing(uri: str) -> bool:
    database = _sqlite_path(uri)
    return database is not None and not database.is_file()


def find_run(tracking_uri: str, experiment_name: str, run_name: str, status: str | None = None) -> Any | None:
    """The most recent run named ``run_name`` in ``experiment_name`` (with ``status``, e.g. ``"RUNNING"``, when
    given); ``None`` when there is none or tracking was never on."""
    if _sqlite_missing(tracking_uri):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.runName = '{run_name}'"
        + (f" and attributes.status = '{status}'" if status else ""),
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
    for name, value in mean_metrics(result, prefix).items():
        client.log_metric(run.info.run_id, name, value)
    client.log_dict(run.info.run_id, result, f"{prefix}_metrics.json")
    return True


def record_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: list[Path],
    tags: Mapping[str, str] | None = None,
) -> str:
    """A finished MLflow run made of results computed elsewhere (a cross-fit's ensemble): its params (flattened),
    metrics, artifact files and tags. Returns the run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with store_lock(tracking_uri):
        run_id = client.create_run(
            experiment_id(client, experiment_name), run_name=run_name, tags=dict(tags or {})
        ).info.run_id
    for k, text in flatten_params(params).items():
        client.log_param(run_id, k, text[:6000])
    for k, value in metrics.items():
        client.log_metric(run_id, k, value)
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id
