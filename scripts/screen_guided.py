"""Score guided filtering of the predicted probability on the evaluation pools with adapters already trained.

    python scripts/screen_guided.py configs/study/outline.yaml --cache-dir runs/study_cache --engine openvino
    python scripts/screen_guided.py configs/study/outline.yaml --cache-dir runs/study_cache --radii 2 4 --eps 0.01

For every finished trained cell of the study (or every ``task=adapter.pt`` given), the adapter predicts the pool
with its task preset (flips, box refinement), then each ``(radius, eps)`` of
:func:`blosam_med.inference.guided.guided_logits` filters the probability with the windowed image as the guide;
prints the mean pool Dice after the preset's post-processing, so a preset's choice is made on the pool (never on the
test split).
"""

from __future__ import annotations

import numpy as np
import torch
from screen_refine import score, screen, screen_parser  # scripts/ is on the path when a script runs

from blosam_med.inference.guided import guided_logits
from blosam_med.inference.predictor import PresetOptions
from blosam_med.model import EmbeddingCache, PromptFreeModel


def main() -> None:
    parser = screen_parser(__doc__)
    parser.add_argument("--radii", type=int, nargs="+", default=[1, 2, 4, 8], help="window radii, image pixels")
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2], help="regularisation")
    args = parser.parse_args()

    def candidates(
        images: list[torch.Tensor],
        refs: list[np.ndarray],
        first: list[torch.Tensor],
        options: PresetOptions,
        cache: EmbeddingCache,
        models: list[PromptFreeModel],
    ) -> dict[str, float]:
        scores = {}
        for r in args.radii:
            for eps in args.eps:
                filtered = [guided_logits(im, lg, r, eps) for im, lg in zip(images, first, strict=True)]
                scores[f"r{r}e{eps:g}"] = score(filtered, refs, options["postprocess"])
        return scores

    screen(args, candidates, refine=True)


if __name__ == "__main__":
    main()
