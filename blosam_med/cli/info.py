"""``blosam info``, ``blosam prepare`` and ``blosam bundle``: describe a backbone, check a data folder into a
datalist, write a model-zoo bundle of an adapter."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
