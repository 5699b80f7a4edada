"""The study's report: mean ± std over seeds per task, shots and method (markdown, CSV), plots and overlays."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from blosam_med.data.keys import SampleKeys
from blosam_med.io import atomic_write, write_json
from blosam_med.study.config import StudyConfig

__all__ = ["collect_results", "aggregate", "paired_differences", "write_report"]

logger = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "nsd")

#: A run "ends at empty masks" when it predicts nothing on at least this share of the scored images.
COLLAPSED = 0.95


def collapsed(row: dict[str, Any]) -> bool:
    """Whether a trained cell ended at empty masks (see :data:`COLLAPSED`)."""
    return bool(row["trains"] and row.get("empty_fraction") is not None and row["empty_fraction"] >= COLLAPSED)


def bootstrap_interval(
    diffs: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` (seeds x images), resampling seeds and images with replacement
    (a two-way bootstrap: draws and images both vary); a 1D array (one value per seed) resamples seeds only."""
    d = np.asarray(diffs, dtype=float)
    d = d[:, None] if d.ndim == 1 else d
    rng = np.random.default_rng(seed)
    s, n = d.shape
    means = np.empty(n_boot)
    for b in range(n_boot):
        means[b] = d[np.ix_(rng.integers(0, s, s), rng.integers(0, n, n))].mean()
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def collect_results(config: StudyConfig) -> list[dict[str, Any]]:
    """One row per finished cell of the study's grid: ids, mean test metrics over cases, times."""
    rows = []
    for cell in config.cells():
        path = config.output_dir / "cells" / cell.id / "result.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        rows.append(
            {
                "cell": cell.id,
                "task": cell.task,
                "method": cell.method.name,
                "label": cell.method.label,
                "trains": cell.method.trains,
                "shots": cell.shots,
                "seed": cell.seed,
                **{m: r["mean"][m]["mean"] for m in METRICS},
                "n_cases": r["mean"]["dice"]["n"],
                "test_dice": r["test"]["mean"]["dice"]["mean"] if "test" in r else None,
                "empty_fraction": (
                    float(np.mean([c["pred_empty"] for c in r["cases"]])) if r.get("cases") else r.get("empty_fraction")
                ),
                "case_dice": [c["dice"] for c in r.get("cases", [])],
                "dev_dice": r["dev"]["mean"]["dice"]["mean"] if "dev" in r else None,
                "wall_seconds": r["wall_seconds"],
                # a cell scored after an earlier process trained it: that training's wall seconds stand in for its CPU
                "cpu_seconds": r["cpu_seconds"]
                + (r["train"]["train_seconds"] if r.get("scored_after_training") else 0),
            }
        )
    return rows


def aggregate(config: StudyConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std (population) over seeds per (task, method, shots). A method that does not train has one value
    per task, repeated under every shot count."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        for shots in [r["shots"]] if r["trains"] else config.shots:
            groups[(r["task"], r["method"], shots)].append(r)
    out = []
    for task in config.tasks:
        for m in config.methods:
            for shots in config.shots:
                g = groups.get((task, m.name, shots))
                if not g:
                    continue
                agg = {
                    "task": task,
                    "method": m.name,
                    "label": m.label,
                    "shots": shots,
                    "n_seeds": len(g) if m.trains else 0,
                }
                agg["collapsed"] = sum(collapsed(r) for r in g)
                for k in (*METRICS, "dev_dice", "test_dice"):
                    if any(r.get(k) is None for r in g):
                        agg[f"{k}_mean"] = agg[f"{k}_std"] = None
                        continue
                    v = np.array([r[k] for r in g], dtype=float)
                    agg[f"{k}_mean"], agg[f"{k}_std"] = float(v.mean()), float(v.std()) if m.trains else None
                agg["cpu_seconds"] = float(sum(r["cpu_seconds"] for r in g))
                out.append(agg)
    return out


def paired_differences(
    rows: list[dict[str, Any]], method: str, baseline: str, metric: str = "dice"
) -> list[dict[str, Any]]:
    """``metric`` (Dice on the test split, or ``dev_dice``) of ``method`` minus ``baseline`` on the same draws
    (task, shots, seed): per (task, shots) the mean and range of the per-seed differences, and the seeds won."""
    by = {(r["task"], r["shots"], r["seed"], r["method"]): r for r in rows if r["trains"]}
    diffs: dict[tuple, list[float]] = defaultdict(list)
    per_image: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for (task, shots, seed, m), r in by.items():
        other = by.get((task, shots, seed, baseline))
        if m == method and other is not None and r.get(metric) is not None and other.get(metric) is not None:
            diffs[(task, shots)].append(r[metric] - other[metric])
            a, b = r.get("case_dice") or [], other.get("case_dice") or []
            if metric == "dice" and a and len(a) == len(b):
                per_image[(task, shots)].append(np.asarray(a, float) - np.asarray(b, float))
    out = []
    for (t, k), d in sorted(diffs.items()):
        grid = per_image.get((t, k), [])
        images = bool(grid) and len(grid) == len(d)  # else a cell without per-image scores: over draws only
        lo, hi = bootstrap_interval(np.stack(grid) if images else np.asarray(d))
        out.append(
            {
                "task": t,
                "shots": k,
                "method": method,
                "baseline": baseline,
                "metric": metric,
                "n": len(d),
                "mean": float(np.mean(d)),
                "min": float(np.min(d)),
                "max": float(np.max(d)),
                "wins": int(sum(x > 0 for x in d)),
                "ci_low": lo,
                "ci_high": hi,
                "resampled": "draws and images" if images else "draws",
            }
        )
    return out


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(config: StudyConfig, agg: list[dict], pairs: list[dict], totals: dict[str, Any]) -> str:
    index = {(a["task"], a["method"], a["shots"]): a for a in agg}
    pooled = [t for t, spec in config.tasks.items() if spec.get("eval")]
    where = f"evaluation pool ({', '.join(pooled)}), else test split" if pooled else "test split"
    lines = [
        f"Study `{config.name}` ({config.source}): mean ± std over seeds {config.seeds} of the per-cell mean "
        f"over the scored cases ({where}); methods without training have one value. Cells: {totals['cells']}, "
        f"CPU time {totals['cpu_seconds'] / 60:.1f} min, wall time {totals['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    tables = [
        ("dice", f"Dice ({where})", 3),
        ("hd95", f"HD95 ({where}; mm where the images carry a spacing, else pixels)", 1),
        ("dev_dice", "Dice on the development samples (training pool outside each draw)", 3),
    ]
    if pooled:
        tables.append(("test_dice", "Dice on the test split of the shots' folders (reported, never used to choose)", 3))
    for metric, title, digits in tables:
        if all(a.get(f"{metric}_mean") is None for a in agg):
            continue  # e.g. no development samples (dev_size 0)
        lines += [
            f"**{title}**",
            "",
            "| task | method | " + " | ".join(f"{k} shots" for k in config.shots) + " |",
            "| --- | --- | " + " | ".join("---" for _ in config.shots) + " |",
        ]
        for task in config.tasks:
            for m in config.methods:
                cells = [index.get((task, m.name, k)) for k in config.shots]
                if not any(cells):
                    continue
                vals = [_fmt(c[f"{metric}_mean"], c[f"{metric}_std"], digits) if c else "—" for c in cells]
                lines.append(f"| {task} | {m.label} | " + " | ".join(vals) + " |")
        lines.append("")
    if pairs:
        lines += [
            "**Paired Dice difference against the baseline on the same draws** (mean over seeds, [95 % bootstrap "
            "interval over seeds and images]; wins = seeds where the method is higher)",
            "",
            "| task | shots | method − baseline | Δ Dice | wins | Δ Dice dev | wins |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        dev = {(p["task"], p["shots"], p["method"]): p for p in pairs if p["metric"] == "dev_dice"}
        for p in (p for p in pairs if p["metric"] == "dice"):
            d = dev.get((p["task"], p["shots"], p["method"]))
            d_txt = f"{d['mean']:+.3f} [{d['min']:+.3f}, {d['max']:+.3f}] | {d['wins']}/{d['n']}" if d else "— | —"
            lines.append(
                f"| {p['task']} | {p['shots']} | {p['method']} − {p['baseline']} | {p['mean']:+.3f} "
                f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]{'' if p['resampled'] != 'draws' else ' *'} | "
                f"{p['wins']}/{p['n']} | {d_txt} |"
            )
        if any(p["resampled"] == "draws" for p in pairs if p["metric"] == "dice"):
            lines.append("\n\\* over draws only: some of these cells keep no per-image scores (restored summaries).")
        lines.append("")
    stuck = [(a["label"], a["task"], a["shots"], a["collapsed"], a["n_seeds"]) for a in agg if a.get("collapsed")]
    trained = sum(a["n_seeds"] for a in agg)
    lines += [
        f"**Runs that ended at empty masks** (nothing predicted on ≥ {COLLAPSED:.0%} of the scored images): "
        f"{sum(x[3] for x in stuck)} of {trained} trained runs"
        + (": " + "; ".join(f"{lab} {t} {k} shots: {c}/{n}" for lab, t, k, c, n in stuck) if stuck else "."),
        "",
    ]
    return "\n".join(lines)


def _plot_dice(config: StudyConfig, agg: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(config.tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for m in config.methods:
            pts = [a for a in agg if a["task"] == task and a["method"] == m.name]
            if not pts:
                continue
            x = [a["shots"] for a in pts]
            y = np.array([a["dice_mean"] for a in pts])
            if m.trains:
                e = np.array([a["dice_std"] for a in pts])
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m.label)
            else:
                ax.plot(x, y, linestyle="--", label=m.label)
        ax.set_title(task)
        ax.set_xscale("log", base=2)
        ax.set_xticks(config.shots, [str(k) for k in config.shots])
        ax.set_xlabel("shots")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test Dice")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()), overwrite=True)


def _plot_overlays(config: StudyConfig, ctx: Any, task: str, path: Path) -> bool:
    """Test images with the reference contour (first column) and each method's mask at the largest shot count,
    first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = ctx.preview_indices(task)
    shots, seed = max(config.shots), config.seeds[0]
    columns = []
    for m in config.methods:
        cell_id = f"{task}/k{shots}_s{seed}/{m.name}" if m.trains else f"{task}/{m.name}"
        f = config.output_dir / "cells" / cell_id / "preview.npz"
        if f.is_file():
            columns.append((m.label, np.load(f)))
    if not idx or not columns:
        return False
    samples = ctx.test_samples[task]
    fig, axes = plt.subplots(
        len(idx), len(columns) + 1, figsize=(2.2 * (len(columns) + 1), 2.2 * len(idx)), squeeze=False
    )
    for r, i in enumerate(idx):
        image = samples[i][SampleKeys.IMAGE].permute(1, 2, 0).numpy()
        image = image[..., 0] if image.shape[-1] == 1 else image
        label = samples[i][SampleKeys.LABEL][0].numpy()
        for c, (title, masks) in enumerate([("reference", None)] + columns):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray")
            if masks is not None and f"m{i}" in masks:
                ax.imshow(np.ma.masked_equal(masks[f"m{i}"], 0), cmap="autumn", alpha=0.45)
            ax.contour(label, levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"{task}: {shots} shots, seed {seed} (green: reference contour)", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def write_report(config: StudyConfig, ctx: Any | None = None) -> dict[str, Any]:
    """Write ``<output_dir>/report/``: ``table.md``, ``table.csv`` (aggregated), ``cells.csv`` (one row per cell),
    ``dice_vs_shots.png``, ``overlays_<task>.png`` (when ``ctx`` holds the test samples) and ``summary.json``."""
    folder = config.output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    rows = collect_results(config)
    agg = aggregate(config, rows)
    names = {m.name for m in config.methods}
    pairs = [
        p
        for m in config.methods
        if m.kind == "bundle"
        for base in [m.options.get("baseline", "single")]
        if base in names and base != m.name
        for metric in ("dice", "dev_dice")
        for p in paired_differences(rows, m.name, base, metric)
    ]
    totals = {
        "cells": len(rows),
        "cpu_seconds": float(sum(r["cpu_seconds"] for r in rows)),
        "wall_seconds": float(sum(r["wall_seconds"] for r in rows)),
    }
    files = []

    def put_csv(name: str, records: list[dict]) -> None:
        buf = io.StringIO()
        if records:
            w = csv.DictWriter(buf, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
        files.append(atomic_write(folder / name, lambda tmp: tmp.write_text(buf.getvalue()), overwrite=True))

    put_csv("table.csv", agg)
    put_csv("cells.csv", [{k: v for k, v in r.items() if k != "case_dice"} for r in rows])
    md = _markdown(config, agg, pairs, totals)
    files.append(atomic_write(folder / "table.md", lambda tmp: tmp.write_text(md), overwrite=True))
    if agg:
        _plot_dice(config, agg, folder / "dice_vs_shots.png")
        files.append(folder / "dice_vs_shots.png")
    if ctx is not None:
        for task in config.tasks:
            if task in ctx.test_samples and _plot_overlays(config, ctx, task, folder / f"overlays_{task}.png"):
                files.append(folder / f"overlays_{task}.png")
    summary = {**totals, "aggregate": agg, "paired": pairs, "collapsed": [r["cell"] for r in rows if collapsed(r)]}
    files.append(write_json(folder / "summary.json", summary, overwrite=True))
    return {**totals, "files": [str(f) for f in files], "table": md}
