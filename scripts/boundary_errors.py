"""Where a study's pool masks are wrong: how much of the error lies on the reference mask's boundary.

    python scripts/boundary_errors.py configs/study/fewshot.yaml --method default --cells k4_s0 k4_s1

For every task and finished cell of ``--method``, prints the pool Dice and the share of wrong pixels (false positives
and false negatives) within 1, 2 and 4 pixels of the reference boundary, at the original resolution; then the Dice a
perfect mask keeps after passing through a coarser grid (area-downsampled to n x n, bilinear back, threshold 0.5), to
tell apart errors of placement (whole regions wrong) from errors of resolution (outlines a pixel or two off).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from screen_postprocess import dice, pool_references, unpack

from blosam_med.study.config import load_study

DISTANCES = (1, 2, 4)


def near_boundary(pred: np.ndarray, ref: np.ndarray) -> tuple[int, list[int]]:
    """(wrong pixels, how many of them lie within each of :data:`DISTANCES` pixels of ``ref``'s boundary)."""
    wrong = pred ^ ref
    boundary = ref ^ ndimage.binary_erosion(ref)
    dist = ndimage.distance_transform_edt(~boundary) if boundary.any() else np.full(ref.shape, np.inf)
    return int(wrong.sum()), [int((wrong & (dist <= d)).sum()) for d in DISTANCES]


def through_grid(ref: np.ndarray, size: int) -> np.ndarray:
    """``ref`` area-downsampled to ``size`` x ``size``, bilinear back to its own size, thresholded at 0.5."""
    t = torch.from_numpy(ref.astype(np.float32))[None, None]
    low = F.interpolate(t, size=(size, size), mode="area")
    return (F.interpolate(low, size=ref.shape, mode="bilinear", align_corners=False) > 0.5)[0, 0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--method", default="default")
    parser.add_argument("--cells", nargs="+", default=["k4_s0"], help="cell folders (k<shots>_s<seed>)")
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128, 256])
    args = parser.parse_args()
    config = load_study(args.config)
    for task, refs in pool_references(config):
        for cell in args.cells:
            path = config.output_dir / "cells" / task / cell / args.method / "eval_masks.npz"
            if not path.is_file():
                print(f"{task} {cell}: no {path}")
                continue
            masks = np.load(path)
            wrong, near, dices = 0, np.zeros(len(DISTANCES)), []
            for i, ref in enumerate(refs):
                pred = unpack(masks, i)
                dices.append(dice(pred, ref))
                w, n = near_boundary(pred, ref)
                wrong, near = wrong + w, near + n
            shares = ", ".join(f"{d} px {v / max(wrong, 1):.3f}" for d, v in zip(DISTANCES, near, strict=True))
            print(
                f"{task} {cell} {args.method}: pool Dice {np.mean(dices):.4f}; wrong pixels near the boundary: {shares}"
            )
        ceiling = {n: np.mean([dice(through_grid(r, n), r) for r in refs]) for n in args.grids}
        print(
            f"{task}: Dice of the reference through an n x n grid: "
            + ", ".join(f"{n}: {v:.4f}" for n, v in ceiling.items())
        )


if __name__ == "__main__":
    main()
