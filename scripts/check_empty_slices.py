"""Would the empty-slice skip (task preset ``empty_below``) keep a shipped adapter's masks? Two checks:

    python scripts/check_empty_slices.py [--data ../shared/data] [--task lung_ct] [--empty-below -900] [--engine torch]

1. Every CT of ``data/lung_ct/images`` and every DICOM series of ``data/ct_dicom/*/dicom``: how many slices the rule
   skips. With none skipped, the model runs on exactly the slices it runs on without the rule: identical label maps.
2. Air-only slices (every voxel below the threshold: constant -1000 HU, constant -1024 HU, uniform noise in
   [-1024, threshold - 1] HU), windowed as the task windows: how many foreground pixels the adapter predicts on each.
   The skip predicts none, so masks stay identical only where this is 0.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from blosam_med.data import WindowIntensity, load_samples
from blosam_med.inference import Predictor, load_adapters, preset_options
from blosam_med.inference.empty_slices import empty_slices
from blosam_med.model import EmbeddingCache
from blosam_med.model.shipped import shipped_adapter

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--task", default="lung_ct", help="shipped adapter")
    parser.add_argument("--empty-below", type=float, default=-900.0, help="threshold to check (HU)")
    parser.add_argument("--engine", default="torch", help="encoder engine for check 2")
    args = parser.parse_args()
    data = Path(args.data)
    models, task, presets = load_adapters([shipped_adapter(args.task)])
    rule = dataclasses.replace(task, empty_below=args.empty_below)
    volumes = sorted((data / "lung_ct" / "images").glob("*.nii*")) + sorted((data / "ct_dicom").glob("*/dicom"))
    if not volumes:
        raise SystemExit(f"{data}: no CT volumes in lung_ct/images or ct_dicom/*/dicom (pass --data)")
    print(f"1. slices with every voxel below {args.empty_below:g} HU (skipped by empty_below)")
    for volume in volumes:
        samples = load_samples([{"image": str(volume)}], task, foreground_only=False, every_n=1)
        print(f"  {volume.relative_to(data)}: {sum(empty_slices(samples, rule))} of {len(samples)} slices")

    window = WindowIntensity(task.window, task.width, task.level)
    g = torch.Generator().manual_seed(0)
    top = int(args.empty_below) - 1
    air = {
        "constant -1000 HU": torch.full((1, 64, 64), -1000.0),
        "constant -1024 HU": torch.full((1, 64, 64), -1024.0),
        f"uniform [-1024, {top}] HU": torch.randint(-1024, top + 1, (1, 64, 64), generator=g).float(),
    }
    cache = EmbeddingCache(models[0].backbone, None, batch_size=1, progress=False, engine=args.engine)
    predictor = Predictor(models, cache, batch_size=1, **preset_options(presets))
    images = [torch.as_tensor(window(hu)) for hu in air.values()]
    masks = predictor.masks(images)
    print(f"2. {args.task} adapter ({cache.engine_name}) on air-only 64x64 slices: foreground pixels without the skip")
    for name, image, mask in zip(air, images, masks, strict=True):
        skipped = empty_slices([{"image": image, "source": {}}], rule)[0]
        print(f"  {name}: {int(mask.sum())} (skipped by the rule: {skipped})")


if __name__ == "__main__":
    main()
