"""Training status for MONAI Label: a JSON file the training process writes and the server's ``train_stats`` reads.

Its keys include those 3D Slicer's MONAI Label module shows (``epoch`` / ``total_epochs`` on the training bar,
``best_metric`` on the accuracy bar, ``total_time`` once finished), plus ``state``, ``progress`` (0-1), the fold of a
cross-fit, and ``validation``: the validation Dice of every epoch (on subset B for BLO-SAM, on the shots for
single-level training).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from blosam_med.io import write_json

__all__ = ["TrainStats", "TrainProgress"]

logger = logging.getLogger(__name__)


class TrainStats:
    """Reads and writes one task's ``train_stats.json`` (each write replaces the file atomically)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        """The last status written, or ``{}`` (none yet, or unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def reset(self, **values: Any) -> dict[str, Any]:
        """Start a new status with ``values`` (nothing of the previous training is kept)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, values, overwrite=True)
        return values

    def update(self, **values: Any) -> dict[str, Any]:
        """The current status with ``values`` changed."""
        data = {**self.read(), **values}
        write_json(self.path, data, overwrite=True)
        return data


class TrainProgress:
    """An ignite handler of one training run (one fold of a cross-fit) that records progress and validation Dice.

    Attach it after the bundle's ``ValidationHandler`` (the app appends it to ``train#handlers``), so each epoch's
    validation has run when it reads the validator's key metric.

    Args:
        stats_file: the task's ``train_stats.json``.
        validator: the bundle's ``validate#evaluator``.
        fold: this run's fold (the bundle's ``ab_fold``) and ``folds`` the number of runs of the training.
        max_epochs: epochs of one run (the bundle's ``max_epochs``) and ``epoch_length`` its iterations per epoch.
        every: write the iteration count every this many iterations.
    """

    def __init__(
        self,
        stats_file: str | Path,
        validator: Engine,
        fold: int,
        folds: int,
        max_epochs: int,
        epoch_length: int,
        every: int = 5,
    ) -> None:
        self.stats = TrainStats(stats_file)
        self.validator = validator
        self.fold, self.folds = int(fold), int(folds)
        self.max_epochs, self.epoch_length, self.every = int(max_epochs), int(epoch_length), every

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _position(self, engine: Engine) -> dict[str, Any]:
        per_run = self.max_epochs * self.epoch_length
        done = self.fold * per_run + engine.state.iteration
        return {
            "fold": self.fold,
            "folds": self.folds,
            "iteration": done,
            "total_iterations": per_run * self.folds,
            "progress": round(done / (per_run * self.folds), 4),
            "epoch": self.fold * self.max_epochs + engine.state.epoch - 1,  # epochs completed so far
            "total_epochs": self.max_epochs * self.folds,
        }

    def iteration_completed(self, engine: Engine) -> None:
        self.stats.update(**self._position(engine))

    def epoch_completed(self, engine: Engine) -> None:
        name = getattr(self.validator.state, "key_metric_name", None) or "val_dice"
        dice = float(self.validator.state.metrics[name])
        status = self.stats.read()
        history = [*status.get("validation", []), {"fold": self.fold, "epoch": engine.state.epoch, "dice": dice}]
        best = max(h["dice"] for h in history)
        position = {**self._position(engine), "epoch": self.fold * self.max_epochs + engine.state.epoch}
        self.stats.update(**position, validation=history, best_metric=best)
        logger.info(
            "fold %d/%d epoch %d/%d (%.0f%%): validation Dice %.4f (best so far %.4f)",
            self.fold + 1,
            self.folds,
            engine.state.epoch,
            self.max_epochs,
            100 * position["progress"],
            dice,
            best,
        )
