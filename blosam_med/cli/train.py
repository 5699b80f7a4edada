"""``blosam train``: few-shot training, the bundle's train.yaml with the command line's overrides."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from blosam_med.cli.common import CLIError, _add_engine, _bundle_defaults, _process_device, resolve_device

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

#: ``blosam train --amp`` values: the bundle's ``amp`` (bfloat16 autocast is the only one training takes).
AMP = {"bf16": True}


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
    p.add_argument(
        "--amp",
        choices=list(AMP),
        default=None,
        help="the decoder's training passes in bfloat16 autocast, CPU or GPU (opt-in: 1.4x per iteration on a CPU "
        "with avx512_bf16, polyp pool Dice -0.01; refused on a CPU without native bfloat16; docs/speed.md)",
    )
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
    if args.amp:  # refused before any work (the fold processes would each refuse it)
        from blosam_med.engine.trainer import bf16_autocast_kwargs

        try:
            bf16_autocast_kwargs({}, device)
        except ValueError as err:
            raise CLIError(f"--amp {args.amp}: {err}") from err
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
    if args.amp:
        override["amp"] = AMP[args.amp]
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
