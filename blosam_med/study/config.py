"""A few-shot study: tasks x shots x seeds x methods, read from one YAML file."""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from blosam_med.config_keys import bundle_ids, check_keys
from blosam_med.variants import ENCODER_TAILS, FROZEN_ENCODER, check_variant_options

__all__ = ["Cell", "MethodSpec", "StudyConfig", "load_study", "METHOD_KINDS"]

#: ``bundle``: a training run of the bundle's train.yaml (BLO-SAM variants, single-level), overrides in ``set``
#: (``method``, ``hypergradient`` and ``roles`` there are checked against :mod:`blosam_med.variants` on load);
#: ``zero_shot``: the backbone untrained, prompt-free with its default no-mask embedding;
#: ``box_prompt``: the backbone prompted with the ground-truth box of every connected component (an oracle);
#: ``unet``: a MONAI network trained from scratch on the same shots.
METHOD_KINDS = ("bundle", "zero_shot", "box_prompt", "unet")


@dataclass(frozen=True)
class MethodSpec:
    """One method of the study: a ``kind`` (see :data:`METHOD_KINDS`), a label for tables, and its options."""

    name: str
    kind: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    shots: tuple[int, ...] | None = None  #: the grid's shot counts this method runs at; ``None``: all

    @property
    def trains(self) -> bool:
        """Whether the method uses the shots (one cell per shots x seed) or not (one cell per task)."""
        return self.kind in ("bundle", "unet")


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method on a task, for one draw (shots, seed) when the method trains."""

    task: str
    method: MethodSpec
    shots: int | None = None
    seed: int | None = None

    @property
    def id(self) -> str:
        """Folder and MLflow run name: ``polyp/k4_s0/blosam-fo`` or ``polyp/box-oracle``."""
        if self.shots is None:
            return f"{self.task}/{self.method.name}"
        return f"{self.task}/k{self.shots}_s{self.seed}/{self.method.name}"


@dataclass
class StudyConfig:
    """The grid and how each cell runs.

    Args:
        name: study name (MLflow experiment ``blosam_study_<name>``).
        output_dir: where cells, datalists, the report and ``mlruns.db`` go.
        data_root: folder holding one sub-folder per task.
        tasks: ``{task: {data: folder under data_root, preset: name or YAML, split: {...}}}``.
        shots: the few-shot grid's shot counts.
        seeds: the few-shot grid's draws (seeds).
        methods: the methods, in table order.
        train: bundle overrides for every ``bundle`` cell (iterations, batch_size...).
        test_fraction: test share of the case-level train/test split made when a task folder has no datalist.json.
        split_seed: seed of that split.
        overlays: qualitative overlays per task in the report.
        dev_size: training-pool samples per task that every cell also scores when they are not among its shots:
            the development set on which variants are compared (the test split is only reported).
        records: folder of cell records meant to be committed (:mod:`blosam_med.study.records`): each finished
            cell's result is copied there, and restored from there when the output folder lost it; ``None``: none.
    """

    name: str
    output_dir: Path
    data_root: Path
    tasks: dict[str, dict[str, Any]]
    shots: list[int]
    seeds: list[int]
    methods: list[MethodSpec]
    train: dict[str, Any] = field(default_factory=dict)
    test_fraction: float = 0.2
    split_seed: int = 0
    overlays: int = 3
    dev_size: int = 16
    records: Path | None = None
    source: str = ""

    def cells(self) -> list[Cell]:
        """Every cell, cheap ones (no training) first within a task."""
        out: list[Cell] = []
        for task in self.tasks:
            out += [Cell(task, m) for m in self.methods if not m.trains]
            for shots, seed in itertools.product(self.shots, self.seeds):
                out += [Cell(task, m, shots, seed) for m in self.methods if m.trains and shots in (m.shots or (shots,))]
        return out

    def subset(
        self,
        tasks: Sequence[str] | None = None,
        shots: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
        methods: Sequence[str] | None = None,
    ) -> StudyConfig:
        """The same study on part of the grid; ``None`` keeps all. Shots and seeds may lie outside the grid.

        Raises:
            KeyError: a task or method the study does not have.
        """
        for name in tasks or ():
            if name not in self.tasks:
                raise KeyError(f"no task '{name}' in the study (tasks: {list(self.tasks)})")
        return replace(
            self,
            tasks={t: self.tasks[t] for t in tasks} if tasks else self.tasks,
            shots=list(shots or self.shots),
            seeds=list(seeds or self.seeds),
            methods=[self.method(m) for m in methods] if methods else self.methods,
        )

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"no method '{name}' in the study (methods: {[m.name for m in self.methods]})")


#: Keys of a ``study.tasks.<task>`` entry (``eval``: a folder of evaluation pairs) and of its ``split``.
TASK_KEYS = ("data", "preset", "split", "eval")
SPLIT_KEYS = ("test_slab", "gap")
#: Keys every method takes; a method that trains may add ``shots`` (the grid's shot counts it runs at; default
#: all), a ``bundle`` method ``set`` (bundle overrides), ``cross_fit`` (folds of
#: :func:`blosam_med.workflow.run_cross_fit` for the bi-level method; default 1) and ``encoder_tail`` (a name of
#: :data:`blosam_med.variants.ENCODER_TAILS`: the bundle's ``encoder_tail.yaml`` merged after ``train.yaml``, as
#: ``blosam train --encoder-tail``; ``none``: the frozen encoder; absent: the task preset's), a ``unet`` its network options.
METHOD_KEYS = ("kind", "label", "baseline")


def _method_keys(kind: str) -> set[str]:
    if kind == "bundle":
        return {*METHOD_KEYS, "shots", "set", "cross_fit", "encoder_tail"}
    if kind == "unet":
        from blosam_med.study.baselines import UNetBaseline

        params = inspect.signature(UNetBaseline.__init__).parameters
        return {*METHOD_KEYS, "shots", *(k for k in params if k not in ("self", "prep", "seed", "device"))}
    return set(METHOD_KEYS)


def _folds(path: Path, name: str, spec: dict[str, Any]) -> int:
    """The cross-fitting folds of a bundle method: its ``cross_fit`` (default 1: one bundle run, as
    ``python -m monai.bundle run`` trains; single-level folds are a seed ensemble)."""
    from blosam_med.workflow import cross_fit_folds

    try:
        return cross_fit_folds((spec.get("set") or {}).get("method", "blosam"), spec.get("cross_fit", 1))
    except ValueError as err:
        raise ValueError(f"{path}: study.methods.{name}.cross_fit: {err}") from err


def _check_bundle_keys(path: Path, cfg: dict[str, Any]) -> None:
    """``train`` and every bundle method's ``set`` override keys of the bundle's train.yaml or a task preset (and of
    ``encoder_tail.yaml`` for a method that adapts the encoder's tail, by its ``encoder_tail`` or a preset's)."""
    from blosam_med.data import task_preset_path
    from blosam_med.workflow import bundle_config, preset_encoder_tail

    overrides = {"study.train": cfg.get("train") or {}}
    overrides.update(
        {
            f"study.methods.{n}.set": (m or {}).get("set") or {}
            for n, m in cfg["methods"].items()
            if (m or {}).get("set")
        }
    )
    if not any(overrides.values()):
        return
    presets = {task_preset_path(t.get("preset", name)) for name, t in _task_entries(cfg).items()}
    valid = bundle_ids([bundle_config("train.yaml"), *sorted(presets)])
    preset_tail = any(preset_encoder_tail(p) for p in presets)  # a method without encoder_tail runs the preset's
    tails = set()
    for n, m in cfg["methods"].items():
        tail = (m or {}).get("encoder_tail")
        if tail in ENCODER_TAILS or (tail is None and preset_tail):
            tails.add(f"study.methods.{n}.set")
    with_tail = bundle_ids([bundle_config("train.yaml"), bundle_config("encoder_tail.yaml")]) if tails else []
    for where, keys in overrides.items():
        check_keys(keys, [*valid, *with_tail] if where in tails else valid, f"{path}: {where}")


def _method_shots(path: Path, name: str, value: Any, grid: Sequence[Any]) -> tuple[int, ...] | None:
    """A method's ``shots``: ``None`` (every shot count of the grid) or a non-empty list drawn from the grid's."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or any(not isinstance(k, int) or k not in grid for k in value):
        raise ValueError(
            f"{path}: study.methods.{name}.shots must list shot counts of study.shots {grid}, got {value!r}"
        )
    return tuple(int(k) for k in value)


def _task_entries(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tasks = cfg["tasks"]
    return {t: dict(v or {}) for t, v in (tasks.items() if isinstance(tasks, dict) else ((t, {}) for t in tasks))}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read a study YAML (top-level ``study:``); ``overrides`` replace keys (``{"seeds": [0], "shots": [2]}``).

    Relative ``output_dir``, ``data_root`` and ``records`` are taken from the current directory, like the bundle's paths.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing or malformed key (the message names the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: study config not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw.get("study"), dict):
        raise ValueError(f"{path}: expected a top-level 'study:' mapping")
    cfg = _merge(raw["study"], overrides or {})
    check_keys(cfg, [f.name for f in fields(StudyConfig) if f.name != "source"], f"{path}: study")
    for key in ("name", "tasks", "shots", "seeds", "methods"):
        if not cfg.get(key):
            raise ValueError(f"{path}: study.{key} is missing or empty")
    for t, v in _task_entries(cfg).items():
        check_keys(v, TASK_KEYS, f"{path}: study.tasks.{t}")
        check_keys(v.get("split") or {}, SPLIT_KEYS, f"{path}: study.tasks.{t}.split")
    methods = []
    for name, spec in cfg["methods"].items():
        spec = dict(spec or {})
        kind = spec.get("kind")
        if kind not in METHOD_KINDS:
            raise ValueError(f"{path}: study.methods.{name}.kind must be one of {METHOD_KINDS}, got {kind!r}")
        check_keys(spec, _method_keys(kind), f"{path}: study.methods.{name}")
        spec.pop("kind")
        if kind == "bundle":
            check_variant_options(spec.get("set") or {}, f"{path}: study.methods.{name}.set.")
            spec["cross_fit"] = _folds(path, name, spec)
            if spec.get("encoder_tail") is not None and spec["encoder_tail"] not in (*ENCODER_TAILS, FROZEN_ENCODER):
                raise ValueError(
                    f"{path}: study.methods.{name}.encoder_tail {spec['encoder_tail']!r} is not one of: "
                    f"{', '.join([*ENCODER_TAILS, FROZEN_ENCODER])}"
                )
        if "baseline" in spec and spec["baseline"] not in cfg["methods"]:
            raise ValueError(f"{path}: study.methods.{name}.baseline names no method: {spec['baseline']!r}")
        only = _method_shots(path, name, spec.pop("shots", None), cfg["shots"])
        methods.append(MethodSpec(name, kind, str(spec.pop("label", name)), spec, only))
    check_variant_options(cfg.get("train") or {}, f"{path}: study.train.")
    _check_bundle_keys(path, cfg)
    tasks = _task_entries(cfg)
    for t, v in tasks.items():
        v.setdefault("data", t)
        v.setdefault("preset", t)
    shots = [int(k) for k in cfg["shots"]]
    if min(shots) < 2:
        raise ValueError(f"{path}: study.shots must be >= 2 (BLO-SAM splits the shots into two subsets), got {shots}")
    return StudyConfig(
        name=str(cfg["name"]),
        output_dir=Path(cfg.get("output_dir", f"runs/study_{cfg['name']}")),
        data_root=Path(cfg.get("data_root", "../shared/data")),
        tasks=tasks,
        shots=shots,
        seeds=[int(s) for s in cfg["seeds"]],
        methods=methods,
        train=dict(cfg.get("train") or {}),
        test_fraction=float(cfg.get("test_fraction", 0.2)),
        split_seed=int(cfg.get("split_seed", 0)),
        overlays=int(cfg.get("overlays", 3)),
        dev_size=int(cfg.get("dev_size", 16)),
        records=Path(cfg["records"]) if cfg.get("records") else None,
        source=str(path),
    )
