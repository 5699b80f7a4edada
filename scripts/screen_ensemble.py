"""Score ensembles of adapters already trained on the same draw (no retraining), e.g. a 2-fold A/B cross-fit.

    python scripts/screen_ensemble.py configs/study/screen.yaml --cache-dir runs/study_cache --engine openvino \\
        --tasks polyp --ensemble crossfit=blosam-views-best+blosam-views-best-f1 \\
        --ensemble default+blosam=single-views+blosam-views-best

For every draw (``k<shots>_s<seed>`` folder of the study's cells) where all members of an ensemble have a finished
cell, the members and their ensemble (one :class:`blosam_med.model.AdapterEnsemble`, what ``blosam train
--cross-fit`` writes: the logit of the members' mean probability) predict the task's evaluation pool with the task
preset's flips, box refinement and post-processing, as ``blosam infer`` does. Prints each member's and each ensemble's mean pool Dice per draw, and the
ensemble's change against its first member and against the mean of its members.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import cast

import numpy as np
import torch
from screen_tta import dice  # scripts/ is on the path when a script runs

from blosam_med.data import SampleKeys, TaskConfig, load_task
from blosam_med.inference import Predictor, load_adapters, preset_options
from blosam_med.model import AdapterEnsemble, BloSam, EmbeddingCache
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
    """Mean pool Dice of each member and of their ensemble (:class:`AdapterEnsemble`), with the preset's inference.

    One :class:`Predictor` runs them all: the encoder once per image and flip, then every row's refinement and
    post-processing (the ensemble's members decode again inside it: decoder calls only)."""
    members, _, _ = load_adapters(paths)
    models = [*members, AdapterEnsemble(cast(list[BloSam], members))]
    cache = EmbeddingCache(members[0].backbone, cache_dir, engine=engine)
    predictor = Predictor(models, cache, batch_size=1, **preset_options([preset] * len(models)))
    names = [p.parent.parent.name for p in paths] + ["ensemble"]
    found: dict[str, list[float]] = {n: [] for n in names}
    for sample in pool:
        ref = sample[SampleKeys.LABEL][0].numpy() > 0
        masks = predictor.masks([sample[SampleKeys.IMAGE]])[0]  # (rows, H, W)
        for name, mask in zip(names, masks, strict=True):
            found[name].append(dice(mask.numpy() > 0, ref))
    return {n: float(np.mean(v)) for n, v in found.items()}


if __name__ == "__main__":
    main()
