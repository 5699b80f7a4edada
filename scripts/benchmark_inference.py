"""Eager float32 PyTorch against every installed encoder engine, in one run: `blosam infer` slices/s on a CT volume,
peak memory, and mask agreement on every image of the 2D tasks and on the volume.

    python scripts/benchmark_inference.py [--data ../shared/data] [--rounds 2] [--engines torch openvino onnxruntime]

For each round, each engine runs ``blosam infer --task lung_ct`` on the 79-slice CT as its own process (the default
batch size), interleaved so that other jobs on the CPU slow every engine alike. The exports are made once beforehand
in --export-dir (not timed); every run gets an empty embedding cache that shares only those exports, so each run
encodes every slice. A run that fell back to eager PyTorch stops the benchmark. Slices/s is the case time the command
records (reading, encoder, decoder, writing; not the Python start-up), peak memory the process's maximum resident set.
Agreement: the masks each engine gives through the shipped adapters against eager PyTorch's, Dice per image (1.0 when
both are empty).
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
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import torch

from blosam_med.data import load_samples
from blosam_med.inference import CasePrediction, Predictor, load_adapters, preset_options, write_case
from blosam_med.model import EmbeddingCache
from blosam_med.model.encoder_engines import export_encoder, installed_runtimes
from blosam_med.model.shipped import shipped_adapter

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT = "lung_ct/images/cip_copdgene_10002K_ct64.nii.gz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def infer_ct(volume: Path, engine: str, out: Path, export_dir: str) -> dict:
    """One ``blosam infer`` process: its case record, wall seconds and peak resident MiB.

    The run's embedding cache is a new folder whose ``engines`` links to ``export_dir/engines``: the exports are
    shared, the embeddings are not (a run that found cached embeddings would not time the encoder).
    """
    cache = out.parent / f"{out.name}_cache"
    cache.mkdir(parents=True)
    (cache / "engines").symlink_to(Path(export_dir, "engines").resolve(), target_is_directory=True)
    command = [sys.executable, "-m", "blosam_med", "infer", "--task", "lung_ct", "--input", str(volume)]
    command += ["--out", str(out), "--engine", engine, "--device", "cpu", "--cache-dir", str(cache)]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=os.environ.copy())
        stdout = proc.stdout.read().decode() if proc.stdout is not None else ""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = status  # reaped here (wait4 gives the child's resource usage)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if status != 0:
        raise SystemExit(f"blosam infer --engine {engine} failed (status {status}):\n{stderr[-2000:]}")
    if "running it in eager PyTorch" in stderr:
        raise SystemExit(f"blosam infer --engine {engine} fell back to eager PyTorch:\n{stderr[-2000:]}")
    record = json.loads(stdout.strip().splitlines()[-1])
    if record["status"] != "done":
        raise SystemExit(f"blosam infer --engine {engine}: case {record['case']} {record['status']}: {record['error']}")
    return {"record": record, "wall": wall, "peak_mib": usage.ru_maxrss / 1024}


def _nifti(path: str) -> np.ndarray:
    """The voxels of a NIfTI file the benchmark wrote."""
    return np.asarray(cast(nib.Nifti1Image, nib.load(path)).dataobj)


def read_write_seconds(volume: Path, out: Path) -> tuple[float, float]:
    """Seconds to read and slice the CT, and to write its default outputs (NIfTI + montage), without the model."""
    _, task, presets = load_adapters([shipped_adapter("lung_ct")])
    post = preset_options(presets)["postprocess"]
    start = time.perf_counter()
    samples = load_samples([{"image": str(volume)}], task, foreground_only=False, every_n=1)
    read = time.perf_counter() - start
    pred = CasePrediction(
        case="read_write",
        image_path=str(volume),
        kind="volume",
        images=[s["image"] for s in samples],
        logits=[torch.zeros(1, *s["image"].shape[-2:]) for s in samples],
        slices=[s["slice"] for s in samples],
        source=samples[0]["source"],
        spacing=tuple(samples[0]["spacing"]),
        postprocess=post,
    )
    start = time.perf_counter()
    write_case(pred, out, ("nifti", "png"), [task.label_name])
    return read, time.perf_counter() - start


TASKS_2D = ("polyp", "lung_xray", "teeth")


def agreement_2d(
    data: Path, engines: list[str], export_dir: str, limit: int | None = None, tasks: Sequence[str] = TASKS_2D
) -> None:
    """Print per task and engine the smallest Dice against eager over the images of ``data/<task>/images`` (every
    image, or the first ``limit`` in name order), through the shipped adapter and its preset (flips, refinement)."""
    for task in tasks:
        folder = data / task / "images"
        if not folder.is_dir():
            print(f"{folder}: absent, skipped")
            continue
        models, preset, presets = load_adapters([shipped_adapter(task)])
        files = sorted(folder.iterdir())[:limit]
        samples = load_samples([{"image": str(p)} for p in files], preset, foreground_only=False)
        images = [s["image"] for s in samples]
        masks = {}
        for engine in engines:
            cache = EmbeddingCache(models[0].backbone, export_dir, progress=False, engine=engine)
            if cache.engine.name != engine:
                raise SystemExit(f"{task}: engine {engine} fell back to {cache.engine.name}")
            predictor = Predictor(models, cache, batch_size=1, **preset_options(presets))
            masks[engine] = [m.numpy() for m in predictor.masks(images)]
        smallest = {e: min(dice(a, b) for a, b in zip(masks[e], masks[engines[0]], strict=True)) for e in engines[1:]}
        print(
            f"{task:<10} {len(images):3d} images: " + ", ".join(f"{e} {d:.4f}" for e, d in smallest.items()), flush=True
        )


def benchmark_ct(volume: Path, engines: list[str], rounds: int, work: Path, export_dir: str) -> None:
    """Time ``blosam infer --task lung_ct`` on the volume with every engine, interleaved, and print the table."""
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(rounds):
        for engine in engines:
            runs[engine].append(infer_ct(volume, engine, work / f"{engine}_{r}", export_dir))
            print(f"round {r + 1} {engine}: case {runs[engine][-1]['record']['seconds']:.0f} s", flush=True)
    labels = {e: _nifti(runs[e][0]["record"]["outputs"]["nifti"]) > 0 for e in engines}
    slices = runs[engines[0]][0]["record"]["slices"]
    rate = {e: statistics.median(slices / x["record"]["seconds"] for x in runs[e]) for e in engines}
    print(f"\nblosam infer --task lung_ct on {volume.name} ({slices} slices), median of {rounds} rounds")
    print(f"{'engine':<14}{'slices/s':>10}{'speed-up':>10}{'wall s':>9}{'peak MiB':>10}{'volume Dice':>13}")
    for e in engines:
        wall = statistics.median(x["wall"] for x in runs[e])
        peak = max(x["peak_mib"] for x in runs[e])
        print(
            f"{e:<14}{rate[e]:>10.2f}{rate[e] / rate[engines[0]]:>9.2f}x{wall:>9.1f}{peak:>10.0f}"
            f"{dice(labels[e], labels[engines[0]]):>13.4f}"
        )
    read, write = read_write_seconds(volume, work / "read_write")
    case = statistics.median(x["record"]["seconds"] for x in runs[engines[0]])
    print(
        f"outside the model: reading the CT {read:.2f} s, writing NIfTI + montage {write:.2f} s ({engines[0]} case {case:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=None, help="default: torch and every installed runtime")
    parser.add_argument("--export-dir", default=None, help="where exports are kept (default: a temporary folder)")
    parser.add_argument("--skip-2d", action="store_true", help="only the CT")
    parser.add_argument("--images", type=int, default=None, help="2D agreement: the first N images per task (all)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS_2D), choices=TASKS_2D, help="2D agreement tasks")
    parser.add_argument("--skip-ct", action="store_true", help="only the 2D agreement")
    args = parser.parse_args()
    data = Path(args.data)
    volume = data / CT
    if not volume.is_file():
        raise SystemExit(f"{volume}: CT volume not found (pass --data)")
    engines = args.engines or ["torch", *installed_runtimes()]
    export_dir = args.export_dir or tempfile.mkdtemp(prefix="blosam_export_")
    work = Path(tempfile.mkdtemp(prefix="blosam_bench_"))
    began = time.perf_counter()
    print(
        f"machine: {platform.machine()} {_cpu_name()} ({os.cpu_count()} CPUs), torch threads {torch.get_num_threads()}"
        f", load average {os.getloadavg()[0]:.2f} (other jobs count)"
    )
    if engines[1:] and not args.skip_ct:
        backbone = load_adapters([shipped_adapter("lung_ct")])[0][0].backbone
        for engine in engines[1:]:  # export once (not timed)
            start = time.perf_counter()
            export_encoder(backbone, engine, export_dir)
            print(f"{engine}: export ready in {time.perf_counter() - start:.1f} s (once per backbone)")
    if not args.skip_ct:
        benchmark_ct(volume, engines, args.rounds, work, export_dir)
    if not args.skip_2d:
        which = f"the first {args.images} images" if args.images else "every image"
        print(f"\nmask agreement with eager float32 (smallest Dice over {which} of each task)", flush=True)
        agreement_2d(data, engines, export_dir, args.images, args.tasks)
    print(f"\nbenchmark took {time.perf_counter() - began:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else an empty string."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


if __name__ == "__main__":
    main()
