"""Score test-time flips on the evaluation pools with adapters already trained (no retraining).

    python scripts/screen_tta.py configs/study/screen.yaml --cache-dir runs/study_cache
    python scripts/screen_tta.py configs/study/screen.yaml --cache-dir runs/study_cache --adapter lung_xray=runs/shipped/lung_xray/adapter.pt

For every finished trained cell of the study (or every ``task=adapter.pt`` given), prints the mean pool Dice without
flips and with each set of flips (the flipped logits flipped back and averaged as probabilities), after the task
preset's post-processing, so the presets' ``tta`` choice is made on the evaluation pool (never on the test split).
Flipped embeddings go to the cache like any other input.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from blosam_med.data import FLIPS, SampleKeys, load_task
from blosam_med.inference import Predictor, load_adapters, preset_options
from blosam_med.inference.predictor import binary_masks
from blosam_med.model import EmbeddingCache
from blosam_med.study.config import StudyConfig, load_study
from blosam_med.study.runner import eval_samples

#: flip sets as Predictor(flips=..) averages them: the unflipped pass and each named flip of FLIPS
CANDIDATES: dict[str, list[tuple[int, ...]]] = {
    name: [(), *(FLIPS[f] for f in ("" if name == "none" else name))] for name in ("none", "h", "v", "hv")
}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, ref).sum() / total)


def adapter_jobs(
    config: StudyConfig, adapters: list[str], tasks: list[str] | None, methods: list[str] | None = None
) -> list[tuple[str, Path]]:
    """``(task, adapter.pt)`` pairs: the ``task=path`` given, else every finished trained cell of the study."""
    if adapters:
        jobs = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in adapters]
    else:
        jobs = [
            (task, p)
            for task in config.tasks
            for p in sorted((config.output_dir / "cells" / task).glob("k*_s*/*/train/adapter.pt"))
            if not methods or p.parent.parent.name in methods
        ]
    return [(t, p) for t, p in jobs if not tasks or t in tasks]


def record(by_method: dict, task: str, path: Path, label: str, scores: dict[str, float]) -> None:
    """Keep one adapter's scores under (task, method, setting) and print them with their change against ``none``."""
    for name, v in scores.items():
        by_method[(task, path.parent.parent.name, name)].append(v)
    print(label, "  ".join(f"{n} {v:.4f} ({v - scores['none']:+.4f})" for n, v in scores.items()), flush=True)


def print_means(by_method: dict[tuple[str, str, str], list[float]], what: str) -> None:
    """Per (task, method): each setting's mean Dice over the adapters and its change against ``none``."""
    print(f"\nmean over adapters (task, method): {what} mean Dice (change vs none)")
    for task, method in sorted({(t, m) for t, m, _ in by_method}):
        base = float(np.mean(by_method[(task, method, "none")]))
        names = list(dict.fromkeys(n for t, m, n in by_method if (t, m) == (task, method)))
        means = {n: float(np.mean(by_method[(task, method, n)])) for n in names}
        row = "  ".join(f"{n} {v:.4f} ({v - base:+.4f})" for n, v in means.items())
        print(f"{task} {method} [{len(by_method[(task, method, 'none')])}]: {row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--adapter", action="append", default=[], help="task=path (instead of the study's cells)")
    parser.add_argument("--tasks", nargs="*")
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.5], help="probability thresholds to score (0.5: logit > 0)"
    )
    parser.add_argument("--out", help="write the per-adapter scores to this JSON file")
    parser.add_argument("--engine", default="torch", help="engine for the images as given (default torch, as a study)")
    parser.add_argument(
        "--flip-engine",
        default="torch",
        help="engine for the flipped images (their own cache entries): auto, torch, ..",
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    config = load_study(args.config)
    jobs = adapter_jobs(config, args.adapter, args.tasks)
    pools: dict[str, list[dict]] = {}
    results: dict[str, dict[str, float]] = {}
    by_method: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for task, path in jobs:
        if task not in pools:
            pools[task] = eval_samples(config, task, load_task(config.tasks[task]["preset"]))
        pool = pools[task]
        models, _, presets = load_adapters([path])
        post = preset_options(presets)["postprocess"]
        predictor = Predictor(
            models,
            EmbeddingCache(models[0].backbone, args.cache_dir, engine=args.engine),
            batch_size=4,
            postprocess=post,
        )
        flipper = Predictor(
            models, EmbeddingCache(models[0].backbone, args.cache_dir, engine=args.flip_engine), batch_size=4
        )
        images = [s[SampleKeys.IMAGE] for s in pool]
        refs = [s[SampleKeys.LABEL][0].numpy() > 0 for s in pool]
        needed = sorted({f for c in args.candidates for f in CANDIDATES[c]})
        probs = {}
        for dims in needed:
            flipped = [torch.flip(im, dims) if dims else im for im in images]
            logits = (flipper if dims else predictor).logits(
                flipped, progress=True, desc=f"{path.parent.parent.name} flip {dims}"
            )
            probs[dims] = [torch.sigmoid(torch.flip(lg, dims) if dims else lg) for lg in logits]
        scores = {}
        for name, t in [(n, t) for n in args.candidates for t in args.thresholds]:
            vals = []
            for i, ref in enumerate(refs):
                p = torch.stack([probs[d][i] for d in CANDIDATES[name]]).mean(0)
                lg = torch.logit(p, eps=1e-6) - float(np.log(t / (1 - t)))  # > 0 where p > t
                vals.append(dice(binary_masks(lg, post)[0].numpy().astype(bool), ref))
            scores[name if t == 0.5 else f"{name}@{t}"] = float(np.mean(vals))
        label = f"{task}/{path.parent.parent.parent.name}/{path.parent.parent.name}"
        results[label] = scores
        record(by_method, task, path, label, scores)
    print_means(by_method, "candidate")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
