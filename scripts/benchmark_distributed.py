"""Cohort inference throughput with one process and with two torchrun processes on this machine's CPU.

    python scripts/benchmark_distributed.py [--images ../shared/data/lung_xray/images] [--cases 12]
                                            [--adapter ADAPTER.pt] [--processes 2]

Runs ``blosam infer`` over the same cases (PNG images, one case each, LiteMedSAM) three ways, each in a fresh output
folder with no embedding cache: one process with as many torch threads as cores, one process with one thread, and
``torchrun --nproc_per_node P ... --distributed`` with one thread per process (so the processes do not fight over
cores). Prints cases per minute, from the manifest's start/finish (models loaded, cases only) and from the wall time
of the whole command (interpreter start and model loading included), the ratios, and the load average before each
run (other jobs on the machine show there). Without ``--adapter`` a fresh LiteMedSAM BLO-SAM adapter for
``lung_xray`` is used: speed does not depend on the trained values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/lung_xray/images"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_adapter(folder: Path) -> Path:
    from blosam_med.data import load_task
    from blosam_med.model import BloSam, build_backbone, save_adapter

    return save_adapter(
        BloSam(build_backbone("litemedsam")), folder / "adapter.pt", extra={"task": load_task("lung_xray").to_dict()}
    )


def _run(name: str, cases: Path, adapter: Path, out: Path, processes: int, threads: int) -> dict:
    launcher = [sys.executable]
    extra: list[str] = []
    if processes > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(processes),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            f"127.0.0.1:{_free_port()}",
        ]
        extra = ["--distributed"]
    command = [
        *launcher,
        "-m",
        "blosam_med",
        "infer",
        "--adapter",
        str(adapter),
        "--input",
        str(cases),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: blosam infer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    n = manifest["counts"]["done"]
    run_s = manifest["finished"] - manifest["started"]
    return {
        "name": name,
        "cases": n,
        "run_s": run_s,
        "wall_s": wall,
        "load": load,
        "cases_per_min": 60 * n / run_s,
        "cases_per_min_wall": 60 * n / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(DEFAULT), help="folder of PNG images (one case each)")
    parser.add_argument("--cases", type=int, default=12, help="how many of them")
    parser.add_argument("--adapter", default=None, help="a lung_xray adapter (default: a fresh LiteMedSAM one)")
    parser.add_argument("--processes", type=int, default=2, help="torchrun processes")
    args = parser.parse_args()
    images = sorted(Path(args.images).glob("*.png"))[: args.cases]
    if len(images) < args.cases:
        raise SystemExit(f"{args.images}: {len(images)} PNG images, {args.cases} wanted (pass --images or --cases)")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = work / "cases"
        cases.mkdir()
        for image in images:
            shutil.copy(image, cases / image.name)
        adapter = Path(args.adapter) if args.adapter else _fresh_adapter(work)
        print(
            f"machine: {platform.machine()}, {cores} cores; {len(images)} cases from {args.images}; "
            f"adapter {adapter.name if args.adapter else 'fresh LiteMedSAM (lung_xray)'}"
        )
        runs = [
            _run(f"1 process, {cores} threads", cases, adapter, work / "one", 1, cores),
            _run("1 process, 1 thread", cases, adapter, work / "one_t1", 1, 1),
            _run(f"{args.processes} processes, 1 thread each", cases, adapter, work / "many", args.processes, 1),
        ]
    for r in runs:
        print(
            f"{r['name']:30s} {r['cases_per_min']:6.1f} cases/min over the cases ({r['run_s']:.1f} s), "
            f"{r['cases_per_min_wall']:6.1f} with start-up ({r['wall_s']:.1f} s); "
            f"load average before {r['load']:.2f}"
        )
    base, single_thread, many = runs
    print(
        f"ratio {many['name']} / {base['name']}: {many['cases_per_min'] / base['cases_per_min']:.2f}x over the "
        f"cases, {many['cases_per_min_wall'] / base['cases_per_min_wall']:.2f}x with start-up"
    )
    print(
        f"ratio {many['name']} / {single_thread['name']}: "
        f"{many['cases_per_min'] / single_thread['cases_per_min']:.2f}x over the cases"
    )


if __name__ == "__main__":
    main()
