"""MLflow for a study: one parent run, one nested run per cell (MLflow's ``mlflow.parentRunId`` tag)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blosam_med.io import write_json
from blosam_med.metrics import mean_metrics
from blosam_med.study.config import Cell, StudyConfig
from blosam_med.tracking import experiment_id, flatten_params, sqlite_uri, store_lock

__all__ = ["StudyTracker"]


class StudyTracker:
    """Tracks a study in ``<output_dir>/mlruns.db`` (experiment ``blosam_study_<name>``).

    The parent run's id is kept in ``<output_dir>/mlflow_run.json``, so a resumed study adds its new cells under the
    same parent; a cell already tracked (tag ``blosam.cell``) is not tracked twice. Studies started together on one
    output folder (one process per task, say) open the store one at a time and share the parent run.
    """

    def __init__(self, config: StudyConfig, tracking_uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.config = config
        self.uri = tracking_uri or sqlite_uri(config.output_dir)
        with store_lock(self.uri):  # studies started together on a fresh folder share one store and one parent run
            self.client = MlflowClient(self.uri)
            self.experiment_id = experiment_id(self.client, f"blosam_study_{config.name}")
            record = config.output_dir / "mlflow_run.json"
            if record.is_file():
                self.parent_id = json.loads(record.read_text())["run_id"]
                self.client.update_run(self.parent_id, status="RUNNING")
            else:
                self.parent_id = self._create_parent(record)

    def _create_parent(self, record: Path) -> str:
        config = self.config
        run = self.client.create_run(self.experiment_id, run_name=config.name, tags={"blosam.study": config.name})
        self.client.log_param(run.info.run_id, "config", config.source)
        params = {
            "shots": config.shots,
            "seeds": config.seeds,
            "tasks": list(config.tasks),
            "methods": [m.name for m in config.methods],
            "train": config.train,
        }
        for k, v in flatten_params(params).items():
            self.client.log_param(run.info.run_id, k, v[:6000])
        write_json(record, {"run_id": run.info.run_id, "uri": self.uri})
        return run.info.run_id

    def _child(self, cell: Cell) -> str:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`blosam.cell` = '{cell.id}' and tags.`mlflow.parentRunId` = '{self.parent_id}'",
        )
        for run in runs:  # an earlier attempt (failed, or killed before its result was written)
            self.client.delete_run(run.info.run_id)
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "blosam.cell": cell.id,
            "blosam.method": cell.method.name,
            "blosam.task": cell.task,
        }
        return self.client.create_run(self.experiment_id, run_name=cell.id, tags=tags).info.run_id

    def log_cell(self, cell: Cell, result: dict[str, Any], folder: Path) -> None:
        """A finished cell: its params, test metrics (mean over cases), time, and its result files."""
        run_id = self._child(cell)
        params = {
            "task": cell.task,
            "method": cell.method.name,
            "kind": cell.method.kind,
            "shots": cell.shots,
            "seed": cell.seed,
            "options": cell.method.options,
        }
        for k, v in flatten_params(params).items():
            self.client.log_param(run_id, k, v[:6000])
        for name, value in mean_metrics(result, "test").items():
            self.client.log_metric(run_id, name, value)
        self.client.log_metric(run_id, "wall_seconds", float(result["wall_seconds"]))
        self.client.log_metric(run_id, "cpu_seconds", float(result["cpu_seconds"]))
        for f in ("result.json", "train/metrics.json", "train/draw.json"):
            if (folder / f).is_file():
                self.client.log_artifact(run_id, str(folder / f))
        self.client.set_terminated(run_id, "FINISHED")

    def log_failure(self, cell: Cell, error_file: Path) -> None:
        run_id = self._child(cell)
        self.client.log_artifact(run_id, str(error_file))
        self.client.set_terminated(run_id, "FAILED")

    def log_report(self, report: dict[str, Any]) -> None:
        """The report's files as artifacts of the parent run, and the grid's total times as its metrics."""
        for f in report.get("files", []):
            self.client.log_artifact(self.parent_id, str(f), artifact_path="report")
        for k in ("cpu_seconds", "wall_seconds", "cells"):
            if k in report:
                self.client.log_metric(self.parent_id, f"total_{k}", float(report[k]))

    def finish(self, failed: bool = False) -> None:
        self.client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")
