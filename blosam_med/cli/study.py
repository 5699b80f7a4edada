"""``blosam study``: a few-shot study grid, its MLflow runs and its report."""

from __future__ import annotations

import argparse
import json
import sys

from blosam_med.cli.common import CLIError, _add_engine, resolve_device


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
