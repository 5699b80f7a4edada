"""Training a task's adapter from the datastore's labels, through ``blosam train``'s path, and installing it."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from blosam_med.data import load_pair
from blosam_med.io import atomic_write, write_json
from blosam_med.tracking import sqlite_uri
from blosam_med.workflow import (
    bundle_value,
    cross_fit_folds,
    encoder_tail_training,
    run_cross_fit,
    run_training,
    training_configs,
)
from lib.models import ModelStore, model_name, resolve_device
from lib.trainers.progress import TrainProgress, TrainStats

__all__ = ["BlosamTrain", "MIN_LABELS", "REQUEST_KEYS"]

logger = logging.getLogger(__name__)

#: Labelled images a training needs: BLO-SAM splits them into two disjoint subsets (A and B).
MIN_LABELS = 2

#: Train request keys the app reads (others MONAI Label adds are ignored), with their types. ``iterations``,
#: ``views``, ``seed``, ``lr``, ``batch_size``, ``method`` and ``shots`` are the bundle ids of the same names;
#: ``cross_fit`` is ``blosam train --cross-fit``.
REQUEST_KEYS: dict[str, type] = {
    "method": str,
    "iterations": int,
    "views": int,
    "seed": int,
    "lr": float,
    "batch_size": int,
    "shots": int,
    "cross_fit": int,
    "device": str,
    "tracking": bool,
}


def _typed(key: str, value: Any) -> Any:
    kind = REQUEST_KEYS[key]
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    else:
        try:
            typed = kind(value)
        except (TypeError, ValueError):
            typed = None
        if typed is not None and (kind is not int or float(value) == typed) and not isinstance(value, bool):
            return typed
    raise ValueError(f"train option '{key}': {value!r} is not a {kind.__name__}")


class BlosamTrain(TrainTask):
    """Trains one task's adapter on every image with a final label, as ``blosam train`` does: the bundle's
    ``train.yaml`` with the task preset (and ``encoder_tail.yaml`` where the preset asks for it), the default method (BLO-SAM, 2-fold A/B cross-fit), MLflow tracking in
    ``<app>/model/mlruns.db``. Every labelled image is a shot (volumes: the preset's number of annotated slices,
    or ``shots``). The finished adapter replaces the task's model at once (the server reloads it at its next
    request). Progress and validation Dice go to ``<app>/model/<task>/train_stats.json`` (:meth:`stats`).
    """

    def __init__(self, store: ModelStore, task: str) -> None:
        super().__init__(f"Train the {task} adapter of blosam_med on the datastore's labelled images (2 or more)")
        self.store, self.task = store, task
        # the preset's encoder-tail variant (teeth: the neck trained too), as blosam train runs it
        self.tail_configs, self.tail_overrides = encoder_tail_training(store.presets[task])
        self.configs = training_configs(store.presets[task], extra_configs=self.tail_configs)
        preset = store.preset(task)
        self._config: dict[str, Any] = {
            "method": ["blosam", "single"],
            "iterations": int(bundle_value(self.configs, "iterations", {})),
            "views": int(bundle_value(self.configs, "views", {})),
            "seed": 0,
            "device": ["auto", "cpu", "cuda"],
        }
        if preset.spatial_dims == 3:
            self._config["shots"] = preset.shots
        self.train_stats = TrainStats(store.task_dir(task) / "train_stats.json")

    def config(self) -> dict[str, Any]:
        return self._config

    def stats(self) -> dict[str, Any]:
        return self.train_stats.read()

    def options(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request's train options, typed (unknown keys are MONAI Label's own and ignored).

        Raises:
            ValueError: a value of the wrong type, naming the option.
        """
        options = {k: _typed(k, v) for k, v in request.items() if k in REQUEST_KEYS and v is not None}
        for key in ("iterations", "batch_size", "shots", "cross_fit"):
            if key in options and options[key] < 1:
                raise ValueError(f"train option '{key}': {options[key]}; give 1 or more")
        if options.get("views", 0) < 0:
            raise ValueError(f"train option 'views': {options['views']}; give 0 or more")
        return options

    def labelled(self, datastore: Datastore) -> list[tuple[str, str, str]]:
        """(image id, image file, label file) of every image with a final label.

        Raises:
            ValueError: fewer than :data:`MIN_LABELS`, or labels the task cannot train on (all problems listed).
        """
        ids = sorted(datastore.get_labeled_images(label_tag=DefaultLabelTag.FINAL))
        if len(ids) < MIN_LABELS:
            raise ValueError(
                f"training {model_name(self.task)} needs {MIN_LABELS} or more labelled images; the datastore has "
                f"{len(ids)} ({', '.join(ids) or 'none'}): label more images (save them as final) and train again"
            )
        pairs = [(i, datastore.get_image_uri(i), datastore.get_label_uri(i, DefaultLabelTag.FINAL)) for i in ids]
        preset, problems = self.store.preset(self.task), []
        for image_id, image, label in pairs:
            try:
                pair = load_pair(image, label, preset, check_labels=True)
            except (ValueError, OSError) as err:
                problems.append(f"image '{image_id}': {err}")
                continue
            if not pair["label"].any():
                problems.append(f"image '{image_id}': its label {label} has no {preset.label_name} (all background)")
        if problems:
            raise ValueError(f"training {model_name(self.task)} refused: " + "; ".join(problems))
        return pairs

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.time()
        name = model_name(self.task)
        self.train_stats.reset(model=name, task=self.task, state="STARTING", progress=0.0, epoch=0, total_epochs=1)
        try:
            result = self._train(request, datastore, start)
        except Exception as err:
            self.train_stats.update(state="FAILED", message=str(err), total_time=round(time.time() - start, 1))
            logger.error("%s: training failed: %s", name, err)
            raise
        logger.info("%s: training finished: %s", name, json.dumps(result))
        return result

    def _train(self, request: dict[str, Any], datastore: Datastore, start: float) -> dict[str, Any]:
        options = self.options(request)
        pairs = self.labelled(datastore)
        device = resolve_device(options.pop("device", "auto"))
        tracking = options.pop("tracking", True)
        overrides: dict[str, Any] = {**self.tail_overrides, **{k: v for k, v in options.items() if k != "cross_fit"}}
        if self.store.preset(self.task).spatial_dims == 2:
            overrides["shots"] = len(pairs)  # every labelled image is a shot
        method = str(bundle_value(self.configs, "method", overrides))
        folds = cross_fit_folds(method, options.get("cross_fit"))
        checked = "subset B" if method == "blosam" else "the shots"  # what the bundle validates on

        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(start))
        run_dir = self.store.task_dir(self.task) / "runs" / stamp
        run_dir.mkdir(parents=True, exist_ok=False)
        entries = []
        for image_id, image, label in pairs:  # the labels as they were: later edits do not change this run
            ending = ".nii.gz" if label.lower().endswith(".nii.gz") else Path(label).suffix
            copy = run_dir / "labels" / f"{image_id}{ending}"
            copy.parent.mkdir(exist_ok=True)
            shutil.copy2(label, copy)
            entries.append({"image": str(Path(image).resolve()), "label": str(copy.resolve())})
        datalist = write_json(run_dir / "datalist.json", {"training": entries})

        handlers = list(bundle_value(self.configs, "train#handlers", {}))
        handlers.append(
            {
                "_target_": f"{TrainProgress.__module__}.{TrainProgress.__qualname__}",
                "stats_file": str(self.train_stats.path),
                "validator": "@validate#evaluator",
                "fold": "@ab_fold",
                "folds": folds,
                "max_epochs": "@max_epochs",
                "epoch_length": "@epoch_length",
            }
        )
        out = run_dir / "train"
        overrides.update(
            {
                "dataset_dir": str(run_dir),
                "datalist_file": str(datalist),
                "output_dir": str(out),
                "device": f"$torch.device('{device}')",
                "run_name": f"{self.task}_{stamp}",
                "tracking_uri": sqlite_uri(self.store.model_dir),
                "train#handlers": handlers,
            }
        )
        self.train_stats.update(
            state="RUNNING", folds=folds, validated_on=checked, images=[p[0] for p in pairs], run=str(run_dir)
        )
        logger.info(
            "%s: training on %d labelled images, %d fold(s), run folder %s",
            model_name(self.task),
            len(pairs),
            folds,
            run_dir,
        )
        tracker = "mlflow" if tracking else None
        if folds > 1:
            run_cross_fit(
                self.store.presets[self.task], overrides, folds, tracking=tracker, extra_configs=self.tail_configs
            )
        else:
            run_training(self.store.presets[self.task], overrides, tracking=tracker, extra_configs=self.tail_configs)

        metrics = json.loads((out / "metrics.json").read_text())
        dice = float(metrics["validation"]["val_dice"])
        installed = atomic_write(
            self.store.trained_adapter(self.task), lambda tmp: shutil.copyfile(out / "adapter.pt", tmp), overwrite=True
        )
        self.train_stats.update(
            state="DONE",
            progress=1.0,
            epoch=self.train_stats.read().get("total_epochs", 1),  # every epoch of every fold completed
            best_metric=dice,
            adapter=str(installed),
            total_time=round(time.time() - start, 1),
            message=f"validation Dice on {checked} {dice:.4f}{' (mean over folds)' if folds > 1 else ''}; "
            f"{installed} now serves {model_name(self.task)}",
        )
        return {
            "model": model_name(self.task),
            "adapter": str(installed),
            "run": str(run_dir),
            "validation_dice": dice,
            "folds": folds,
            "images": [p[0] for p in pairs],
            "seconds": round(time.time() - start, 1),
        }
