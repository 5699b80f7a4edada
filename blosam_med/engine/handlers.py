"""Handlers that record a training run: the adapter, the draw and the figures, in the output folder and MLflow."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver, MLFlowHandler

from blosam_med.io import OutputExistsError, atomic_write
from blosam_med.model.blosam import BloSam
from blosam_med.model.checkpoint import safe_load, save_adapter

__all__ = [
    "RunRecorder",
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
    loader = CheckpointLoader(load_path=path, load_dict=saver.save_dict, map_location="cpu")
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


def _mlflow_run(engine: Engine) -> tuple[Any, str] | None:
    """The (client, run id) of an MLFlowHandler attached to ``engine`` (``--tracking mlflow``), if any."""
    for handlers in engine._event_handlers.values():
        for func, *_ in handlers:
            owner = getattr(func, "__self__", None)
            if isinstance(owner, MLFlowHandler) and owner.cur_run is not None:
                return owner.client, owner.cur_run.info.run_id
    return None


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
        extra: more metadata stored in the adapter (task preset...).
    """

    def __init__(
        self,
        network: BloSam,
        output_dir: str | Path,
        draw: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        validator: Engine | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.network, self.output_dir = network, Path(output_dir)
        self.draw, self.params = dict(draw), dict(params or {})
        self.validator, self.extra = validator, dict(extra or {})
        self._started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED(once=1), self.log_inputs)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self._started = time.perf_counter()
        if self.params:
            logger.info("run params: %s", json.dumps(self.params, default=str))

    def log_inputs(self, engine: Engine) -> None:
        run = _mlflow_run(engine)
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
        last = engine.state.output[0]["loss"] if isinstance(engine.state.output, list) else {}
        metrics = {
            "iterations": engine.state.iteration,
            "epochs": engine.state.epoch,
            "train_seconds": round(time.perf_counter() - self._started, 2),
            "final_loss": last,
            "validation": {k: float(v) for k, v in (self.validator.state.metrics if self.validator else {}).items()},
            "draw": self.draw,
            "params": self.params,
        }
        adapter = save_adapter(
            self.network,
            out / "adapter.pt",
            overwrite=True,
            extra={**self.extra, "draw": self.draw, "params": self.params},
        )
        atomic_write(
            out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=1, default=str)), overwrite=True
        )
        logger.info("wrote %s and %s", adapter, out / "metrics.json")
        run = _mlflow_run(engine)
        if run is not None:
            client, run_id = run
            client.log_artifact(run_id, str(adapter))
            client.log_artifact(run_id, str(out / "metrics.json"))
