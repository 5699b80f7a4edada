"""Handlers that record a training run: the adapter, the draw and the figures, in the output folder and MLflow."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from blosam_med.io import OutputExistsError, write_json
from blosam_med.model.blosam import BloSam
from blosam_med.model.checkpoint import safe_load, save_adapter
from blosam_med.tracking import find_run, flatten_params

__all__ = [
    "RunRecorder",
    "KeepBestState",
    "attach_checkpoint_pruning",
    "attach_resume",
    "check_output_dir",
    "latest_checkpoint",
    "flatten_params",
]

logger = logging.getLogger(__name__)


CHECKPOINT_GLOB = "checkpoint_epoch=*.pt"


def check_output_dir(output_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Refuse to start a run whose folder already holds a finished adapter, unless resuming or overwriting; say so
    when a fresh run starts in a folder with the checkpoints of an earlier one."""
    out = Path(output_dir)
    if (out / "adapter.pt").exists() and not (resume or overwrite):
        raise OutputExistsError(
            f"{out / 'adapter.pt'}: a finished run is already there; choose another output "
            "folder, or pass --resume / --overwrite"
        )
    earlier = sorted((out / "checkpoints").glob(CHECKPOINT_GLOB)) if not resume else []
    if earlier:
        logger.warning(
            "%s: checkpoints of an earlier run (%s); this run starts fresh without --resume and replaces them after "
            "its first epoch. To continue the earlier run instead, stop and run the same command with --resume",
            out / "checkpoints",
            ", ".join(p.name for p in earlier),
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def latest_checkpoint(folder: str | Path) -> str:
    """The newest ``*.pt`` in a CheckpointSaver folder."""
    files = sorted(Path(folder).glob("*.pt"), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        raise FileNotFoundError(f"{folder}: no training checkpoint to resume from; start without --resume")
    return str(files[-1])


def _check_checkpoint(path: str, keys: Mapping[str, Any]) -> None:
    """Refuse a truncated or foreign checkpoint before training starts, naming the file."""
    advice = "start without --resume (or with --overwrite) to train from the beginning"
    state = safe_load(path, "training checkpoint", advice)
    missing = sorted(set(keys) - set(state)) if isinstance(state, dict) else sorted(keys)
    if missing:
        raise ValueError(f"{path}: not a training checkpoint of this run (no {', '.join(missing)}); {advice}")


def attach_resume(trainer: Engine, saver: CheckpointSaver) -> CheckpointLoader:
    """Load the newest checkpoint ``saver`` wrote (trainer state, trained tensors, optimizer, scheduler) when
    ``trainer`` starts, so the run continues where it stopped.

    Raises:
        FileNotFoundError: no checkpoint in the folder.
        ValueError: the newest checkpoint is truncated or not a training checkpoint (named).
    """
    folder = saver.save_dir
    path = latest_checkpoint(folder)
    _check_checkpoint(path, saver.save_dict)
    loader = CheckpointLoader(
        load_path=path,
        load_dict=saver.save_dict,
        map_location="cpu",  # type: ignore[arg-type]  # torch.load accepts a device string
    )
    loader.attach(trainer)
    logger.info("resuming from %s", loader.load_path)
    return loader


def attach_checkpoint_pruning(trainer: Engine, saver: CheckpointSaver) -> None:
    """After each checkpoint, remove the older ``checkpoint_epoch=*.pt`` files of the folder (an interrupted or
    earlier run leaves its own, which ``CheckpointSaver`` does not know), so a later ``--resume`` finds this run's.
    Attach after ``saver``."""

    def prune(engine: Engine) -> None:
        folder = Path(saver.save_dir)
        keep = folder / CHECKPOINT_GLOB.replace("*", str(engine.state.epoch))
        if not keep.is_file():
            return
        for stale in folder.glob(CHECKPOINT_GLOB):
            if stale != keep:
                stale.unlink(missing_ok=True)
                logger.info("%s: removed (a newer checkpoint, %s, was written)", stale, keep.name)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, prune)


class RunRecorder:
    """Writes what a run produced and logs it to the engine's MLflow run when tracking is on.

    At the first epoch: the params and the A/B draw (``draw.json``). At completion: ``adapter.pt`` and
    ``metrics.json`` (final losses, validation metrics, wall time), also logged as MLflow artifacts.

    Args:
        network: the model being trained.
        output_dir: the run's folder.
        draw: the k-shot draw and A/B split (JSON-able).
        params: hyper-parameters to log (nested dicts are flattened).
        validator: the evaluator whose final metrics go into ``metrics.json``.
        selection: the run's :class:`KeepBestState`; its kept round and the key metric of every round go into
            ``metrics.json`` as ``selected`` (bi-level runs: which epoch's tensors the adapter holds).
        extra: more metadata stored in the adapter (task preset...).
        tracking_uri: where MONAI's ``MLFlowHandler`` tracks this run (the bundle's id of the same name); the
            recorder logs into that run while it is ``RUNNING``, found through MLflow's search API, and logs nothing
            when tracking is off.
        experiment_name: the run's experiment (the bundle's id of the same name).
        run_name: the run's name (the bundle's id of the same name).
    """

    def __init__(
        self,
        network: BloSam,
        output_dir: str | Path,
        draw: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        validator: Engine | None = None,
        selection: KeepBestState | None = None,
        extra: Mapping[str, Any] | None = None,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
    ) -> None:
        self.network, self.output_dir = network, Path(output_dir)
        self.draw, self.params = dict(draw), dict(params or {})
        self.validator, self.selection, self.extra = validator, selection, dict(extra or {})
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self._started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED(once=1), self.log_inputs)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self._started = time.perf_counter()
        if self.params:
            logger.info("run params: %s", json.dumps(self.params, default=str))

    def mlflow_run(self) -> tuple[Any, str] | None:
        """(client, run id) of this run's MLflow run while it is tracked (``RUNNING``), else ``None``."""
        if not (self.tracking_uri and self.experiment_name and self.run_name):
            return None
        run = find_run(self.tracking_uri, self.experiment_name, self.run_name, status="RUNNING")
        if run is None:
            return None
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri), run.info.run_id

    def log_inputs(self, engine: Engine) -> None:
        run = self.mlflow_run()
        if run is not None:
            client, run_id = run
            params = flatten_params(self.params)
            existing = client.get_run(run_id).data.params
            for k, v in params.items():
                if k not in existing:  # a resumed run keeps its params
                    client.log_param(run_id, k, v[:6000])
            client.log_dict(run_id, self.draw, "draw.json")

    def completed(self, engine: Engine) -> None:
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        last: dict[str, float] = engine.state.output[0]["loss"] if isinstance(engine.state.output, list) else {}
        metrics = {
            "iterations": engine.state.iteration,
            "epochs": engine.state.epoch,
            "train_seconds": round(time.perf_counter() - self._started, 2),
            "final_loss": last,
            "validation": {k: float(v) for k, v in (self.validator.state.metrics if self.validator else {}).items()},
            "draw": self.draw,
            "params": self.params,
        }
        selected = self.selection.summary() if self.selection is not None else None
        if selected is not None:
            metrics["selected"] = selected
            if selected.get("metrics"):  # the adapter holds the kept round's tensors: report that round's metrics
                metrics["validation_last"], metrics["validation"] = metrics["validation"], selected["metrics"]
        adapter = save_adapter(
            self.network,
            out / "adapter.pt",
            overwrite=True,
            extra={**self.extra, "draw": self.draw, "params": self.params},
        )
        write_json(out / "metrics.json", metrics, overwrite=True)
        logger.info("wrote %s and %s", adapter, out / "metrics.json")
        run = self.mlflow_run()
        if run is not None:
            client, run_id = run
            client.log_artifact(run_id, str(adapter))
            client.log_artifact(run_id, str(out / "metrics.json"))


class KeepBestState:
    """Selection on the validation data (BLO-SAM's choice of the epoch with the best Dice on subset B): after every
    validation round the trained tensors of the best round so far are kept, and when training completes they are put
    back into ``network``, so the adapter written at completion is the selected one. A later round that ties the best
    replaces it. Attach it before :class:`RunRecorder`. Its ``state_dict`` goes into training checkpoints, so a
    resumed run keeps the selection made before the interruption.

    Args:
        network: the model being trained.
        validator: the evaluator run by ``ValidationHandler``; its key metric decides.
        enabled: ``False`` makes the handler a no-op (the last iteration's tensors are kept), so configs can switch it.
    """

    def __init__(self, network: BloSam, validator: Engine, enabled: bool = True) -> None:
        self.network, self.validator, self.enabled = network, validator, enabled
        self.best_metric = -float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.best_metrics: dict[str, float] = {}  # every validation metric of the kept round
        self.rounds: list[tuple[int, float]] = []  # (trainer epoch, key metric) of every validation round
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self._trainer = engine
        self.validator.add_event_handler(Events.COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.restore)

    def record(self, validator: Engine) -> None:
        name = validator.state.key_metric_name  # type: ignore[attr-defined]
        value = float(validator.state.metrics[name])
        epoch = self._trainer.state.epoch if self._trainer is not None else 0
        self.rounds.append((epoch, value))
        if value >= self.best_metric:
            self.best_metric, self.best_state, self.best_epoch = value, self.network.trainable_state_dict(), epoch
            self.best_metrics = {k: float(v) for k, v in validator.state.metrics.items()}

    def restore(self, engine: Engine) -> None:
        if self.best_state is not None:
            self.network.load_trainable_state_dict(self.best_state, "best validation state")
            logger.info("kept the trained tensors of epoch %d (validation %.4f)", self.best_epoch, self.best_metric)

    def summary(self) -> dict[str, Any] | None:
        """The kept round, its validation metrics and every round's key metric, for ``metrics.json``; ``None`` when
        nothing was selected."""
        if not self.enabled or self.best_state is None:
            return None
        return {
            "epoch": self.best_epoch,
            "value": self.best_metric,
            "metrics": dict(self.best_metrics),
            "rounds": [list(r) for r in self.rounds],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state or {},
            "best_metrics": dict(self.best_metrics),
            "rounds": [list(r) for r in self.rounds],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        self.best_state = dict(state["best_state"]) or None
        self.best_metrics = {k: float(v) for k, v in state.get("best_metrics", {}).items()}  # none before 0.14.0
        self.rounds = [
            (int(e), float(v)) for e, v in state.get("rounds", [])
        ]  # checkpoints of bundles before 0.11.0 have none
