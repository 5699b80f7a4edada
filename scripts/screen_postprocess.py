"""Score mask post-processing candidates on the saved evaluation-pool masks of a finished study (no retraining).

    python scripts/screen_postprocess.py configs/study/screen.yaml

For every task and candidate (keep the n largest components, fill holes), prints the mean pool Dice over the
finished trained cells of each method, and the change against no post-processing, so the task presets' choice is
made on the evaluation pool (never on the test split).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterator
from itertools import product
from pathlib import Path

import numpy as np
import torch

from blosam_med.data import load_task
from blosam_med.inference.postprocess import mask_postprocess
from blosam_med.study.config import StudyConfig, load_study
from blosam_med.study.runner import eval_samples


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, ref).sum() / total)


def unpack(npz: np.lib.npyio.NpzFile, i: int) -> np.ndarray:
    shape = tuple(npz["shapes"][i])
    return np.unpackbits(npz[f"m{i}"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def pool_references(config: StudyConfig) -> Iterator[tuple[str, list[np.ndarray]]]:
    """Per task with an evaluation pool: its name and the pool's reference masks, (H, W) bool, in pool order."""
    for task in config.tasks:
        pool = eval_samples(config, task, load_task(config.tasks[task]["preset"]))
        if pool:
            yield task, [s["label"][0].numpy() > 0 for s in pool]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--components", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    config = load_study(args.config)
    for task, refs in pool_references(config):
        scores: dict[tuple, list[float]] = defaultdict(list)
        for path in sorted((config.output_dir / "cells" / task).glob("k*_s*/*/eval_masks.npz")):
            method = Path(path).parent.name
            masks = np.load(path)
            for k, fill in product(args.components, (False, True)):
                post = mask_postprocess(k, fill)
                vals = []
                for i, ref in enumerate(refs):
                    m = unpack(masks, i)
                    if post is not None and m.any():
                        m = post(torch.as_tensor(m[None]))[0].numpy().astype(bool)
                    vals.append(dice(m, ref))
                scores[(method, k, fill)].append(float(np.mean(vals)))
        methods = sorted({m for m, _, _ in scores})
        print(f"\n{task}: mean pool Dice over finished cells (cells per method in brackets)")
        print(
            "method".ljust(28)
            + "".join(f"k={k},{'fill' if f else 'none'}".rjust(14) for k, f in product(args.components, (False, True)))
        )
        for m in methods:
            base = np.mean(scores[(m, 0, False)])
            row = [np.mean(scores[(m, k, f)]) for k, f in product(args.components, (False, True))]
            print(
                f"{m} ({len(scores[(m, 0, False)])})".ljust(28)
                + "".join(f"{v:.4f}{v - base:+.3f}".rjust(14) for v in row)
            )


if __name__ == "__main__":
    main()
