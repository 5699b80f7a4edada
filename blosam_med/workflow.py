"""Launching the package's MONAI bundle (``blosam_med/bundle``, the template of the task bundles in ``bundles/``):
its config files and one ``ConfigWorkflow`` per run.

``blosam train`` and the study's bundle cells both train through :func:`run_training`, so a study cell runs exactly
what the command runs. MONAI and the data layer are imported on use, so the CLI's parser can find the bundle
cheaply.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai.bundle import ConfigWorkflow

__all__ = [
    "BUNDLE_DIR",
    "CROSS_FIT_FOLDS",
    "bundle_config",
    "bundle_value",
    "cross_fit_folds",
    "bundle_workflow",
    "encoder_tail_training",
    "finished_run",
    "preset_encoder_tail",
    "run_cross_fit",
    "run_training",
    "training_configs",
]

#: The bundle shipped with the package: the generic configs every task bundle is made from.
BUNDLE_DIR = Path(__file__).resolve().parent / "bundle"

#: Folds of ``blosam train`` with the bi-level method unless ``--cross-fit`` says otherwise: the 2-fold A/B cross-fit
#: led the few-shot study's mean evaluation-pool Dice at 4 shots over the three 2D tasks (README Results).
CROSS_FIT_FOLDS = 2


def bundle_config(name: str) -> Path:
    """A config file of the package's MONAI bundle (``blosam_med/bundle/configs/<name>``)."""
    return BUNDLE_DIR / "configs" / name


def bundle_workflow(
    config_files: Sequence[str | Path],
    *,
    run_id: str,
    workflow_type: str,
    overrides: Mapping[str, Any],
    tracking: str | None = None,
) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` over ``config_files`` (merged in order) with the bundle's metadata, MONAI's logging left
    alone, and ``overrides`` applied (bundle ids as keys)."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(c) for c in config_files],
        meta_file=str(bundle_config("metadata.json")),
        logging_file=False,
        run_id=run_id,
        workflow_type=workflow_type,
        tracking=tracking,
        **overrides,
    )


def training_configs(
    task: str | Path,
    *,
    distributed: bool = False,
    train_config: str | Path | None = None,
    extra_configs: Sequence[str | Path] = (),
) -> list[Path]:
    """The config files of a training run, in merge order: ``train.yaml`` (or ``train_config``, a copy of it),
    ``multi_gpu_train.yaml`` (with ``distributed``), ``extra_configs`` (e.g. ``encoder_tail.yaml``), the task preset
    (name or YAML file)."""
    from blosam_med.data import task_preset_path

    configs = [Path(train_config) if train_config else bundle_config("train.yaml")]
    if distributed:
        configs.append(bundle_config("multi_gpu_train.yaml"))
    configs += [Path(c) for c in extra_configs]
    configs.append(task_preset_path(task))
    return configs


def preset_encoder_tail(task: str | Path) -> str | None:
    """The encoder-tail variant a task preset (name or YAML file) trains with: its top-level ``encoder_tail``, a name
    of :data:`~blosam_med.variants.ENCODER_TAILS` (teeth: ``neck``), or None (the frozen encoder).

    Raises:
        ValueError: the preset names no such variant (the file and the valid names in the message).
    """
    import yaml

    from blosam_med.data import task_preset_path
    from blosam_med.variants import ENCODER_TAILS

    path = task_preset_path(task)
    name = (yaml.safe_load(path.read_text()) or {}).get("encoder_tail")
    if name is not None and name not in ENCODER_TAILS:
        raise ValueError(f"{path}: encoder_tail {name!r} is not one of: {', '.join(ENCODER_TAILS)} (or null)")
    return name


def encoder_tail_training(
    task: str | Path, requested: str | None = None, *, tail_config: str | Path | None = None
) -> tuple[list[Path], dict[str, Any]]:
    """The extra config files and bundle overrides of a training of ``task`` with the encoder-tail variant
    ``requested``: a name of :data:`~blosam_med.variants.ENCODER_TAILS`, ``"none"`` (the frozen encoder), or None
    (the task preset's, :func:`preset_encoder_tail`). ``tail_config``: the ``encoder_tail.yaml`` to merge (default
    the bundle's; a study merges its pinned copy). The overrides always set ``encoder_tail``, which ``train.yaml``
    checks against the network it builds.

    Raises:
        ValueError: an unknown variant name.
    """
    from blosam_med.variants import ENCODER_TAILS, FROZEN_ENCODER

    name = preset_encoder_tail(task) if requested is None else requested
    if name == FROZEN_ENCODER or name is None:
        return [], {"encoder_tail": None}
    if name not in ENCODER_TAILS:
        raise ValueError(f"encoder_tail {name!r} is not one of: {', '.join([*ENCODER_TAILS, FROZEN_ENCODER])}")
    config = Path(tail_config) if tail_config is not None else bundle_config("encoder_tail.yaml")
    return [config], {"encoder_tail": name, **ENCODER_TAILS[name]}


def bundle_value(configs: Sequence[str | Path], key: str, overrides: Mapping[str, Any]) -> Any:
    """Bundle id ``key`` as a run of ``configs`` with ``overrides`` would read it, unevaluated (``method`` is
    ``"single"``, an expression stays a ``$...`` string)."""
    from monai.bundle import ConfigParser

    if key in overrides:
        return overrides[key]
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    return parser.get(key)


def cross_fit_folds(method: str, folds: int | None = None) -> int:
    """The cross-fitting folds of a training run of ``method``: ``folds``, by default :data:`CROSS_FIT_FOLDS` for the
    bi-level method and 1 (one run) for single-level (whose folds, when asked for, differ by training seed only).

    Raises:
        ValueError: ``folds`` not a whole number of at least 1.
    """
    if folds is None:
        return CROSS_FIT_FOLDS if method == "blosam" else 1
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"{folds!r} folds: give a whole number, 1 (one run) or more")
    return folds


def run_training(
    task: str | Path,
    overrides: Mapping[str, Any],
    *,
    distributed: bool = False,
    tracking: str | None = None,
    train_config: str | Path | None = None,
    extra_configs: Sequence[str | Path] = (),
) -> ConfigWorkflow:
    """Run the bundle's ``train.yaml`` for a task preset (name or YAML file) and return the finished workflow.

    Args:
        task: task preset merged after ``train.yaml`` (``configs/<task>.yaml``).
        overrides: bundle ids to override; ids not given keep the bundle's defaults.
        distributed: also merge ``multi_gpu_train.yaml`` (one of several ``torchrun`` processes).
        tracking: ``"mlflow"`` to track the run with MONAI's MLflow handler.
        train_config: run this copy of ``train.yaml`` instead of the package's (a study pins the one it started with).
        extra_configs: config files merged after those, before the task preset (``encoder_tail.yaml``: the encoder's
            last layers trained on cached head features).
    """
    configs = training_configs(task, distributed=distributed, train_config=train_config, extra_configs=extra_configs)
    workflow = bundle_workflow(configs, run_id="run", workflow_type="train", overrides=overrides, tracking=tracking)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def finished_run(folder: str | Path) -> bool:
    """Whether a training run finished in ``folder``: its ``metrics.json`` is written after ``adapter.pt``."""
    return (Path(folder) / "adapter.pt").is_file() and (Path(folder) / "metrics.json").is_file()


def _on_cpu(configs: Sequence[str | Path], overrides: Mapping[str, Any]) -> bool:
    """Whether a run of ``configs`` with ``overrides`` trains on the CPU (its ``device`` names no CUDA device, or
    CUDA is not available)."""
    import torch

    return not torch.cuda.is_available() or "cuda" not in str(bundle_value(configs, "device", overrides))


def _fill_cache(job: tuple[tuple, dict[str, Any]]) -> None:
    """Encode the first fold's shots and views into the embedding cache, in this process with all its threads, so
    the folds that then start at the same time read them instead of each encoding them (every fold trains on the
    same shots and views; only the A/B split turns)."""
    (task, overrides), kwargs = job
    configs = training_configs(
        task, distributed=False, train_config=kwargs["train_config"], extra_configs=kwargs["extra_configs"]
    )
    workflow = bundle_workflow(configs, run_id="run", workflow_type="train", overrides=overrides)
    workflow.initialize()
    workflow.parser.get_parsed_content("fewshot")


def _run_folds(
    configs: Sequence[str | Path],
    jobs: list[tuple[tuple, dict[str, Any]]],
    *,
    distributed: bool,
    tracking: str | None,
    workers: int | None,
) -> None:
    """Train the folds' :func:`run_training` jobs: one after the other, or (several CPU threads, no ``torchrun``, no
    MLflow store shared by processes) side by side in processes after the embeddings are cached once. A fold's
    adapter is the one it gets trained alone with the same torch thread count (``tests/test_workflow.py``)."""
    from blosam_med.engine import parallel

    if distributed or tracking or not jobs:
        count = 1
    else:
        count = parallel.parallel_workers(len(jobs), on_cpu=_on_cpu(configs, jobs[0][0][1]), requested=workers)
    if count > 1:
        _fill_cache(jobs[0])
        try:
            parallel.run_parallel(_train_fold, jobs, count)
            return
        except parallel.ProcessesUnavailable as err:
            logging.getLogger(__name__).warning("%s: training the folds one after the other", err)
    for args, kwargs in jobs:
        run_training(*args, **kwargs)


def _train_fold(task: str | Path, overrides: Mapping[str, Any], **kwargs: Any) -> None:
    """:func:`run_training` in a worker process, returning nothing (the workflow stays in the process)."""
    run_training(task, overrides, **kwargs)


def run_cross_fit(
    task: str | Path,
    overrides: Mapping[str, Any],
    folds: int,
    *,
    distributed: bool = False,
    tracking: str | None = None,
    train_config: str | Path | None = None,
    workers: int | None = None,
    extra_configs: Sequence[str | Path] = (),
) -> Path:
    """A/B cross-fitting: ``folds`` bi-level runs of the same shots, run ``k`` with the A/B split turned by ``k``
    (``ab_fold``, so every shot is in B once at ``fraction_a = 1 - 1/folds``), each in ``<output_dir>/fold<k>``;
    then their ensemble (mean probability) in ``<output_dir>/adapter.pt`` and ``<output_dir>/metrics.json``, whose
    ``validation`` is the mean of the folds' out-of-fold Dice on B (each fold's kept round), ``iterations`` and
    ``train_seconds`` the folds' sums and ``wall_seconds`` the time this call spent training them. Single-level runs have no split to turn: their
    folds differ by training seed (:func:`blosam_med.engine.training_seed`), a seed ensemble of the same size.

    ``overrides`` are :func:`run_training`'s and must include ``output_dir``. With
    ``resume``, folds that already wrote their adapter are kept, a fold with checkpoints continues from them and
    the others start. With ``tracking``, the folds are MLflow runs ``<run_name>_fold<k>`` and the ensemble a run
    ``<run_name>`` (params, out-of-fold validation, ``adapter.pt``), all in ``tracking_uri``, by default
    ``<output_dir>/mlruns.db``, where ``blosam evaluate --tracking`` finds it. ``train_config`` and
    ``extra_configs``: as in :func:`run_training`. Returns the ensemble adapter's path.

    ``workers``: folds trained at the same time, each in its own process with its share of the cores
    (:func:`_run_folds`); default: one per fold up to torch's threads on the CPU (the ``BLOSAM_FOLD_WORKERS``
    variable overrides it), one fold at a time on a GPU, under ``torchrun`` or with ``tracking``.

    Raises:
        ValueError: fewer than two folds.
        OutputExistsError: ``<output_dir>/adapter.pt`` exists, without ``resume`` or ``overwrite``.
    """
    from blosam_med.engine import check_output_dir
    from blosam_med.io import write_json
    from blosam_med.model import merge_adapters, read_adapter
    from blosam_med.tracking import sqlite_uri

    configs = training_configs(task, distributed=distributed, train_config=train_config, extra_configs=extra_configs)
    if cross_fit_folds(bundle_value(configs, "method", overrides), folds) < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    resume, overwrite = bool(overrides.get("resume")), bool(overrides.get("overwrite"))
    out = check_output_dir(overrides["output_dir"], resume=resume, overwrite=overwrite)
    if tracking:  # the folds' runs and the ensemble's in one store, <output_dir>/mlruns.db unless one is given
        overrides = {"tracking_uri": sqlite_uri(out), **overrides}
    base = str(overrides.get("run_name", "$@run_label"))  # fold k's MLflow run is <base>_fold<k>
    records = []
    jobs = []
    for k in range(folds):
        fold = out / f"fold{k}"
        if not (resume and finished_run(fold)):
            started = resume and any((fold / "checkpoints").glob("*.pt"))  # else this fold starts fresh
            fold_overrides = {
                "fraction_a": 1 - 1 / folds,
                **overrides,
                "output_dir": str(fold),
                "ab_fold": k,
                "run_name": f"$({base[1:]}) + '_fold{k}'" if base.startswith("$") else f"{base}_fold{k}",
            }
            kwargs = {
                "distributed": distributed,
                "tracking": tracking,
                "train_config": train_config,
                "extra_configs": list(extra_configs),
            }
            jobs.append(((task, {**fold_overrides, "resume": started}), kwargs))
    clock = time.perf_counter()
    _run_folds(configs, jobs, distributed=distributed, tracking=tracking, workers=workers)
    wall = round(time.perf_counter() - clock, 2)
    if int(os.environ.get("RANK", 0)) != 0:  # torchrun: the folds' files and their ensemble are rank 0's
        return out / "adapter.pt"
    for k in range(folds):
        records.append(json.loads((out / f"fold{k}" / "metrics.json").read_text()))
    validation = {
        name: sum(r["validation"][name] for r in records) / folds
        for name in records[0]["validation"]
        if all(name in r["validation"] for r in records)
    }
    first = records[0]  # the draw and params of fold 0, with the ensemble's own figures and name
    # folds trained by bundles before 0.9 recorded no run name: they are named after the output folder
    names = [r["params"].get("run_name", f"{out.name}_fold{k}") for k, r in enumerate(records)]
    run_name = names[0].removesuffix("_fold0")
    metrics = {
        "cross_fit": folds,
        "iterations": sum(r["iterations"] for r in records),  # the folds' together
        "train_seconds": round(sum(r["train_seconds"] for r in records), 2),  # the folds' together
        "wall_seconds": wall,  # this call's, folds side by side (about 0 when --resume found them all trained)
        "validation": validation,
        "draw": first["draw"],
        "params": {**first["params"], "run_name": run_name, "ab_fold": None, "cross_fit": folds},
        "folds": [
            {k: r[k] for k in ("validation", "selected", "iterations", "final_loss", "train_seconds") if k in r}
            | {"run_name": name}
            for r, name in zip(records, names, strict=True)
        ],
    }
    extra = read_adapter(out / "fold0" / "adapter.pt")["extra"]
    extra = {**extra, "params": metrics["params"], "cross_fit": {"folds": folds, "validation": validation}}
    adapter = merge_adapters(
        [out / f"fold{k}" / "adapter.pt" for k in range(folds)], out / "adapter.pt", extra=extra, overwrite=True
    )
    write_json(out / "metrics.json", metrics, overwrite=True)
    if tracking:
        from blosam_med.tracking import find_run, record_run

        uri, experiment = overrides["tracking_uri"], metrics["params"]["experiment_name"]
        if find_run(uri, experiment, run_name, status="FINISHED") is not None:  # --resume of a finished cross-fit
            return adapter
        record_run(
            uri,
            experiment,
            run_name,
            metrics["params"],
            validation,
            [adapter, out / "metrics.json"],
            tags={"blosam.cross_fit_folds": ", ".join(f["run_name"] for f in metrics["folds"])},
        )
    return adapter
