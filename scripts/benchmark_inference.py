"""Eager float32 PyTorch against every installed encoder engine, in one run: `blosam infer` slices/s on a CT volume,
peak memory, and mask agreement on every image of the 2D tasks and on the volume.

    python scripts/benchmark_inference.py [--data ../shared/data] [--rounds 2] [--engines torch openvino onnxruntime]

For each round, each engine runs ``blosam infer --task lung_ct`` on the 79-slice CT as its own process (the default
batch size; the export is made once beforehand in --export-dir and loaded by every run), interleaved so that other
jobs on the CPU slow every engine alike. Slices/s is the case time the command records (reading, encoder, decoder,
writing; not the Python start-up), peak memory the process's maximum resident set. Agreement: the masks each engine
gives through the shipped adapters against eager PyTorch's, Dice per image (1.0 when both are empty).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from blosam_med.data import load_samples
from blosam_med.inference import Predictor, load_adapters
from blosam_med.model import EmbeddingCache
from blosam_med.model.encoder_engines import installed_runtimes
from blosam_med.model.shipped import shipped_adapter

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT = "lung_ct/images/cip_copdgene_10002K_ct64.nii.gz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def infer_ct(volume: Path, engine: str, out: Path, export_dir: str) -> dict:
    """One ``blosam infer`` process: its case record, wall seconds and peak resident MiB."""
    command = [sys.executable, "-m", "blosam_med", "infer", "--task", "lung_ct", "--input", str(volume)]
    command += ["--out", str(out), "--engine", engine, "--device", "cpu", "--cache-dir", export_dir]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy())
    stdout = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"blosam infer --engine {engine} failed (status {status})")
    record = json.loads(stdout.strip().splitlines()[-1])
    return {"record": record, "wall": time.perf_counter() - start, "peak_mib": usage.ru_maxrss / 1024}


def agreement_2d(data: Path, engines: list[str], export_dir: str) -> dict[str, dict[str, float]]:
    """Per task and engine the smallest Dice against eager over every image of ``data/<task>/images``."""
    out: dict[str, dict[str, float]] = {}
    for task in ("polyp", "lung_xray", "teeth"):
        folder = data / task / "images"
        if not folder.is_dir():
            print(f"{folder}: absent, skipped")
            continue
        models, preset = load_adapters([shipped_adapter(task)])
        samples = load_samples([{"image": str(p)} for p in sorted(folder.iterdir())], preset, foreground_only=False)
        images = [s["image"] for s in samples]
        masks = {}
        for engine in engines:
            cache = EmbeddingCache(models[0].backbone, export_dir, progress=False, engine=engine)
            predictor = Predictor(models, cache, batch_size=1)
            masks[engine] = [m.numpy() for m in predictor.masks(images)]
        out[task] = {e: min(dice(a, b) for a, b in zip(masks[e], masks[engines[0]], strict=True)) for e in engines[1:]}
        out[task]["images"] = len(images)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=None, help="default: torch and every installed runtime")
    parser.add_argument("--export-dir", default=None, help="where exports are kept (default: a temporary folder)")
    parser.add_argument("--skip-2d", action="store_true", help="only the CT")
    args = parser.parse_args()
    data = Path(args.data)
    volume = data / CT
    if not volume.is_file():
        raise SystemExit(f"{volume}: CT volume not found (pass --data)")
    engines = args.engines or ["torch", *installed_runtimes()]
    export_dir = args.export_dir or tempfile.mkdtemp(prefix="blosam_export_")
    work = Path(tempfile.mkdtemp(prefix="blosam_bench_"))
    print(f"machine: {platform.machine()} ({os.cpu_count()} CPUs), torch threads {torch.get_num_threads()}")

    for engine in engines[1:]:  # export once (not timed)
        infer_ct(volume, engine, work / f"warm_{engine}", export_dir)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.rounds):
        for engine in engines:
            runs[engine].append(infer_ct(volume, engine, work / f"{engine}_{r}", export_dir))
    labels = {e: np.asarray(nib.load(runs[e][0]["record"]["outputs"]["nifti"]).dataobj) > 0 for e in engines}
    slices = runs[engines[0]][0]["record"]["slices"]
    rate = {e: statistics.median(slices / x["record"]["seconds"] for x in runs[e]) for e in engines}
    print(f"\nblosam infer --task lung_ct on {volume.name} ({slices} slices), median of {args.rounds} rounds")
    print(f"{'engine':<14}{'slices/s':>10}{'speed-up':>10}{'wall s':>9}{'peak MiB':>10}{'volume Dice':>13}")
    for e in engines:
        wall = statistics.median(x["wall"] for x in runs[e])
        peak = max(x["peak_mib"] for x in runs[e])
        print(
            f"{e:<14}{rate[e]:>10.2f}{rate[e] / rate[engines[0]]:>9.2f}x{wall:>9.1f}{peak:>10.0f}"
            f"{dice(labels[e], labels[engines[0]]):>13.4f}"
        )
    if not args.skip_2d:
        print("\nmask agreement with eager float32 (smallest Dice over every image)")
        for task, row in agreement_2d(data, engines, export_dir).items():
            print(f"{task:<10} {row.pop('images'):3d} images: " + ", ".join(f"{e} {d:.4f}" for e, d in row.items()))


if __name__ == "__main__":
    main()
