"""Mean per-image scores of study cells, grouped by a pattern in the case names (the teeth pool's ``cate5-...``).

    python scripts/cell_groups.py docs/results/fewshot_cells/teeth/k4_s0/default.json --pattern 'cate(\\d+)'
    python scripts/cell_groups.py docs/results/fewshot_cells/teeth/k4_s*/default.json --pattern 'cate(\\d+)' --rest 5 10

Reads each cell's ``result.json`` or record (its ``cases``: one score per pool image) and prints, per group (the
pattern's first group; cases it does not match are ``-``), the number of images and the mean Dice (``--metric``) per
cell. ``--rest G ..`` adds a line for all images outside those groups. Exits with a message for a cell without
per-image scores (records rebuilt from a report's cells.csv keep means only).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def grouped(path: Path, pattern: re.Pattern[str], metric: str) -> dict[str, list[float]]:
    """``{group: [score per image]}`` of one cell (images without a score, e.g. an undefined HD95, are left out)."""
    cell = json.loads(path.read_text())
    cases = cell.get("cases")
    if not cases:
        sys.exit(f"{path}: no per-image scores ({cell.get('summary_only', 'no cases')})")
    groups: dict[str, list[float]] = defaultdict(list)
    for case in cases:
        if case.get(metric) is None:
            continue
        found = pattern.search(str(case["case"]))
        name = "-" if found is None else found.group(1 if pattern.groups else 0)
        groups[name].append(case[metric])
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", type=Path, help="result.json files or cell records")
    parser.add_argument("--pattern", required=True, help="regular expression searched in each case name")
    parser.add_argument("--metric", default="dice")
    parser.add_argument("--rest", nargs="*", default=[], help="groups to leave out of an extra 'rest' line")
    args = parser.parse_args()
    pattern = re.compile(args.pattern)
    cells = {str(p): grouped(p, pattern, args.metric) for p in args.cells}
    names = sorted(
        {g for c in cells.values() for g in c}, key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g)
    )
    rows = [(g, {p: c.get(g, []) for p, c in cells.items()}) for g in names]
    if args.rest:
        rows.append(
            (
                f"not {','.join(args.rest)}",
                {p: [v for g, vs in c.items() if g not in args.rest for v in vs] for p, c in cells.items()},
            )
        )
    print("group\t" + "\t".join(cells))
    for name, per_cell in rows:
        text = [f"{np.mean(v):.3f} ({len(v)})" if v else "-" for v in per_cell.values()]
        print(f"{name}\t" + "\t".join(text))


if __name__ == "__main__":
    main()
