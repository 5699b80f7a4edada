"""Task presets: what the structure is, how its images are windowed, how volumes are sliced.

A preset is a YAML file whose top-level ``task:`` mapping holds the fields of :class:`TaskConfig`; other top-level
keys are left to the MONAI bundle it is merged into (``@task#window`` and so on).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from blosam_med.data.windowing import WINDOW_NAMES, WINDOW_PRESETS, WindowIntensity

__all__ = ["TaskConfig", "load_task", "task_preset_path", "preset_names", "PRESET_DIR", "AXES", "FLIPS"]

#: Presets shipped with the package: ``configs/<name>.yaml`` at the repository top (``blosam_med/configs`` links to it).
PRESET_DIR = Path(str(resources.files("blosam_med") / "configs"))

#: Slicing axis name -> index of the spatial axis of a RAS-oriented (x, y, z) volume.
AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}

NONZERO = "nonzero"

#: Task preset keys that act at inference only: they change predictions without retraining (a trained adapter's
#: stored preset may take new values; a study may rescore its cells).
INFERENCE_KEYS = (
    "keep_components",
    "fill_holes",
    "flips",
    "refine_boxes",
    "refine_gate",
    "threshold",
    "empty_below",
)

#: Test-time flips a task preset may ask for, and the image dimensions each reverses.
FLIPS: dict[str, tuple[int, ...]] = {"h": (-1,), "v": (-2,)}


@dataclass(frozen=True)
class TaskConfig:
    """One binary segmentation task.

    Args:
        name: preset name (``lung_xray``, ``lung_ct``, ``polyp``, ``teeth``, or your own).
        modality: ``xray``, ``ct``, ``endoscopy``, ``dental_xray``, ... (recorded, not acted on).
        window: intensity window (see :class:`blosam_med.data.WindowIntensity`): a CT preset, ``custom`` with
            ``width``/``level``, ``percentile``, ``rgb``, ``minmax`` or ``none``.
        width: window width for ``custom`` (or to override a preset), in image units (HU for CT).
        level: window level for ``custom``.
        channels: 1 (grey) or 3 (RGB) channels given to the encoder; other inputs are converted.
        label_name: what the foreground is (``lungs``, ``polyp``, ``teeth``).
        label_values: mask values counted as foreground, e.g. ``[1]`` to take label 1 of a label map;
            ``"nonzero"`` (or an empty list) counts every non-zero value.
        shots: default number of training shots.
        spatial_dims: 2 for images, 3 for volumes (trained and predicted slice by slice).
        axis: slicing axis for volumes: ``axial`` (default), ``coronal`` or ``sagittal``.
        foreground_only: training uses only slices that contain the structure.
        every_n: training keeps every n-th slice of a volume.
        shot_unit: for volumes, a shot is one annotated ``slice`` or a whole volume (``case``).
        keep_components: predicted masks keep only their ``n`` largest connected components (``0``: all), per 2D
            image or slice; chosen per task on the evaluation pool (``docs/results.md``, post-processing).
        fill_holes: predicted masks get their enclosed holes filled.
        flips: test-time flips: each (``"h"`` left-right, ``"v"`` up-down) adds a prediction of the flipped image,
            flipped back and averaged with the others as probabilities (one more encoder pass each); chosen per task
            on the evaluation pool (``docs/results.md``, test-time flips; ``scripts/screen_tta.py`` at commit 3a26d00).
        refine_boxes: box refinement (:class:`blosam_med.inference.refine.BoxRefiner`): the ``n`` largest connected
            components of the predicted mask each give a box prompt to the backbone's pretrained decoder, whose
            mask replaces the prediction if it agrees with it (Dice >= ``refine_gate``); ``0`` (default): off.
            Chosen per task on the evaluation pool (``docs/results.md``, box refinement; ``scripts/screen_refine.py`` at
            commit 3a26d00).
        refine_gate: the agreement box refinement needs, a Dice in [0, 1].
        threshold: the probability (after the flips are averaged) above which a pixel is foreground, in (0, 1);
            predicted logits are shifted by its logit, so masks, box refinement and saved probability maps all
            decide at 0.5 of the shifted value. Chosen per task on the evaluation pool (``docs/results.md``, decision
            threshold); default 0.5.
        empty_below: volumes, opt-in: a slice whose every voxel is below this intensity (image units, HU for CT;
            e.g. ``-900``: air only, outside the body) is predicted empty (probability 0) without running the encoder
            or decoder. Needs a fixed window (a CT preset or ``custom``) whose range holds the value; it is checked
            on the windowed slice. Set it only for an adapter that predicts nothing on such slices, or masks change
            (``docs/speed.md``, empty slices). ``None`` (default): every slice is predicted.
        description: free text.
    """

    name: str
    modality: str = "xray"
    window: str = "percentile"
    width: float | None = None
    level: float | None = None
    channels: int = 1
    label_name: str = "foreground"
    label_values: tuple[int, ...] | str = NONZERO
    shots: int = 4
    spatial_dims: int = 2
    axis: str = "axial"
    foreground_only: bool = True
    every_n: int = 1
    shot_unit: str = "slice"
    keep_components: int = 0
    fill_holes: bool = False
    flips: tuple[str, ...] = ()
    refine_boxes: int = 0
    refine_gate: float = 0.6
    threshold: float = 0.5
    empty_below: float | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = f"task '{self.name}'"
        if self.channels not in (1, 3):
            raise ValueError(f"{where}: channels must be 1 or 3, got {self.channels}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"{where}: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.axis not in AXES:
            raise ValueError(f"{where}: axis must be one of {', '.join(AXES)}, got '{self.axis}'")
        if self.window not in WINDOW_NAMES:
            raise ValueError(f"{where}: window must be one of {', '.join(WINDOW_NAMES)}, got '{self.window}'")
        if self.window == "custom" and (self.width is None or self.level is None):
            raise ValueError(f"{where}: window 'custom' needs width and level")
        if self.shot_unit not in ("slice", "case"):
            raise ValueError(f"{where}: shot_unit must be 'slice' or 'case', got '{self.shot_unit}'")
        if int(self.keep_components) < 0:
            raise ValueError(f"{where}: keep_components must be >= 0 (0 keeps all), got {self.keep_components}")
        if int(self.refine_boxes) < 0 or not 0.0 <= float(self.refine_gate) <= 1.0:
            raise ValueError(
                f"{where}: refine_boxes must be >= 0 (0: off) and refine_gate a Dice in [0, 1], "
                f"got {self.refine_boxes} and {self.refine_gate}"
            )
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"{where}: threshold must be a probability strictly between 0 and 1, got {self.threshold}")
        if int(self.shots) < 1 or int(self.every_n) < 1:
            raise ValueError(f"{where}: shots and every_n must be >= 1, got {self.shots}, {self.every_n}")
        flips = (self.flips,) if isinstance(self.flips, str) else tuple(self.flips or ())
        bad = [f for f in flips if f not in FLIPS]
        if bad or len(set(flips)) != len(flips):
            raise ValueError(f"{where}: flips must be distinct names among {list(FLIPS)}, got {list(flips)}")
        object.__setattr__(self, "flips", flips)
        if self.empty_below is not None:
            self._check_empty_below(where, float(self.empty_below))
        values = self.label_values
        if values is None or (isinstance(values, str) and values.lower() == NONZERO):
            values = NONZERO
        elif isinstance(values, str):
            raise ValueError(f"{where}: label_values must be a list of integers or 'nonzero', got '{values}'")
        else:
            values = tuple(int(v) for v in values) or NONZERO
            if values != NONZERO and 0 in values:
                raise ValueError(f"{where}: label_values lists foreground values; 0 is background")
        object.__setattr__(self, "label_values", values)

    def _check_empty_below(self, where: str, value: float) -> None:
        if self.spatial_dims != 3:
            raise ValueError(f"{where}: empty_below skips slices of volumes; it needs spatial_dims 3")
        if self.window not in (*WINDOW_PRESETS, "custom"):
            raise ValueError(
                f"{where}: empty_below needs a fixed window (a CT preset or custom), got window '{self.window}'"
            )
        low, high = WindowIntensity(self.window, self.width, self.level).range
        if not low < value <= high:
            raise ValueError(
                f"{where}: empty_below {value:g} is outside the window's range ({low:g}, {high:g}]; "
                "choose a value inside it, or a window that holds it"
            )

    @property
    def empty_level(self) -> float | None:
        """``empty_below`` on the windowed [0, 1] scale (windowed exactly as the images are), or ``None``.

        A windowed slice whose maximum is below this level has every voxel below ``empty_below``.
        """
        if self.empty_below is None:
            return None
        window = WindowIntensity(self.window, self.width, self.level)
        return float(window(torch.tensor([float(self.empty_below)]))[0])

    @property
    def foreground_values(self) -> tuple[int, ...] | None:
        """The foreground label values, or ``None`` when every non-zero value counts."""
        return None if isinstance(self.label_values, str) else tuple(self.label_values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskConfig:
        """Build from a ``task:`` mapping; unknown keys raise, naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"task '{d.get('name')}': unknown keys {unknown}; known: {sorted(known)}")
        if "name" not in d:
            raise ValueError("a task needs a 'name'")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-able mapping that :meth:`from_dict` reads back to an equal config."""
        d = asdict(self)
        d["label_values"] = self.label_values if self.label_values == NONZERO else list(self.label_values)
        d["flips"] = list(self.flips)
        return d


def preset_names() -> list[str]:
    """Names of the shipped task presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def task_preset_path(name_or_path: str | Path) -> Path:
    """A preset's YAML file: an existing ``.yaml``/``.yml`` path as given, else the shipped ``configs/<name>.yaml``.

    Raises:
        FileNotFoundError: neither exists; the message lists the shipped presets.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json"):
        if path.is_file():
            return path
        raise FileNotFoundError(f"{path}: task preset file not found")
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise FileNotFoundError(
            f"{name_or_path}: no such task preset; shipped presets: {', '.join(preset_names())}, "
            "or give a YAML file with a 'task:' section"
        )
    return preset


def load_task(name_or_path: str | Path | TaskConfig) -> TaskConfig:
    """Read the ``task:`` section of a shipped preset (by name) or of a YAML file.

    Raises:
        FileNotFoundError: no such preset or file.
        ValueError: the file has no ``task:`` mapping, or it holds unknown keys or invalid values.
    """
    if isinstance(name_or_path, TaskConfig):
        return name_or_path
    path = task_preset_path(name_or_path)
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict) or not isinstance(content.get("task"), dict):
        raise ValueError(f"{path}: a task preset needs a top-level 'task:' mapping")
    try:
        return TaskConfig.from_dict(content["task"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
