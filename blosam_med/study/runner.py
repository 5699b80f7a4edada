"""Run a study: every cell once, resumable, each cell an MLflow run nested under the study's run."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blosam_med.data import (
    INFERENCE_KEYS,
    TaskConfig,
    load_samples,
    load_task,
    open_datalist,
    task_preset_path,
    write_datalist,
)
from blosam_med.data.keys import SampleKeys
from blosam_med.engine.fewshot import draw_shot_samples
from blosam_med.inference.empty_slices import predict_logits
from blosam_med.inference.evaluate import score_predictions
from blosam_med.inference.predictor import Predictor, binary_masks, preset_options
from blosam_med.io import atomic_write, write_json
from blosam_med.model import BloSam, EmbeddingCache, PromptFreeModel, build_backbone, default_cache_dir, load_adapter
from blosam_med.study.baselines import BoxPromptPredictor, UNetBaseline
from blosam_med.study.config import Cell, StudyConfig
from blosam_med.study.records import RESULT_FILE, save_record, sync_records
from blosam_med.study.tracking import StudyTracker
from blosam_med.workflow import bundle_config, encoder_tail_training, finished_run, run_cross_fit, run_training

__all__ = ["run_study", "study_datalist", "slab_split", "pin_config", "StudyContext", "RESULT_FILE", "PINNED_DIR"]

logger = logging.getLogger(__name__)

#: Folder of a study's output with the copies of ``train.yaml`` and the task presets its cells run.
PINNED_DIR = "configs"
#: A bundle cell's record of the copies it trained with, beside the run's ``metrics.json``.
CONFIGS_FILE = "study_configs.json"


def pin_config(path: str | Path, folder: Path) -> Path:
    """A copy of config file ``path`` in ``folder``, named by its content (``<stem>-<sha256, 12 digits><suffix>``).

    A study's cells run these copies: an edit of the bundle or of a preset while the study runs does not reach
    them, whose code was imported with the old files."""
    data = Path(path).read_bytes()
    pinned = folder / f"{Path(path).stem}-{hashlib.sha256(data).hexdigest()[:12]}{Path(path).suffix}"
    if not pinned.is_file():  # the same name is the same content: a concurrent study may write it too
        atomic_write(pinned, lambda tmp: tmp.write_bytes(data), overwrite=True)
    return pinned


def slab_split(
    datalist: dict[str, list[dict]], task: TaskConfig, test: tuple[float, float], gap: int = 2
) -> dict[str, list[dict]]:
    """Split single volumes along the slicing axis: slices in ``test`` (fractions of the volume) are the test
    slab, slices more than ``gap`` away from it are training; the ``gap`` slices on each side are unused.

    Meant for a task with too few volumes for a case-level split (the shared ``lung_ct`` has one): the split is
    between slices of one patient, so test figures are optimistic next to a split by patient.
    """
    training, testing = [], []
    for item in datalist.get("training", []) + datalist.get("test", []):
        n = len(
            load_samples([{k: v for k, v in item.items() if k != "slices"}], task, foreground_only=False, every_n=1)
        )
        lo, hi = round(test[0] * n), round(test[1] * n)
        if not 0 < lo < hi < n:
            raise ValueError(f"{item['image']}: slab {test} of {n} slices leaves no training slices")
        testing.append(dict(item, slices=[lo, hi]))
        training += [dict(item, slices=[0, max(lo - gap, 0)]), dict(item, slices=[min(hi + gap, n), n])]
    return {"training": training, "test": testing}


def study_datalist(config: StudyConfig, task: str, preset: TaskConfig) -> dict[str, list[dict]]:
    """The task's datalist for this study, written once to ``<output_dir>/datalists/<task>.json`` and read back on
    every later run, so a resumed study evaluates every cell on the same split."""
    path = config.output_dir / "datalists" / f"{task}.json"
    if path.is_file():
        return open_datalist(None, path)
    spec = config.tasks[task]
    data = Path(spec["data"])
    data = data if data.is_absolute() else config.data_root / data
    if not data.exists():
        raise FileNotFoundError(f"{data}: data of task '{task}' not found (study data_root is {config.data_root})")
    datalist = open_datalist(data, seed=config.split_seed, test_fraction=config.test_fraction)
    if spec.get("split"):
        s = spec["split"]
        datalist = slab_split(datalist, preset, tuple(s["test_slab"]), int(s.get("gap", 2)))
    if not datalist.get("test"):
        raise ValueError(
            f"{data}: task '{task}' has no test cases; give it a datalist.json with a 'test' split or a "
            "slab split (study.tasks.{task}.split.test_slab)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_datalist({"name": task, **datalist}, path)
    return open_datalist(None, path)


@dataclass
class StudyContext:
    """What the cells share: one backbone, one embedding cache, and each task's preset, split and test samples."""

    config: StudyConfig
    device: torch.device
    cache_dir: Path
    engine: str = "torch"
    backbone: Any = None
    cache: EmbeddingCache | None = None
    presets: dict[str, TaskConfig] = field(default_factory=dict)
    datalists: dict[str, dict] = field(default_factory=dict)
    test_samples: dict[str, list[dict]] = field(default_factory=dict)
    eval_samples: dict[str, list[dict]] = field(default_factory=dict)
    dev_samples: dict[str, list[dict]] = field(default_factory=dict)
    train_config: Path | None = None
    tail_config: Path | None = None
    preset_files: dict[str, Path] = field(default_factory=dict)
    caches: dict[str, EmbeddingCache] = field(default_factory=dict)

    def pin(self) -> None:
        """Copy ``train.yaml``, ``encoder_tail.yaml`` and every task's
        preset into ``<output_dir>/configs`` (:func:`pin_config`) once; the cells train and score with those copies."""
        folder = self.config.output_dir / PINNED_DIR
        if self.train_config is None:
            self.train_config = pin_config(bundle_config("train.yaml"), folder)
        if self.tail_config is None:  # a method's, or a task preset's encoder_tail (teeth) may merge it
            self.tail_config = pin_config(bundle_config("encoder_tail.yaml"), folder)
        for task, entry in self.config.tasks.items():
            if task not in self.preset_files:
                self.preset_files[task] = pin_config(task_preset_path(entry["preset"]), folder)

    def setup(self, task: str) -> None:
        self.pin()
        if self.backbone is None:
            self.backbone = build_backbone(
                self.config.train.get("backbone", "litemedsam"), self.config.train.get("backbone_checkpoint")
            )
            self.cache = EmbeddingCache(self.backbone, self.cache_dir, self.device, progress=True, engine=self.engine)
        if task not in self.presets:
            self.presets[task] = load_task(self.preset_files[task])
            self.datalists[task] = study_datalist(self.config, task, self.presets[task])
            self.test_samples[task] = load_samples(
                self.datalists[task]["test"], self.presets[task], foreground_only=False, every_n=1
            )
            self.eval_samples[task] = eval_samples(self.config, task, self.presets[task])
            self.dev_samples[task] = dev_samples(
                self.datalists[task]["training"], self.presets[task], self.config.dev_size
            )

    def cache_for(self, network: PromptFreeModel) -> EmbeddingCache:
        """The cache ``network`` reads: the study's embedding cache, or for an encoder-tail model one of its head's
        features (same folder and engine; made once per head), so scoring runs the encoder once per image."""
        assert self.cache is not None  # set by setup
        name = network.backbone_name
        if name == self.cache.backbone.name:
            return self.cache
        if name not in self.caches:
            self.caches[name] = EmbeddingCache(
                network.backbone, self.cache_dir, self.device, progress=True, engine=self.engine
            )
        return self.caches[name]

    def preview_indices(self, task: str) -> list[int]:
        """Test samples shown in the qualitative overlays: evenly spaced among those with foreground."""
        fg = [i for i, s in enumerate(self.test_samples[task]) if s[SampleKeys.LABEL].any()]
        n = min(self.config.overlays, len(fg))
        return [fg[round(j)] for j in np.linspace(0, len(fg) - 1, n)] if n else []


def eval_samples(config: StudyConfig, task: str, preset: TaskConfig) -> list[dict]:
    """Every pair of the task's evaluation pool (``study.tasks.<task>.eval``, a folder under ``data_root``), or
    none. The pool is disjoint from the folder the shots are drawn from; cells are scored on it."""
    folder = config.tasks[task].get("eval")
    if not folder:
        return []
    path = Path(folder) if Path(folder).is_absolute() else config.data_root / folder
    if not path.exists():
        raise FileNotFoundError(f"{path}: evaluation pool of task '{task}' not found")
    pool = open_datalist(path, test_fraction=0.0)
    return load_samples([it for section in pool.values() for it in section], preset)


def dev_samples(items: list[dict], task: TaskConfig, size: int) -> list[dict]:
    """Up to ``size`` 2D samples of the training pool, evenly spaced (images, or slices of the training slabs):
    the development set on which variants are compared. A cell scores the ones that are not among its shots."""
    if size <= 0:
        return []
    if task.spatial_dims == 3:
        pool = load_samples(items, task, foreground_only=False, every_n=1)
        return [pool[int(i)] for i in np.unique(np.linspace(0, len(pool) - 1, min(size, len(pool))).round())]
    chosen = [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, min(size, len(items))).round())]
    return load_samples(chosen, task)


def _key(sample: dict) -> tuple[str, Any]:
    return sample[SampleKeys.IMAGE_PATH], sample.get(SampleKeys.SLICE)


def _train_bundle(ctx: StudyContext, cell: Cell, folder: Path) -> tuple[PromptFreeModel, dict[str, Any]]:
    """One training run of the bundle's train.yaml (exactly what ``blosam train`` runs), or with the method's
    ``cross_fit`` its folds and their ensemble (``blosam train --cross-fit``)."""
    config = ctx.config
    override = {
        "dataset_dir": None,
        "datalist_file": str(config.output_dir / "datalists" / f"{cell.task}.json"),
        "output_dir": str(folder),
        "shots": cell.shots,
        "seed": cell.seed,
        "cache_dir": str(ctx.cache_dir),
        "engine": ctx.engine,
        "device": f"$torch.device('{ctx.device}')",
        "overwrite": True,
    }
    preset, folds = ctx.preset_files[cell.task], int(cell.method.options["cross_fit"])
    extra, tail_override = encoder_tail_training(
        preset, cell.method.options.get("encoder_tail"), tail_config=ctx.tail_config
    )
    override.update({**tail_override, **config.train, **cell.method.options.get("set", {})})
    train = ctx.train_config
    assert train is not None  # set by ctx.setup
    configs = {"train": train.name, "preset": preset.name}  # which copies ran: provenance
    if extra:
        configs["encoder_tail"] = extra[0].name
    write_json(folder / CONFIGS_FILE, configs, overwrite=True)
    if folds > 1:  # finished folds of a cut cell are kept (see _clear_unfinished)
        adapter = run_cross_fit(preset, {**override, "resume": True}, folds, train_config=train, extra_configs=extra)
        network, _ = load_adapter(adapter, ctx.backbone)
    else:
        workflow = run_training(preset, override, train_config=train, extra_configs=extra)
        network = workflow.parser.get_parsed_content("network")
    return network, _train_record(folder)


def _train_record(folder: Path) -> dict[str, Any]:
    """A bundle run's ``metrics.json``, with the pinned configs it ran under ``configs`` when they were recorded."""
    record = json.loads((folder / "metrics.json").read_text())
    if (folder / CONFIGS_FILE).is_file():
        record["configs"] = json.loads((folder / CONFIGS_FILE).read_text())
    return record


def run_cell(
    ctx: StudyContext, cell: Cell, folder: Path, trained: tuple[PromptFreeModel, dict[str, Any]] | None = None
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Train (when the method trains) and score one cell on the task's test split, and on the development
    samples that are not among its shots (``result["dev"]``); returns the result and the test masks.

    ``trained``: a bundle cell's network and training record from an earlier run, scored again without training
    (``run_study(rescore=True)``)."""
    ctx.setup(cell.task)
    task, samples = ctx.presets[cell.task], ctx.test_samples[cell.task]
    shots = (
        draw_shot_samples(ctx.datalists[cell.task]["training"], task, cell.shots, cell.seed or 0) if cell.shots else []
    )
    dev = [s for s in ctx.dev_samples[cell.task] if _key(s) not in {_key(t) for t in shots}]
    kind, opts = cell.method.kind, cell.method.options
    extra: dict[str, Any] = {}
    assert ctx.cache is not None  # set by ctx.setup
    if kind == "zero_shot":
        predictor = Predictor([BloSam(ctx.backbone)], ctx.cache, ctx.device, 1)
        predict = lambda xs: [m[:1] for m in predictor.masks([s[SampleKeys.IMAGE] for s in xs])]
    elif kind == "box_prompt":
        boxes = BoxPromptPredictor(ctx.backbone, ctx.cache, ctx.device)
        predict = lambda xs: boxes.masks([s[SampleKeys.IMAGE] for s in xs], [s[SampleKeys.LABEL] for s in xs])
    elif kind == "unet":
        unet = UNetBaseline(ctx.backbone.preprocessing, seed=cell.seed or 0, device=ctx.device, **opts)
        losses = unet.fit(shots)
        extra["train"] = {
            "final_loss": losses[-1],
            "iterations": len(losses),
            "shots": [f"{s[SampleKeys.IMAGE_PATH]}#{s[SampleKeys.SLICE]}" for s in shots],
        }
        predict = lambda xs: unet.masks([s[SampleKeys.IMAGE] for s in xs])
    else:
        network, extra["train"] = trained or _train_bundle(ctx, cell, folder / "train")
        # what `blosam infer` and `blosam evaluate` apply: the preset's post-processing, test-time flips, box
        # refinement and empty slices (empty_below)
        options = preset_options([task])
        predictor = Predictor([network], ctx.cache_for(network), ctx.device, 1, **options)
        extra["inference"] = {k: task.to_dict()[k] for k in INFERENCE_KEYS}
        predict = lambda xs: [binary_masks(lg, options["postprocess"]) for lg in predict_logits(predictor, xs, task)]
    masks = predict(samples)
    result = {**score_predictions(samples, masks), **extra}
    pool = ctx.eval_samples[cell.task]
    if pool:  # the pool scores the cell; the test split is kept aside under "test"
        test = {k: result.pop(k) for k in ("cases", "mean", "counts")}
        pool_masks = predict(pool)
        result = {**score_predictions(pool, pool_masks), "test": test, **result}
        np.savez_compressed(folder / "eval_masks.npz", allow_pickle=False, **_packed(pool_masks))
    if dev:
        scored = score_predictions(dev, predict(dev), per_sample=True)
        result["dev"] = {"mean": scored["mean"], "cases": scored["cases"]}
    return result, masks


def _packed(masks: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Binary masks as bit-packed arrays with their shapes, for re-scoring (e.g. post-processing) without a rerun."""
    return {
        **{f"m{i}": np.packbits(m.numpy().astype(bool)) for i, m in enumerate(masks)},
        "shapes": np.array([tuple(m.shape) for m in masks]),
    }


def _save_preview(ctx: StudyContext, cell: Cell, folder: Path, masks: list[torch.Tensor]) -> None:
    """The test masks the report's overlays show."""
    preview = ctx.preview_indices(cell.task)
    np.savez_compressed(folder / "preview.npz", **{f"m{i}": masks[i][0].numpy() for i in preview})  # type: ignore[arg-type]


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (the cross-fit's folds train in spawned
    processes on the CPU, :mod:`blosam_med.engine.parallel`; a cell's CPU includes theirs)."""
    try:
        import resource  # POSIX only; elsewhere this process's CPU alone
    except ImportError:
        return time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _clear_unfinished(folder: Path) -> None:
    """Remove a cut cell's outputs except the cross-fit folds that finished (``train/fold<k>`` with an adapter and
    ``metrics.json``), which :func:`blosam_med.workflow.run_cross_fit` keeps when resuming."""
    keep = [f for f in (folder / "train").glob("fold*") if finished_run(f)]
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if not any(path == k or k in path.parents or path in k.parents for k in keep):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    if keep:
        logger.info("%s: keeping the finished folds %s", folder, ", ".join(k.name for k in sorted(keep)))


def _finished_training(ctx: StudyContext, cell: Cell, folder: Path) -> tuple[PromptFreeModel, dict[str, Any]] | None:
    """A bundle cell without a result whose training finished (``train/metrics.json`` is written after the adapter,
    for a cross-fit after the ensemble): its model and training record, so that only the scoring runs again."""
    train = folder / "train"
    if cell.method.kind != "bundle" or not finished_run(train):
        return None
    ctx.setup(cell.task)
    try:
        network, _ = load_adapter(train / "adapter.pt", ctx.backbone)
        return network, _train_record(train)
    except ValueError as err:  # unreadable: train again
        logger.warning("study %s: cell %s: %s; training again", ctx.config.name, cell.id, err)
        return None


def _rescore_cell(ctx: StudyContext, cell: Cell, folder: Path) -> None:
    """Score a finished bundle cell again from its saved adapter (see ``run_study(rescore=True)``)."""
    ctx.setup(cell.task)
    old = json.loads((folder / RESULT_FILE).read_text())
    network, _ = load_adapter(folder / "train" / "adapter.pt", ctx.backbone)
    logger.info("study %s: rescoring cell %s", ctx.config.name, cell.id)
    result, masks = run_cell(ctx, cell, folder, trained=(network, old["train"]))
    _save_preview(ctx, cell, folder, masks)
    kept = {
        k: old[k]
        for k in old
        if k in ("cell", "task", "method", "label", "kind", "shots", "seed", "wall_seconds", "cpu_seconds")
    }
    result = {**result, **kept, "rescored": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(folder / RESULT_FILE, result, overwrite=True)
    save_record(ctx.config, cell, result)


def run_study(
    config: StudyConfig,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    tracking: bool = True,
    report: bool = True,
    engine: str = "torch",
    rescore: bool = False,
    cells: Sequence[Cell] | None = None,
) -> dict[str, Any]:
    """Run every cell that is not done yet (of ``cells``, default the whole grid), then write the report.

    The report covers every finished cell of ``config``, not only those this call ran, so a run of a few cells
    (``config.subset(tasks=..., methods=...).cells()``) leaves the study's report whole.

    ``engine`` runs the frozen encoder (:mod:`blosam_med.model.encoder_engines`) for the study's embeddings.
    ``rescore``: finished bundle cells are scored again with their saved adapter and today's task presets
    (post-processing, flips, box refinement, threshold: :data:`INFERENCE_KEYS`) without retraining, so that every row of the
    report uses the same inference; their training record and time are kept (``result["rescored"]`` says when).

    A cell is done when ``<output_dir>/cells/<cell id>/result.json`` exists, or its record (``config.records``,
    :func:`~blosam_med.study.records.sync_records` restores it first); an unfinished cell's folder is
    cleared and the cell rerun, except a bundle cell whose training finished (``train/metrics.json``): it is only
    scored (``result["scored_after_training"]``). A cell that raises is logged (``error.txt``, a FAILED MLflow run) and the study goes
    on. The cells run copies of ``train.yaml`` and the task presets made when the call starts (:func:`pin_config`,
    named in a trained cell's ``result["train"]["configs"]``).
    Returns ``{"done": [...], "skipped": [...], "failed": {cell: error}, "report": {...}}``.
    """
    from blosam_med.study.report import write_report

    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    ctx = StudyContext(config, torch.device(device), Path(cache_dir) if cache_dir else default_cache_dir(), engine)
    ctx.pin()  # the bundle and presets as they are now, whatever is edited while the cells run
    tracker = StudyTracker(config) if tracking else None
    summary: dict[str, Any] = {"done": [], "skipped": [], "rescored": [], "failed": {}}
    summary["records"] = sync_records(config)  # the whole grid: the report covers it
    for cell in config.cells() if cells is None else cells:
        folder = out / "cells" / cell.id
        if (folder / RESULT_FILE).is_file():
            if rescore and (folder / "train" / "adapter.pt").is_file():
                try:
                    _rescore_cell(ctx, cell, folder)
                    summary["rescored"].append(cell.id)
                except Exception as err:  # the cell's earlier result stays
                    logger.error("study %s: rescoring cell %s failed: %s", config.name, cell.id, err)
                    summary["failed"][cell.id] = f"{type(err).__name__}: {err}"
            else:
                summary["skipped"].append(cell.id)
            continue
        trained = _finished_training(ctx, cell, folder)
        if folder.exists() and trained is None:
            _clear_unfinished(folder)  # a cell killed halfway: its partial outputs are ours, start it again
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("study %s: cell %s%s", config.name, cell.id, " (trained before: scoring)" if trained else "")
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            result, masks = run_cell(ctx, cell, folder, trained=trained)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # one failed cell must not lose the others
            logger.error("study %s: cell %s failed: %s", config.name, cell.id, err)
            (folder / "error.txt").write_text(traceback.format_exc())
            summary["failed"][cell.id] = f"{type(err).__name__}: {err}"
            if tracker:
                tracker.log_failure(cell, folder / "error.txt")
            continue
        _save_preview(ctx, cell, folder, masks)
        result.update(
            cell=cell.id,
            task=cell.task,
            method=cell.method.name,
            label=cell.method.label,
            kind=cell.method.kind,
            shots=cell.shots,
            seed=cell.seed,
            wall_seconds=round(time.perf_counter() - wall, 2),
            cpu_seconds=round(cpu_seconds() - cpu, 2),
        )
        if trained is not None:  # these seconds are the scoring's; the training's are train.train_seconds
            result["scored_after_training"] = True
        write_json(folder / RESULT_FILE, result, overwrite=True)
        save_record(config, cell, result)
        summary["done"].append(cell.id)
        if tracker:
            tracker.log_cell(cell, result, folder)
    if report:
        for task in config.tasks:
            try:
                ctx.setup(task)
            except Exception as err:  # a task without data is reported as failed cells already
                logger.error("study %s: task %s unavailable for the report: %s", config.name, task, err)
        summary["report"] = write_report(config, ctx)
        if tracker:
            tracker.log_report(summary["report"])
    if tracker:
        tracker.finish(failed=bool(summary["failed"]))
    return summary
