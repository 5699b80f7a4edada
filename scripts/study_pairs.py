"""Paired Dice differences between any two methods of a study's finished cells (same draws), with the report's
95 % bootstrap interval over draws and images.

    python scripts/study_pairs.py configs/study/fewshot.yaml single-ens2:single default:single-ens2
    python scripts/study_pairs.py configs/study/res512.yaml single:single --against configs/study/fewshot.yaml

With ``--against``, each BASELINE is a method of that other study (same draws and pools: the cells pair by task, shots
and seed, and their per-image scores by the pool's order).
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
    parser.add_argument("--against", default=None, help="study YAML whose methods are the baselines")
    parser.add_argument("--digits", type=int, default=3, help="decimals of the printed differences")
    args = parser.parse_args()
    config = load_study(args.config, overrides={"output_dir": args.out} if args.out else None)
    other = load_study(args.against) if args.against else config
    names, base_names = [m.name for m in config.methods], [m.name for m in other.methods]
    for pair in args.pairs:
        if pair.count(":") != 1 or pair.split(":")[0] not in names or pair.split(":")[1] not in base_names:
            parser.error(f"{pair!r}: give METHOD:BASELINE, methods of the studies ({names}; baselines {base_names})")
    rows, d = [], args.digits
    for study in [config] if other is config else [config, other]:
        sync_records(study)  # cells kept only as committed records count too
        tag = "" if study is config else f"@{study.name}"
        rows += [{**r, "method": r["method"] + tag} for r in collect_results(study)]
    for pair in args.pairs:
        method, baseline = pair.split(":")
        baseline += f"@{other.name}" if other is not config else ""
        for p in paired_differences(rows, method, baseline):
            print(
                f"{p['task']} {p['shots']} shots, {method} - {baseline}: {p['mean']:+.{d}f} "
                f"[{p['ci_low']:+.{d}f}, {p['ci_high']:+.{d}f}] (over {p['resampled']}), {p['wins']}/{p['n']} draws"
            )


if __name__ == "__main__":
    main()
