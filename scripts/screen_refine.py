"""Score box refinement settings on the evaluation pools with adapters already trained (no retraining).

    python scripts/screen_refine.py configs/study/screen.yaml --cache-dir runs/study_cache --tasks polyp
    python scripts/screen_refine.py configs/study/screen.yaml --cache-dir runs/study_cache \\
        --adapter lung_xray=runs/shipped/lung_xray/adapter.pt --components 2 99 --gates 0.6 0.8

For every finished trained cell of the study (or every ``task=adapter.pt`` given), the adapter predicts the pool with
the current task preset's flips (as ``blosam infer`` does), then each ``(components, gate)`` of
:class:`blosam_med.inference.refine.BoxRefiner` re-segments the mask from box prompts; prints the mean pool Dice
after the preset's post-processing, so the presets' ``refine_boxes``/``refine_gate`` are chosen on the pool (never on
the test split).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from screen_tta import adapter_jobs, dice, print_means, record  # scripts/ is on the path when a script runs

from blosam_med.data import SampleKeys, load_task
from blosam_med.inference import Predictor, load_adapters, preset_options
from blosam_med.inference.predictor import PresetOptions, binary_masks
from blosam_med.inference.refine import BoxRefiner
from blosam_med.model import EmbeddingCache, PromptFreeModel
from blosam_med.study.config import load_study
from blosam_med.study.runner import eval_samples


def score(logits: list[torch.Tensor], refs: list[np.ndarray], postprocess: list) -> float:
    """Mean Dice of (H, W) logits against the reference masks, after the preset's post-processing."""
    masks = [binary_masks(lg[None], postprocess)[0].numpy() > 0 for lg in logits]
    return float(np.mean([dice(m, r) for m, r in zip(masks, refs, strict=True)]))


def screen_parser(doc: str) -> argparse.ArgumentParser:
    """The options every screening of saved adapters on the pools shares (the study, adapters, engine, output)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--adapter", action="append", default=[], help="task=path (instead of the study's cells)")
    parser.add_argument("--tasks", nargs="*")
    parser.add_argument("--methods", nargs="*", help="only these study methods' cells")
    parser.add_argument("--engine", default="torch", help="encoder engine (the study's: torch)")
    parser.add_argument("--threshold", type=float, help="decision threshold instead of the preset's (with refine)")
    parser.add_argument("--out", help="write the per-adapter scores to this JSON file")
    return parser


def screen(args: argparse.Namespace, candidates: Callable[..., dict[str, float]], refine: bool = False) -> None:
    """Every adapter of ``args`` predicts its task's pool with today's preset (flips, post-processing; with ``refine``
    also box refinement and the threshold, ``args.threshold`` if given), then ``candidates(images, refs, first, options, cache, models)`` scores
    the settings against ``none``; prints each adapter's scores and their means per method."""
    torch.set_grad_enabled(False)
    config = load_study(args.config)
    pools: dict[str, list[dict]] = {}
    results: dict[str, dict[str, float]] = {}
    by_method: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for task, path in adapter_jobs(config, args.adapter, args.tasks, args.methods):
        preset = load_task(config.tasks[task]["preset"])
        if task not in pools:
            pools[task] = eval_samples(config, task, preset)
        models, _, _ = load_adapters([path])
        options = preset_options([preset])  # today's preset, not the stored one
        if args.threshold is not None:
            options["thresholds"] = [args.threshold]
        cache = EmbeddingCache(models[0].backbone, args.cache_dir, engine=args.engine)
        keys = options if refine else {"postprocess": options["postprocess"], "flips": options["flips"]}
        predictor = Predictor(models, cache, batch_size=1, **keys)
        images = [s[SampleKeys.IMAGE] for s in pools[task]]
        refs = [s[SampleKeys.LABEL][0].numpy() > 0 for s in pools[task]]
        label = f"{task}/{path.parent.parent.parent.name}/{path.parent.parent.name}"
        first = [lg[0] for lg in predictor.logits(images, progress=True, desc=label)]
        scores = {
            "none": score(first, refs, options["postprocess"]),
            **candidates(images, refs, first, options, cache, models),
        }
        results[label] = scores
        record(by_method, task, path, label, scores)
    print_means(by_method, "setting")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = screen_parser(__doc__)
    parser.add_argument("--components", type=int, nargs="+", default=[1, 2, 99], help="largest components boxed")
    parser.add_argument("--gates", type=float, nargs="+", default=[0.0, 0.5, 0.6, 0.7, 0.8])
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
        embeddings = [cache.embed([im]) for im in images]
        for n in args.components:
            refined = [BoxRefiner(models[0].backbone, n).refine(e, lg) for e, lg in zip(embeddings, first, strict=True)]
            for gate in args.gates:  # the gate of BoxRefiner.__call__, on the same refined logits
                chosen = [r if agreement >= gate else lg for (r, agreement), lg in zip(refined, first, strict=True)]
                scores[f"k{n}@{gate:g}"] = score(chosen, refs, options["postprocess"])
        return scores

    screen(args, candidates)


if __name__ == "__main__":
    main()
