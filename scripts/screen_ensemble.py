"""Score ensembles of adapters already trained on the same draw (no retraining), e.g. a 2-fold A/B cross-fit.

    python scripts/screen_ensemble.py configs/study/screen.yaml --cache-dir runs/study_cache --engine openvino \\
        --tasks polyp --ensemble crossfit=blosam-views-best+blosam-views-best-f1 \\
        --ensemble default+blosam=single-views+blosam-views-best

For every draw (``k<shots>_s<seed>`` folder of the study's cells) where all members of an ensemble have a finished
cell, the members predict the task's evaluation pool with the task preset's flips (as ``blosam infer`` does), the
ensemble's logit is that of their mean probability, then the preset's box refinement and post-processing act on
each member and on the ensemble alike. Prints each member's and each ensemble's mean pool Dice per draw, and the
ensemble's change against its first member and against the mean of its members.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from screen_tta import dice  # scripts/ is on the path when a script runs

from blosam_med.data import SampleKeys, TaskConfig, load_task
from blosam_med.inference import Predictor, load_adapters, preset_options
from blosam_med.inference.predictor import binary_masks
from blosam_med.inference.refine import BoxRefiner
from blosam_med.model import EmbeddingCache, mean_probability_logit
from blosam_med.study.config import load_study
from blosam_med.study.runner import eval_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--ensemble", action="append", required=True, help="name=method+method[+...] (study methods)")
    parser.add_argument("--tasks", nargs="*")
    parser.add_argument("--draws", nargs="*", help="only these draws (k<shots>_s<seed> folders)")
    parser.add_argument("--engine", default="torch", help="encoder engine (the study's)")
    parser.add_argument("--out", help="write the per-draw scores to this JSON file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    config = load_study(args.config)
    ensembles = {e.split("=", 1)[0]: e.split("=", 1)[1].split("+") for e in args.ensemble}
    results: dict[str, dict[str, float]] = {}
    for task in [t for t in config.tasks if not args.tasks or t in args.tasks]:
        preset = load_task(config.tasks[task]["preset"])
        pool: list[dict] = []
        for draw in sorted((config.output_dir / "cells" / task).glob("k*_s*")):
            if args.draws and draw.name not in args.draws:
                continue
            for name, members in ensembles.items():
                paths = [draw / m / "train" / "adapter.pt" for m in members]
                if not all(p.is_file() for p in paths):
                    continue
                pool = pool or eval_samples(config, task, preset)
                scores = score(paths, pool, preset, args.cache_dir, args.engine)
                label = f"{task}/{draw.name}/{name}"
                results[label] = scores
                members_mean = float(np.mean([scores[str(p.parent.parent.name)] for p in paths]))
                first = scores[members[0]]
                print(
                    label,
                    "  ".join(f"{n} {v:.4f}" for n, v in scores.items()),
                    f"| ensemble vs first {scores['ensemble'] - first:+.4f}, vs member mean "
                    f"{scores['ensemble'] - members_mean:+.4f}",
                    flush=True,
                )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def score(paths: list[Path], pool: list[dict], preset: TaskConfig, cache_dir: str, engine: str) -> dict[str, float]:
    """Mean pool Dice of each member and of their probability-averaged ensemble, with the preset's inference."""
    models, _, _ = load_adapters(paths)
    options = preset_options([preset] * len(models))
    cache = EmbeddingCache(models[0].backbone, cache_dir, engine=engine)
    predictor = Predictor(models, cache, flips=options["flips"], batch_size=1)
    refiner = BoxRefiner(models[0].backbone, preset.refine_boxes, preset.refine_gate) if preset.refine_boxes else None
    names = [p.parent.parent.name for p in paths] + ["ensemble"]
    found: dict[str, list[float]] = {n: [] for n in names}
    for sample in pool:
        image, ref = sample[SampleKeys.IMAGE], sample[SampleKeys.LABEL][0].numpy() > 0
        logits = predictor.logits([image])[0]  # (members, H, W), flips averaged per member
        per = list(logits) + [mean_probability_logit(list(logits))]
        embedding = cache.embed([image]) if refiner else None
        for name, lg in zip(names, per, strict=True):
            lg = refiner(embedding, lg) if refiner is not None and embedding is not None else lg
            found[name].append(dice(binary_masks(lg[None], options["postprocess"][:1])[0].numpy() > 0, ref))
    return {n: float(np.mean(v)) for n, v in found.items()}


if __name__ == "__main__":
    main()
