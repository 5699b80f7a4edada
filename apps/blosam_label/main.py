"""MONAI Label app of blosam_med: prompt-free few-shot segmentation, trained from the labels made in the viewer.

    monailabel start_server --app apps/blosam_label --studies <folder of images or volumes>

Models ``blosam_<task>`` (one per shipped task: polyp, lung_xray, teeth, lung_ct) segment without clicks or boxes;
training ``blosam_<task>`` on the datastore's labelled images makes a new adapter that replaces the task's model as
soon as it finishes. Next sample: ``least_confident`` (the current adapter's probability map) or ``random``.

App options (``--conf KEY VALUE``): ``tasks``: comma-separated task presets (names or YAML files; default: every
task with a shipped adapter; a preset without one gets its model once trained here); ``device``: ``auto`` (default),
``cpu`` or ``cuda``. See docs/monailabel.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lib.activelearning import LeastConfident
from lib.datastore import CheckedDatastore
from lib.infers import BlosamInfer
from lib.models import ModelStore, model_name, resolve_device
from lib.trainers import BlosamTrain
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.random import Random

import blosam_med
from blosam_med.data import load_task
from blosam_med.model.shipped import shipped_adapters

logger = logging.getLogger(__name__)


def app_presets(conf: dict[str, str]) -> dict[str, str]:
    """``{task name: preset}`` from ``--conf tasks a,b.yaml`` (default: every task with a shipped adapter).

    Raises:
        ValueError: a preset that cannot be read, or none at all, naming it.
    """
    given = [p.strip() for p in conf.get("tasks", "").split(",") if p.strip()] or sorted(shipped_adapters())
    if not given:
        raise ValueError("no tasks: this blosam_med ships no adapters; start the app with --conf tasks <preset,...>")
    return {load_task(p).name: p for p in given}


class MyApp(MONAILabelApp):
    """blosam_med's models, trainers and next-sample strategies over a local datastore that checks labels."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        presets = app_presets(conf or {})
        self.tasks = list(presets)
        self.store = ModelStore(Path(app_dir) / "model", presets, resolve_device(conf.get("device", "auto")))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="blosam_med",
            description="Prompt-free few-shot segmentation (BLO-SAM on LiteMedSAM): infer, train from your labels, "
            "next sample",
            version=blosam_med.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        logger.info("Init Datastore for: %s (labels checked before they are saved)", self.studies)
        return CheckedDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {model_name(t): BlosamInfer(self.store, t) for t in self.tasks}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {model_name(t): BlosamTrain(self.store, t) for t in self.tasks}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"least_confident": LeastConfident(self.store, self.tasks), "random": Random()}

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["blosam_med"] = {
            model_name(t): {"adapter": str(c[0]), "source": c[1]} if (c := self.store.current_adapter(t)) else None
            for t in self.tasks
        }
        return meta
