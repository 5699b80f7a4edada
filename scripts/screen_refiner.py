"""Screen a full-resolution refinement network after a trained run (stop 31; the README's teeth notes).

A small MONAI U-Net takes the image at its own resolution and the run's predicted probability and adds a residual to
the logit. It trains on the run's shots: the predictions of each cross-fit fold and of their average on the shots
(and, with probability ``--p-gt``, the reference mask passed through the decoder's 64 x 64 grid as the coarse
input), then refines the run's predictions on the evaluation pool. Prints the pool Dice before and after.

    python scripts/screen_refiner.py runs/teeth_k4_s0 --data ../shared/data/teeth --pool ../shared/data/eval/teeth \
        --cache-dir runs/study_cache --engine openvino
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from blosam_med.data import SampleKeys, TaskConfig, load_samples, open_datalist
from blosam_med.inference.predictor import Predictor, preset_options
from blosam_med.model import EmbeddingCache, load_adapter


def predict(adapter: Path, images: list[torch.Tensor], cache_dir: str, engine: str) -> list[torch.Tensor]:
    """(1, H, W) logits of ``adapter`` with its preset's inference (flips, refinement)."""
    model, extra = load_adapter(adapter)
    task = TaskConfig.from_dict(extra["task"])
    cache = EmbeddingCache(model.backbone, cache_dir, engine=engine, progress=False)
    return [lg[:1] for lg in Predictor([model], cache, "cpu", 1, **preset_options([task])).logits(images)]


def coarse(label: torch.Tensor, grid: int) -> torch.Tensor:
    """The reference mask through a ``grid`` x ``grid`` average, as a logit of random sharpness and offset."""
    c = F.adaptive_avg_pool2d(label[None].float(), grid)
    c = F.interpolate(c, label.shape[-2:], mode="bilinear", align_corners=False)[0].clamp(1e-3, 1 - 1e-3)
    return (torch.logit(c) * (0.5 + 1.5 * torch.rand(())) + 0.8 * torch.randn(())).clamp(-8, 8)


def dice(mask: torch.Tensor, label: torch.Tensor) -> float:
    s = mask.sum() + label.sum()
    return float(2 * (mask & label).sum() / s) if s else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a `blosam train` output folder (adapter.pt, fold<k>/draw.json)")
    ap.add_argument("--data", required=True, help="the task folder the shots came from")
    ap.add_argument("--pool", required=True, help="the evaluation pool folder")
    ap.add_argument("--cache-dir", default="runs/study_cache")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--p-gt", type=float, default=0.3, help="share of coarse reference masks among training inputs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    _, extra = load_adapter(args.run / "adapter.pt")
    task = TaskConfig.from_dict(extra["task"])
    folds = sorted(args.run.glob("fold*/adapter.pt"))
    draw = (
        json.loads((folds[0].parent / "draw.json").read_text())
        if folds
        else json.loads((args.run / "draw.json").read_text())
    )
    paths = {Path(s["image_path"]).resolve() for side in ("A", "B") for s in draw.get(side, [])}
    items = [it for sec in open_datalist(args.data).values() for it in sec if Path(it["image"]).resolve() in paths]
    if len(items) != len(paths):
        raise SystemExit(f"{args.data}: {len(items)} of the run's {len(paths)} shots found")
    shots = load_samples(items, task)
    images = [torch.as_tensor(s[SampleKeys.IMAGE]).float() for s in shots]
    labels = [torch.as_tensor(s[SampleKeys.LABEL]).bool() for s in shots]
    pairs = []
    for adapter in [*folds, args.run / "adapter.pt"]:
        pairs += list(zip(images, labels, predict(adapter, images, args.cache_dir, args.engine), strict=True))
    net = UNet(2, 2, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.iters)
    loss_fn = DiceCELoss(sigmoid=True)
    start = time.time()
    for _ in range(args.iters):
        batch = []
        for _ in range(4):
            x, y, lg = pairs[int(torch.randint(len(pairs), ()))]
            if torch.rand(()) < args.p_gt:
                lg = coarse(y, 64)
            if torch.rand(()) < 0.5:
                x, y, lg = x.flip(-1), y.flip(-1), lg.flip(-1)
            r0, c0 = (int(torch.randint(n - args.crop + 1, ())) for n in x.shape[-2:])
            crop = (..., slice(r0, r0 + args.crop), slice(c0, c0 + args.crop))
            batch.append((x[crop], y[crop].float(), lg[crop]))
        x, y, lg = (torch.stack(t) for t in zip(*batch, strict=True))
        loss = loss_fn(net(torch.cat([x, torch.sigmoid(lg)], 1)) + lg, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    print(f"refiner trained on {len(pairs)} predicted shots in {time.time() - start:.0f} s")
    pool = load_samples([it for sec in open_datalist(args.pool, test_fraction=0.0).values() for it in sec], task)
    xs = [torch.as_tensor(s[SampleKeys.IMAGE]).float() for s in pool]
    before, after = [], []
    net.eval()
    with torch.no_grad():
        for x, s, lg in zip(xs, pool, predict(args.run / "adapter.pt", xs, args.cache_dir, args.engine), strict=True):
            y = torch.as_tensor(s[SampleKeys.LABEL]).bool()[0]
            out = net(torch.cat([x, torch.sigmoid(lg)])[None]) + lg[None]
            before.append(dice(lg[0] > 0, y))
            after.append(dice(out[0, 0] > 0, y))
    diff = np.array(after) - np.array(before)
    print(
        f"pool Dice {np.mean(before):.4f} -> {np.mean(after):.4f} ({diff.mean():+.4f}; "
        f"{int((diff > 0).sum())} of {len(diff)} images higher)"
    )


if __name__ == "__main__":
    main()
