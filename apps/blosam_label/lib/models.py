"""The app's models: one per task, the adapter trained in the app when there is one, else the one that ships.

Files of a task live in ``<app>/model/<task>/``: ``adapter.pt`` (the adapter the app trained last, installed by an
atomic rename when its training finishes), ``train_stats.json`` (progress of the current or last training) and
``runs/<stamp>/`` (each training's bundle outputs). Whichever process writes a new adapter, the server sees it at its
next request: a loaded model is keyed by its file's size and modification time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from blosam_med.data import TaskConfig, load_task
from blosam_med.inference import Predictor, load_adapters, preset_options
from blosam_med.inference.predictor import default_batch_size
from blosam_med.model import EmbeddingCache, default_cache_dir
from blosam_med.model.shipped import shipped_adapters

__all__ = ["LoadedModel", "ModelStore", "model_name", "resolve_device"]

logger = logging.getLogger(__name__)

#: Model names in MONAI Label are ``blosam_<task>`` (``blosam_polyp``).
PREFIX = "blosam_"


def model_name(task: str) -> str:
    """The MONAI Label model (and trainer) name of a task."""
    return f"{PREFIX}{task}"


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; other names as torch reads them.

    Raises:
        ValueError: a device torch does not know, naming it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device '{name}': {err}; use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}': CUDA is not available on this server; use auto or cpu")
    return device


@dataclass(frozen=True)
class LoadedModel:
    """A task's current adapter, loaded: the predictor (``blosam infer``'s) and what identifies the file."""

    task: TaskConfig  # the adapter's stored preset: how inputs are read and windowed
    predictor: Predictor
    adapter: Path
    source: str  # "trained" (in this app) or "shipped" (with the package)
    sha256: str
    signature: tuple[str, int, int]  # (path, mtime_ns, size) of the file when it was read


class ModelStore:
    """Which adapter each task uses now, and its loaded predictor (built once per adapter file).

    Args:
        model_dir: the app's model folder (``<app>/model``).
        presets: per task name, its preset (a name of ``blosam_med/configs`` or a YAML file).
        device: where models run.
    """

    def __init__(self, model_dir: str | Path, presets: dict[str, str], device: torch.device) -> None:
        self.model_dir = Path(model_dir)
        self.presets = dict(presets)
        self.device = device
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def task_dir(self, task: str) -> Path:
        """``<app>/model/<task>``: the task's trained adapter, training status and runs."""
        return self.model_dir / task

    def trained_adapter(self, task: str) -> Path:
        """Where the adapter trained in the app is installed (it may not exist yet)."""
        return self.task_dir(task) / "adapter.pt"

    def current_adapter(self, task: str) -> tuple[Path, str] | None:
        """(file, source) of the adapter that serves ``task`` now: the trained one, else the shipped one, else none."""
        trained = self.trained_adapter(task)
        if trained.is_file():
            return trained, "trained"
        shipped = shipped_adapters().get(task)
        return (shipped, "shipped") if shipped is not None else None

    def preset(self, task: str) -> TaskConfig:
        """The task's preset as configured (before any adapter is trained)."""
        return load_task(self.presets[task])

    def load(self, task: str) -> LoadedModel:
        """The task's current adapter, loaded; reloaded when its file changed since the last call.

        Raises:
            ValueError: the task has no adapter yet (none ships and none was trained), or the file is not a usable
                adapter (the message names it).
        """
        current = self.current_adapter(task)
        if current is None:
            raise ValueError(
                f"task '{task}' has no adapter yet: none ships with blosam_med and none was trained here; label two "
                f"or more images and run training of {model_name(task)}"
            )
        path, source = current
        with self._lock:
            stat = path.stat()
            signature = (str(path), stat.st_mtime_ns, stat.st_size)
            loaded = self._loaded.get(task)
            if loaded is not None and loaded.signature == signature:
                return loaded
            models, preset, presets = load_adapters([path])
            batch = default_batch_size(self.device)
            cache = EmbeddingCache(
                models[0].backbone, default_cache_dir(), self.device, batch, progress=False, engine="auto"
            )
            predictor = Predictor(models, cache, device=self.device, batch_size=batch, **preset_options(presets))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            loaded = LoadedModel(preset, predictor, path, source, digest, signature)
            self._loaded[task] = loaded
            logger.info("%s: serving the %s adapter %s (sha256 %s)", model_name(task), source, path, digest[:12])
            return loaded
