"""In-sample ceiling of encoder-tail variants: how well each fits its own training images (issue 40, step 1).

    python scripts/measure_encoder_ceiling.py configs/study/outline.yaml --tasks teeth polyp \
        --variants decoder neck stage --cache-dir runs/encoder_tail_cache --out runs/encoder_ceiling

Each task's training split is the study's (``<output_dir>/datalists/<task>.json``, written by the study's own
:func:`blosam_med.study.runner.study_datalist` when absent). Every variant trains single-level on all training images
(no views, no A/B split) with the bundle's optimisation (AdamW, lr, weight decay, DiceCE weights, batch, polynomial
decay; ``--iterations``), then scores Dice on those same images at their original resolution (no flips, thresholds
0.5 and 0.4). Variants:

- ``decoder``: today's adapter (LoRA r4 on the decoder, its heads, the learned dense prompt) on the frozen embedding;
- ``neck``: plus the encoder's neck fully fine-tuned (features cached at the ``neck`` cut);
- ``neck_lora``: plus LoRA on the neck's two convolutions instead;
- ``stage``: plus the neck fully fine-tuned and LoRA on the last TinyViT stage's attention and MLP (``last_stage``).

The encoder runs once per image, up to the ``last_stage`` cut (:class:`blosam_med.model.encoder_tail.FeatureCache`);
the ``neck`` cut's features and the embeddings are that cache passed through the frozen last stage and neck, which
equals the full encoder's output (tests/model/test_encoder_tail.py). One JSON per task and variant in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.utils import set_determinism

from blosam_med.data import load_samples, load_task
from blosam_med.data.keys import SampleKeys
from blosam_med.engine.fewshot import label_target
from blosam_med.io import write_json
from blosam_med.model import BloSam, LoraSettings, Preprocessing, build_backbone, postprocess_logits
from blosam_med.model.encoder_tail import FeatureCache, TailBloSam, TailSettings, neck_features, split_encoder
from blosam_med.study.config import load_study
from blosam_med.study.runner import study_datalist

logger = logging.getLogger("measure_encoder_ceiling")

#: Variant -> the tail it trains (``None``: the decoder adapter alone, on the frozen embedding).
VARIANTS: dict[str, TailSettings | None] = {
    "decoder": None,
    "neck": TailSettings(cut="neck", neck="full"),
    "neck_lora": TailSettings(cut="neck", neck="lora"),
    "stage": TailSettings(cut="last_stage", neck="full", stage_lora=True),
}
#: The bundle's defaults (bundles/blosam/configs/train.yaml).
BUNDLE: dict[str, float] = {
    "lr": 1e-3,
    "weight_decay": 0.1,
    "batch_size": 2,
    "lambda_ce": 0.2,
    "lambda_dice": 0.8,
    "lora_rank": 4,
}


def task_inputs(study: Path, task: str, cache_dir: Path) -> dict:
    """The task's training samples and their features at the ``last_stage`` cut, the ``neck`` cut and the
    embedding, with the encoder's CPU time."""
    config = load_study(study)
    spec = config.tasks[task]
    preset = load_task(spec.get("preset") or task)
    items = study_datalist(config, task, preset)["training"]
    samples = load_samples(items, preset)
    backbone = build_backbone("litemedsam")
    split = split_encoder(backbone, "last_stage")
    cache = FeatureCache(backbone, split, cache_dir, engine="torch", batch_size=1, progress=False)
    cpu = time.process_time()
    last = cache.embed([s[SampleKeys.IMAGE] for s in samples]).clone()
    head_cpu = time.process_time() - cpu
    neck = torch.cat([neck_features(split, last[i : i + 4]) for i in range(0, len(last), 4)])
    with torch.no_grad():
        emb = torch.cat([split_encoder(backbone, "neck").tail(neck[i : i + 4]) for i in range(0, len(neck), 4)])
    size = 4 * backbone.embedding_shape[-1]
    return {
        "backbone": backbone,
        "samples": samples,
        "features": {"last_stage": last, "neck": neck, "embedding": emb},
        "targets": torch.stack([label_target(torch.as_tensor(s[SampleKeys.LABEL]), size) for s in samples]),
        "head_cpu_s": head_cpu,
        "encoder_calls": cache.encoder_calls,
    }


@torch.no_grad()
def in_sample_dice(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    samples: list[dict],
    prep: Preprocessing,
    thresholds: list[float],
) -> dict[str, list[float]]:
    """Per-image Dice at the original resolution for each decision threshold (probability)."""
    out: dict[str, list[float]] = {f"{t:g}": [] for t in thresholds}
    for i, sample in enumerate(samples):
        label = torch.as_tensor(sample[SampleKeys.LABEL])[None].float() > 0  # (1, 1, H, W)
        logits = postprocess_logits(forward(inputs[i : i + 1]), prep, (label.shape[-2], label.shape[-1]))
        for t in thresholds:
            pred = logits > math.log(t / (1 - t))
            out[f"{t:g}"].append(float(compute_dice(pred.float(), label.float(), include_background=True)))
    return out


def train_variant(name: str, data: dict, iterations: int, eval_at: list[int], seed: int) -> dict:
    """Train one variant single-level on every training image; in-sample Dice at each ``eval_at`` iteration."""
    set_determinism(seed=seed)
    backbone, settings = data["backbone"], VARIANTS[name]
    lora = LoraSettings(rank=int(BUNDLE["lora_rank"]), alpha=BUNDLE["lora_rank"])
    model: BloSam | TailBloSam
    forward: Callable[[torch.Tensor], torch.Tensor]
    if settings is None:
        model, inputs = BloSam(backbone, lora), data["features"]["embedding"]
        forward, counts = (
            model.forward_embeddings,
            {"decoder": sum(p.numel() for p in model.trainable_state_dict().values())},
        )
    else:
        model = TailBloSam(backbone, settings, lora)
        inputs = data["features"][settings.cut]
        forward, counts = model.forward_features, model.trainable_counts()
    groups = [
        {"params": model.lower_parameters(), "weight_decay": BUNDLE["weight_decay"]},
        {"params": model.upper_parameters(), "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=BUNDLE["lr"])
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=iterations, power=0.9)
    loss_fn = DiceCELoss(sigmoid=True, lambda_ce=BUNDLE["lambda_ce"], lambda_dice=BUNDLE["lambda_dice"])
    targets, n = data["targets"], len(inputs)
    generator = torch.Generator().manual_seed(seed)
    record: dict = {"variant": name, "settings": settings.to_dict() if settings else None, "trainable": counts}
    record.update(iterations=iterations, seed=seed, **BUNDLE, losses=[], evals=[])
    cpu, wall, window, eval_cpu = time.process_time(), time.time(), [], 0.0
    for it in range(1, iterations + 1):
        model.train()
        idx = torch.randint(n, (int(BUNDLE["batch_size"]),), generator=generator)
        loss = loss_fn(forward(inputs[idx]), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        window.append(loss.item())
        if it % 25 == 0:
            record["losses"].append([it, sum(window) / len(window)])
            logger.info("%s it %d loss %.4f (%.0f s)", name, it, record["losses"][-1][1], time.time() - wall)
            window = []
        if it in eval_at:
            start = time.process_time()
            train_cpu = start - cpu - eval_cpu
            model.eval()
            dice = in_sample_dice(forward, inputs, data["samples"], backbone.preprocessing, [0.5, 0.4])
            eval_cpu += time.process_time() - start
            mean = {t: sum(v) / len(v) for t, v in dice.items()}
            record["evals"].append({"iteration": it, "train_cpu_s": train_cpu, "mean_dice": mean, "dice": dice})
            logger.info("%s it %d in-sample Dice %s (train CPU %.0f s)", name, it, mean, train_cpu)
    record["train_cpu_s"] = time.process_time() - cpu - eval_cpu
    record["eval_cpu_s"] = eval_cpu
    record["wall_s"] = time.time() - wall
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", type=Path, help="study YAML whose datalists define the training split")
    p.add_argument("--tasks", nargs="+", default=["teeth", "polyp"])
    p.add_argument("--variants", nargs="+", default=["decoder", "neck", "stage"], choices=list(VARIANTS))
    p.add_argument("--iterations", type=int, default=300, help="the bundle's default")
    p.add_argument("--eval-at", type=int, nargs="*", default=None, help="iterations to score at (default: the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, required=True, help="feature cache folder")
    p.add_argument("--out", type=Path, required=True, help="folder of the JSON records")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--overwrite", action="store_true", help="replace existing records (default: skip them)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    eval_at = sorted(set(args.eval_at or []) | {args.iterations})
    for task in args.tasks:
        todo = [v for v in args.variants if args.overwrite or not (args.out / f"{task}_{v}.json").is_file()]
        if not todo:
            continue
        data = task_inputs(args.study, task, args.cache_dir)
        logger.info("%s: %d training images, head CPU %.0f s", task, len(data["samples"]), data["head_cpu_s"])
        for variant in todo:
            rec = train_variant(variant, data, args.iterations, eval_at, args.seed)
            rec.update(task=task, images=len(data["samples"]), head_cpu_s=data["head_cpu_s"], study=str(args.study))
            write_json(args.out / f"{task}_{variant}.json", rec, overwrite=args.overwrite)
    print(report(args.out, args.tasks, args.variants))


def report(out: Path, tasks: list[str], variants: list[str]) -> str:
    """A Markdown table of the records in ``out``: mean (median) in-sample Dice at each scored iteration."""
    lines = [
        "| task | variant | trained tail weights | in-sample Dice at 0.5, mean (median) by iteration | "
        "at 0.4, last | training CPU s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task in tasks:
        for variant in variants:
            path = out / f"{task}_{variant}.json"
            if not path.is_file():
                continue
            rec = json.loads(path.read_text())
            scores = ", ".join(
                f"{e['iteration']}: {e['mean_dice']['0.5']:.4f} ({statistics.median(e['dice']['0.5']):.4f})"
                for e in rec["evals"]
            )
            last = rec["evals"][-1]["mean_dice"]["0.4"]
            tail = rec["trainable"].get("tail", 0)
            lines.append(
                f"| {task} | {variant} | {tail:,} | {scores} | {last:.4f} | {rec['train_cpu_s']:.0f} "
                f"({rec['iterations']} it.) |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
