"""Slice-wise inference throughput on a real CT volume, printed in one run.

    python scripts/benchmark_inference.py [--volume ../shared/data/lung_ct/images/cip_copdgene_10002K_ct64.nii.gz]
                                          [--batch-sizes 1 4 8 16] [--adapter ADAPTER.pt]

Reports slices per second for each batch size (the encoder and all adapters' decoders, as ``blosam infer`` runs
them, without writing files), the encoder's share of the time, and peak resident memory of the process.
Without ``--adapter`` a fresh LiteMedSAM BLO-SAM model is used (speed does not depend on the trained values).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from blosam_med.data import load_samples, load_task
from blosam_med.inference import Predictor, load_adapters
from blosam_med.model import BloSam, build_backbone, preprocess_batch

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/lung_ct/images/cip_copdgene_10002K_ct64.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", default=str(DEFAULT))
    parser.add_argument("--adapter", action="append", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()
    if not Path(args.volume).exists():
        raise SystemExit(f"{args.volume}: volume not found (pass --volume)")

    if args.adapter:
        models, task, _ = load_adapters(args.adapter)
    else:
        models, task = [BloSam(build_backbone("litemedsam")).eval()], load_task("lung_ct")
    samples = load_samples([{"image": args.volume}], task, foreground_only=False, every_n=1)
    images = [s["image"] for s in samples]
    print(
        f"machine: {platform.machine()}, torch threads {torch.get_num_threads()}; volume {Path(args.volume).name}: "
        f"{len(images)} axial slices of {tuple(images[0].shape[1:])}; {len(models)} adapter(s)"
    )

    results = {}
    for bs in args.batch_sizes:
        predictor = Predictor(models, batch_size=bs)
        predictor.logits(images[:bs])  # warm-up
        start = time.perf_counter()
        predictor.logits(images)
        results[bs] = len(images) / (time.perf_counter() - start)
        print(f"batch {bs:3d}: {results[bs]:6.2f} slices/s")

    best = max(results, key=results.get)
    encoder = models[0].image_encoder
    with torch.inference_mode():
        x = preprocess_batch(images[:best], models[0].preprocessing)
        encoder(x)
        start = time.perf_counter()
        for i in range(0, len(images), best):
            encoder(preprocess_batch(images[i : i + best], models[0].preprocessing))
        encoder_s = time.perf_counter() - start
    total_s = len(images) / results[best]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"best batch {best}: {results[best] / results.get(1, results[best]):.2f}x the slices/s of batch 1")
    print(f"encoder share at batch {best}: {100 * encoder_s / total_s:.0f}% of {total_s:.1f} s")
    print(f"peak resident memory: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
