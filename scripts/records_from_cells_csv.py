"""Cell records (``study.records``) from a study report's ``cells.csv``, for cells whose folders were lost before the
study kept records: each cell's means only, marked ``summary_only``; paired intervals over such cells resample draws,
not images. Cells that already have a record are left alone.

    python scripts/records_from_cells_csv.py configs/study/fewshot.yaml docs/results/fewshot_grid_cells.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from blosam_med.study import load_study
from blosam_med.study.records import record_path, save_record


def _number(text: str) -> float | None:
    return float(text) if text not in ("", "None", "nan") else None


def summary_record(row: dict[str, str], source: str) -> dict:
    """A record holding what one ``cells.csv`` row keeps: mean scores, empty fraction, times."""
    n = int(row["n_cases"])
    record: dict = {
        "mean": {m: {"mean": _number(row[m]), "n": n} for m in ("dice", "hd95", "nsd")},
        "cases": [],
        "empty_fraction": _number(row["empty_fraction"]),
        "cell": row["cell"],
        "task": row["task"],
        "method": row["method"],
        "label": row["label"],
        "shots": int(row["shots"]) if row["shots"] else None,
        "seed": int(row["seed"]) if row["seed"] else None,
        "wall_seconds": float(row["wall_seconds"]),
        "cpu_seconds": float(row["cpu_seconds"]),  # the report's figure: training included
        "summary_only": f"restored from {source}: per-image scores, masks and adapters were lost",
    }
    if _number(row["test_dice"]) is not None:
        record["test"] = {"mean": {"dice": {"mean": _number(row["test_dice"])}}}
    if _number(row["dev_dice"]) is not None:
        record["dev"] = {"mean": {"dice": {"mean": _number(row["dev_dice"])}}}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="study YAML with a 'records' folder")
    parser.add_argument("cells_csv", help="a report's cells.csv")
    args = parser.parse_args()
    config = load_study(args.config)
    if config.records is None:
        parser.error(f"{args.config}: the study keeps no records (study.records)")
    cells = {c.id: c for c in config.cells()}
    with open(args.cells_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    written, kept = 0, 0
    for row in rows:
        cell = cells.get(row["cell"])
        if cell is None:
            parser.error(f"{args.cells_csv}: cell {row['cell']!r} is not in {args.config}'s grid")
        path = record_path(config, cell)
        if path is not None and path.is_file():
            kept += 1
            continue
        save_record(config, cell, summary_record(row, Path(args.cells_csv).as_posix()))
        written += 1
    print(f"{written} records written to {config.records}, {kept} kept")


if __name__ == "__main__":
    main()
