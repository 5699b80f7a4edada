"""``blosam evaluate``: Dice, HD95 and NSD of an adapter on a datalist split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blosam_med.cli.common import _add_engine, _add_int8, resolve_device


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
    _add_int8(p)
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
        int8_encoder=args.int8_encoder,
        tracking_uri=(args.tracking_uri or sqlite_uri(Path(args.adapter).parent)) if args.tracking else None,
    )
    print(json.dumps({"split": args.split, "cases": len(result["cases"]), **result["mean"]}))
    return 0
