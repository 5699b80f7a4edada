"""The ``blosam`` command: one parser, one small function per subcommand.

Each subcommand parses its arguments, resolves the device and calls one library function; results go to
stdout, diagnostics to the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import torch

__all__ = ["main", "build_parser", "resolve_device"]

logger = logging.getLogger(__name__)


class CLIError(Exception):
    """A user error the CLI reports as one line on stderr with exit status 2."""


#: ``--engine`` choices (blosam_med.model.encoder_engines.ENGINES, listed here so the parser imports no torch).
ENGINE_CHOICES = ("auto", "torch", "openvino", "onnxruntime")

#: Errors reported as one line naming the file and the problem (exit status 2), never a traceback. ``OSError``
#: covers I/O faults (folder not writable, disk full) and missing or existing files.
USER_ERRORS = (CLIError, OSError, ValueError)


def _add_engine(p: argparse.ArgumentParser, default: str = "auto", text: str | None = None) -> None:
    """The ``--engine`` option: what runs the frozen encoder."""
    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=default,
        help=text
        or "what runs the frozen encoder: auto (the fastest installed CPU runtime, else torch), torch, or a runtime "
        "(exported once, float32; README Speed)",
    )


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given.

    Raises:
        CLIError: a name torch does not know (``gpu``), a device type other than CPU and CUDA, CUDA or a CUDA
            index that this machine does not have.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--device {name}: not a device name ({err}); use auto, cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {name}: blosam runs on cpu or cuda, not {device.type}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


# --------------------------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a backbone and the BLO-SAM trainable parts")
    p.add_argument("--backbone", default="litemedsam", help="backbone name (see --list)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file for SAM/MedSAM backbones")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="list registered backbones and exit")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from blosam_med.model import BACKBONES, describe_model

    if args.list:
        print("\n".join(sorted(BACKBONES)))
        return 0
    info = describe_model(args.backbone, checkpoint=args.checkpoint, lora_rank=args.lora_rank)
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


# -------------------------------------------------------------------------------------------- train
#: ``blosam train`` options passed to the bundle only when given, by bundle id: their defaults live in train.yaml.
TRAIN_OPTIONS = {
    "shots": "shots",
    "seed": "seed",
    "method": "method",
    "hypergradient": "hypergradient",
    "roles": "roles",
    "iterations": "iterations",
    "early_stop": "early_stop_patience",
    "views": "views",
    "batch_size": "batch_size",
    "lr": "lr",
    "backbone": "backbone",
    "checkpoint": "backbone_checkpoint",
    "cache_dir": "cache_dir",
    "tracking_uri": "tracking_uri",
    "resume": "resume",
    "overwrite": "overwrite",
    "engine": "engine",
}


def _bundle_defaults(config: str) -> Callable[[str, str], str]:
    """``help(text, bundle_id)``: ``text`` with the default ``config`` (a bundle config) gives that id.

    Expressions (``$...``) and references (``@...``) are described by ``text`` itself, so only plain values are shown.
    """
    from blosam_med.workflow import bundle_config

    raw = yaml.safe_load(bundle_config(config).read_text()) or {}

    def describe(text: str, bundle_id: str) -> str:
        value = raw.get(bundle_id)
        shown = not (isinstance(value, str) and value[:1] in "$@%")
        return f"{text} (default: {value}, {config})" if shown else f"{text} (default: {config})"

    return describe


def _add_train(sub: argparse._SubParsersAction) -> None:
    from blosam_med.variants import ENCODER_TAILS, FROZEN_ENCODER, HYPERGRADIENTS, METHODS, ROLES
    from blosam_med.workflow import CROSS_FIT_FOLDS

    d = _bundle_defaults("train.yaml")
    given = argparse.SUPPRESS  # absent unless given, so train.yaml's default applies
    p = sub.add_parser("train", help="few-shot training (runs the bundle's train.yaml)")
    p.add_argument("--task", required=True, help="task preset name (lung_xray, lung_ct, polyp, teeth) or YAML file")
    p.add_argument("--data", required=True, help="datalist JSON or task folder")
    p.add_argument("--out", required=True, help="output folder (adapter.pt, metrics.json, draw.json, checkpoints)")
    p.add_argument("--shots", type=int, default=given, help="number of shots (default: the task preset's)")
    p.add_argument("--seed", type=int, default=given, help=d("seed of the draw, the split and training", "seed"))
    p.add_argument("--method", choices=list(METHODS), default=given, help=d("bi-level or single-level", "method"))
    p.add_argument(
        "--hypergradient", choices=list(HYPERGRADIENTS), default=given, help=d("upper-level gradient", "hypergradient")
    )
    p.add_argument(
        "--roles",
        choices=list(ROLES),
        default=given,
        help=d("bi-level: A trains the adapter and B the prompt (fixed), or they swap every iteration", "roles"),
    )
    p.add_argument("--iterations", type=int, default=given, help=d("training iterations", "iterations"))
    p.add_argument(
        "--early-stop",
        type=int,
        default=given,
        metavar="N",
        help=d(
            "bi-level: stop once subset B's Dice has not risen for N validation rounds (0: never)",
            "early_stop_patience",
        ),
    )
    p.add_argument(
        "--cross-fit",
        type=int,
        default=None,
        metavar="K",
        help="A/B cross-fitting: K runs with the A/B split turned (single-level: the training reseeded), in "
        f"--out/fold<k>, averaged into one adapter.pt (K times the training time; default {CROSS_FIT_FOLDS} with "
        "--method blosam, 1 (one run) otherwise)",
    )
    p.add_argument(
        "--encoder-tail",
        choices=[*ENCODER_TAILS, FROZEN_ENCODER],
        default=None,
        help="also train the encoder's last layers on cached head features (LiteMedSAM; docs/encoder_tail.md): "
        "neck (the neck fine-tuned) or stage (the neck, and LoRA on the last stage), adding the bundle's "
        "encoder_tail.yaml, whose tail_* keys --set may change; none: the frozen encoder (default: the task "
        "preset's encoder_tail, teeth: neck; the others: none)",
    )
    p.add_argument("--views", type=int, default=given, help=d("augmented views per shot (cached once)", "views"))
    p.add_argument("--batch-size", type=int, default=given, help=d("batch size", "batch_size"))
    p.add_argument(
        "--lr",
        type=float,
        default=given,
        help=d("AdamW learning rate (5e-3 left some 2-4 shot runs stuck at empty masks: README Results)", "lr"),
    )
    p.add_argument("--backbone", default=given, help=d("backbone name (blosam info --list)", "backbone"))
    p.add_argument("--checkpoint", default=given, help="backbone checkpoint for SAM/MedSAM backbones")
    p.add_argument("--cache-dir", default=given, help="embedding cache (default: $BLOSAM_CACHE or ~/.cache/blosam_med)")
    p.add_argument("--device", default="auto")
    _add_engine(p)
    p.add_argument("--tracking", action="store_true", help="track the run in MLflow")
    p.add_argument("--tracking-uri", default=given, help="MLflow tracking URI (default: sqlite in --out)")
    p.add_argument("--resume", action="store_true", default=given, help="continue from the last checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", default=given, help="replace a finished run in --out")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one of several torchrun processes: adds the bundle's multi_gpu_train.yaml (--batch-size is "
        "per process; gloo on the CPU, nccl with cuda:LOCAL_RANK on GPUs)",
    )
    p.add_argument("--set", nargs="*", default=[], metavar="ID=VALUE", help="other bundle overrides (lora_rank=8)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from blosam_med.config_keys import bundle_ids, suggest
    from blosam_med.data import open_datalist
    from blosam_med.io import check_output_folder
    from blosam_med.workflow import (
        bundle_value,
        cross_fit_folds,
        encoder_tail_training,
        run_cross_fit,
        run_training,
        training_configs,
    )

    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: datalist or data folder not found")
    device = _process_device(args.device) if args.distributed else resolve_device(args.device)
    check_output_folder(args.out)
    if data.is_file():
        open_datalist(None, data)  # a malformed datalist is refused before the run folder is made
    override = {
        "dataset_dir": str(data.parent if data.is_file() else data),
        "datalist_file": str(data) if data.is_file() else None,
        "output_dir": str(args.out),
        "device": f"$torch.device('{device}')",
        **{bundle_id: getattr(args, name) for name, bundle_id in TRAIN_OPTIONS.items() if hasattr(args, name)},
    }
    extra, tail_override = encoder_tail_training(args.task, args.encoder_tail)
    override.update(tail_override)
    configs = training_configs(args.task, distributed=args.distributed, extra_configs=extra)
    known = bundle_ids(configs)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--set {item}: expected ID=VALUE")
        if key not in known:
            raise CLIError(f"--set {key}: no such key in {', '.join(p.name for p in configs)}; {suggest(key, known)}")
        override[key] = yaml.safe_load(value)
    try:
        folds = cross_fit_folds(bundle_value(configs, "method", override), args.cross_fit)
    except ValueError as err:
        raise CLIError(f"--cross-fit {err}") from err
    tracking = "mlflow" if args.tracking or hasattr(args, "tracking_uri") else None
    if folds > 1:
        run_cross_fit(args.task, override, folds, distributed=args.distributed, tracking=tracking, extra_configs=extra)
    else:
        run_training(args.task, override, distributed=args.distributed, tracking=tracking, extra_configs=extra)
    if int(os.environ.get("RANK", 0)) == 0:
        print(Path(args.out) / "adapter.pt")
    return 0


def _process_device(name: str) -> torch.device:
    """The device of this torchrun process: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` on a GPU machine, else the CPU."""
    from blosam_med.distributed import local_device

    resolve_device(name)  # the same checks as without --distributed
    return local_device(name)


# ----------------------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, HD95 (mm) and NSD of an adapter on a datalist split")
    p.add_argument("--adapter", required=True)
    p.add_argument("--data", required=True, help="datalist JSON or task folder")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--task", default=None, help="task preset (default: the one stored in the adapter)")
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=None,
        help="NSD tolerance in mm (default: blosam_med.metrics.NSD_TOLERANCE_MM)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on a GPU, 1 on the CPU")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    _add_engine(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--tracking",
        action="store_true",
        help="log the mean metrics and the result into the MLflow run that trained the adapter (as evaluate.yaml)",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite beside the adapter)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from blosam_med.data import load_task
    from blosam_med.inference import evaluate_adapter
    from blosam_med.io import check_output_folder, check_writable
    from blosam_med.tracking import sqlite_uri

    check_writable(args.out, args.overwrite)
    check_output_folder(Path(args.out).parent)
    result = evaluate_adapter(
        args.adapter,
        args.data,
        args.split,
        task=load_task(args.task) if args.task else None,
        cache_dir=args.cache_dir,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        **({} if args.nsd_tolerance is None else {"nsd_tolerance_mm": args.nsd_tolerance}),
        out=args.out,
        overwrite=args.overwrite,
        engine=args.engine,
        tracking_uri=(args.tracking_uri or sqlite_uri(Path(args.adapter).parent)) if args.tracking else None,
    )
    print(json.dumps({"split": args.split, "cases": len(result["cases"]), **result["mean"]}))
    return 0


# ------------------------------------------------------------------------------------------ prepare
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="check a data folder and write a MONAI datalist JSON with a seeded split")
    p.add_argument(
        "--images",
        required=True,
        help="images folder, task folder (images/ + masks/ or labels/), or folder of <case>/dicom/ series",
    )
    p.add_argument("--masks", default=None, help="masks folder; None: masks/ or labels/ beside the images")
    p.add_argument("--out", required=True, help="datalist JSON to write (paths inside are relative to it)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of cases in the test split")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument(
        "--label-values",
        type=int,
        nargs="+",
        default=None,
        help="mask values that are foreground; None: masks must be binary",
    )
    p.add_argument("--allow-empty", action="store_true", help="accept masks without foreground")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from blosam_med.data import DatalistError, prepare_datalist
    from blosam_med.io import check_output_folder

    check_output_folder(Path(args.out).parent)
    try:
        out, datalist = prepare_datalist(
            args.images,
            args.masks,
            out=args.out,
            test_fraction=args.test_fraction,
            seed=args.seed,
            label_values=args.label_values,
            require_foreground=not args.allow_empty,
            overwrite=args.overwrite,
        )
    except DatalistError as err:
        print(f"blosam prepare: error: {len(err.problems)} problem(s); nothing written:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in err.problems), file=sys.stderr)
        return 2
    print(json.dumps({"datalist": str(out), "training": len(datalist["training"]), "test": len(datalist["test"])}))
    return 0


# -------------------------------------------------------------------------------------------- bundle
def _add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="write a MONAI model-zoo bundle of one trained adapter (or a shipped task)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", help="adapter file written by blosam train")
    which.add_argument("--task", help="a shipped task: polyp, lung_xray, teeth, lung_ct")
    p.add_argument("--out", required=True, help="bundle folder to write, e.g. bundles/blosam_mytask")
    p.add_argument("--preset", default=None, help="task preset (name or YAML); default: the one the adapter stores")
    p.add_argument("--link", action="store_true", help="models/model.pt links to the adapter instead of a copy")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run_bundle)


def _run_bundle(args: argparse.Namespace) -> int:
    from blosam_med.model.shipped import shipped_adapter
    from blosam_med.task_bundle import make_task_bundle

    adapter = Path(args.adapter) if args.adapter else shipped_adapter(args.task)
    preset = args.preset if args.preset or args.adapter else args.task
    out = make_task_bundle(args.out, adapter, preset=preset, link=args.link, overwrite=args.overwrite)
    print(json.dumps({"bundle": str(out), "model": str(out / "models" / "model.pt")}))
    return 0


# -------------------------------------------------------------------------------------------- infer
def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="prompt-free segmentation of images, DICOM, NIfTI volumes, folders, datalists")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", action="append", help="adapter file; repeat for several structures")
    which.add_argument(
        "--task",
        action="append",
        help="an adapter shipped with the package (lung_xray, lung_ct, polyp, "
        "teeth; see its MODEL_CARD.md); repeat for several structures",
    )
    p.add_argument("--input", required=True, help="image, DICOM file or series folder, NIfTI, folder or datalist")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--format",
        nargs="+",
        choices=("nifti", "png", "dicom-seg"),
        default=None,
        help="outputs (default: png for 2D; nifti and a png montage for volumes)",
    )
    p.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default=None, help="slicing axis of volumes")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per encoder/decoder call (default: 8 on a GPU, 1 on the CPU)",
    )
    p.add_argument("--probabilities", action="store_true", help="also write sigmoid probability maps (NIfTI)")
    p.add_argument("--labels", nargs="+", default=None, help="structure names, one per adapter")
    p.add_argument("--split", default=None, help="datalist input: only this split")
    p.add_argument("--checkpoint", default=None, help="backbone checkpoint for SAM/MedSAM backbones")
    p.add_argument("--cache-dir", default=None, help="reuse/fill an embedding cache")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision on a GPU (not on the CPU)")
    _add_engine(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute finished cases and replace existing outputs (a rerun skips finished cases)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="split the cases across torchrun processes (gloo on the CPU, nccl with cuda:LOCAL_RANK on GPUs)",
    )
    p.set_defaults(func=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    """Exit status 0, or 2 when any case failed (each failure is on stderr and in ``<out>/manifest.json``)."""
    from blosam_med import distributed
    from blosam_med.inference import run_inference
    from blosam_med.io import check_output_folder

    device = _process_device(args.device) if args.distributed else resolve_device(args.device)
    check_output_folder(args.out)
    if args.amp and device.type != "cuda":
        raise CLIError(
            f"--amp {args.amp}: mixed precision runs on a GPU only; on the CPU ({device}) inference runs in "
            "float32, so drop --amp"
        )
    if args.distributed:
        try:
            distributed.init_process_group(device)
        except RuntimeError as err:
            raise CLIError(f"--distributed: {err}") from err
    if args.adapter:
        adapters = args.adapter
    else:
        from blosam_med.model.shipped import shipped_adapter

        adapters = [str(shipped_adapter(task)) for task in args.task]
    records = run_inference(
        adapters,
        args.input,
        args.out,
        args.format,
        axis=args.axis,
        batch_size=args.batch_size,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        device=device,
        checkpoint=args.checkpoint,
        split=args.split,
        labels=args.labels,
        cache_dir=args.cache_dir,
        amp=args.amp,
        engine=args.engine,
    )
    failed = [r for r in records if r["status"] == "failed"]
    if distributed.get_rank() == 0:
        for record in records:
            print(json.dumps(record))
        for record in failed:
            print(f"blosam infer: error: case {record['case']} ({record['image']}): {record['error']}", file=sys.stderr)
    if args.distributed:  # every process reports before any exits (torchrun stops the rest when one exits non-zero)
        distributed.barrier()
        distributed.destroy_process_group()
    return 2 if failed else 0


# -------------------------------------------------------------------------------------------- study
def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="few-shot study grid (tasks x shots x seeds x methods) with MLflow and a report")
    p.add_argument("config", help="study YAML (configs/study/fewshot.yaml)")
    p.add_argument("--out", default=None, help="study folder (default: the config's output_dir)")
    p.add_argument("--data-root", default=None, help="folder with one sub-folder per task (default: the config's)")
    p.add_argument("--tasks", nargs="+", default=None, help="only these tasks")
    p.add_argument("--shots", type=int, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, help="only these methods (names in the config)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations of every bundle cell")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: $BLOSAM_CACHE or ~/.cache/blosam_med)")
    p.add_argument("--device", default="auto")
    _add_engine(
        p,
        default="torch",
        text="what runs the frozen encoder (default torch: a study's cells then share eager embeddings; auto: the "
        "fastest installed CPU runtime)",
    )
    p.add_argument("--no-tracking", action="store_true", help="no MLflow runs")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the finished cells (of the chosen tasks, shots, seeds, methods)",
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score finished trained cells again from their adapters with today's task presets (post-processing, "
        "flips, box refinement), without retraining",
    )
    p.set_defaults(func=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from blosam_med.study import load_study, run_study, write_report
    from blosam_med.study.records import sync_records

    overrides: dict = {}
    if args.out:
        overrides["output_dir"] = args.out
    if args.data_root:
        overrides["data_root"] = args.data_root
    if args.iterations is not None:
        overrides["train"] = {"iterations": args.iterations}
    config = load_study(args.config, overrides=overrides)
    try:
        chosen = config.subset(tasks=args.tasks, shots=args.shots, seeds=args.seeds, methods=args.methods)
    except KeyError as err:
        raise CLIError(f"{args.config}: {err.args[0]}") from None
    # a run's report covers the grid (widened by --shots/--seeds outside it); --report-only reports what was chosen
    config.shots = sorted({*config.shots, *chosen.shots})
    config.seeds = sorted({*config.seeds, *chosen.seeds})
    failed: dict = {}
    if args.report_only:
        sync_records(config)
        report = write_report(chosen)
    else:
        summary = run_study(
            config,
            device=resolve_device(args.device),
            cache_dir=args.cache_dir,
            tracking=not args.no_tracking,
            engine=args.engine,
            rescore=args.rescore,
            cells=chosen.cells(),
        )
        report, failed = summary["report"], summary["failed"]
    print(report["table"])
    print(
        json.dumps(
            {
                "report": str(config.output_dir / "report"),
                "cells": report["cells"],
                "cpu_minutes": round(report["cpu_seconds"] / 60, 1),
                "failed": sorted(failed),
            }
        )
    )
    for cell, error in failed.items():
        print(f"blosam study: cell {cell} failed: {error}", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------ registration
# Each entry adds one subcommand. Keep one ``_add_<name>`` function per subcommand above.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
    _add_prepare,
    _add_train,
    _add_evaluate,
    _add_infer,
    _add_study,
    _add_bundle,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blosam",
        description="Prompt-free few-shot segmentation with BLO-SAM on MONAI",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for p in sub.choices.values():
        p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        user_error = _user_error(err, getattr(args, "out", None))
        if user_error is None:
            raise
        print(f"blosam {args.command}: error: {user_error}", file=sys.stderr)
        return 2


def _user_error(err: BaseException, out: str | None = None) -> BaseException | None:
    """The user-facing error in an exception chain (MONAI's config parser wraps errors in RuntimeError); a failed
    ``torch.save`` outside our atomic writer (MONAI's CheckpointSaver) is reported as a write error of ``out``."""
    from blosam_med.io import torch_write_error

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, USER_ERRORS):
            return cause
        failed = torch_write_error(cause, out) if out else None
        if failed is not None:
            return failed
        cause = cause.__cause__ or cause.__context__
    return None
