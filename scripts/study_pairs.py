"""Paired Dice differences between any two methods of a study's finished cells (same draws), with the report's
95 % bootstrap interval over draws and images.

    python scripts/study_pairs.py configs/study/fewshot.yaml single-ens2:single default:single-ens2
"""

from __future__ import annotations

import argparse

from blosam_med.study import load_study
from blosam_med.study.records import sync_records
from blosam_med.study.report import collect_results, paired_differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="study YAML")
    parser.add_argument("pairs", nargs="+", help="METHOD:BASELINE (method names in the config)")
    parser.add_argument("--out", default=None, help="study folder (default: the config's output_dir)")
    parser.add_argument("--digits", type=int, default=3, help="decimals of the printed differences")
    args = parser.parse_args()
    config = load_study(args.config, overrides={"output_dir": args.out} if args.out else None)
    names = [m.name for m in config.methods]
    for pair in args.pairs:
        if pair.count(":") != 1 or any(n not in names for n in pair.split(":")):
            parser.error(f"{pair!r}: give METHOD:BASELINE, two of the study's methods {names}")
    sync_records(config)  # cells kept only as committed records count too
    rows, d = collect_results(config), args.digits
    for pair in args.pairs:
        method, baseline = pair.split(":")
        for p in paired_differences(rows, method, baseline):
            print(
                f"{p['task']} {p['shots']} shots, {method} - {baseline}: {p['mean']:+.{d}f} "
                f"[{p['ci_low']:+.{d}f}, {p['ci_high']:+.{d}f}] (over {p['resampled']}), {p['wins']}/{p['n']} draws"
            )


if __name__ == "__main__":
    main()
