"""Eager float32 PyTorch against every installed encoder engine, in one run: `blosam infer` slices/s on a CT volume,
peak memory, and mask agreement on every image of the 2D tasks and on the volume.

    python scripts/benchmark_inference.py [--data ../shared/data] [--rounds 2] [--engines torch openvino onnxruntime]
    python scripts/benchmark_inference.py --targets [--skip-train]    # issue 38's ratios, every variant, one run

For each round, each engine runs ``blosam infer --task lung_ct`` on the 79-slice CT as its own process (the default
batch size), interleaved so that other jobs on the CPU slow every engine alike. The exports are made once beforehand
in --export-dir (not timed); every run gets an empty embedding cache that shares only those exports, so each run
encodes every slice. A run that fell back to eager PyTorch stops the benchmark. Slices/s is the case time the command
records (reading, encoder, decoder, writing; not the Python start-up), peak memory the process's maximum resident set.
Agreement: the masks each engine gives through the shipped adapters against eager PyTorch's, Dice per image (1.0 when
both are empty).

``--targets`` prints issue 38's figures in one run instead: LiteMedSAM's eager float32 encoder in s/image (timed at
the start and at the end, the mean used), ``blosam train --task polyp --shots 4 --seed 0`` (the defaults: 2-fold
cross-fit, 8 views, 300 iterations, engine auto) from an empty embedding cache with each of
:data:`TRAIN_VARIANTS`, as wall seconds and encoder-times (seconds / encoder s/image), and ``blosam infer --task
lung_ct`` on the CT with each of :data:`CT_VARIANTS`, as slices/s and eager encoder rates (slices/s x encoder
s/image), with the voxels each variant's label map has that differ from eager float32's. The OpenVINO export is made
beforehand and shared (a one-off per machine, timed apart). ``--int8-encoder FOLDER`` adds the CT through the default
path with that ``blosam quantize`` folder (opt-in int8; ``scripts/check_int8.py`` makes one per task).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
from blosam_med.inference.int8 import mask_dice
from blosam_med.model import EmbeddingCache
from blosam_med.model.encoder_engines import export_encoder, installed_runtimes
from blosam_med.model.shipped import shipped_adapter

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT = "lung_ct/images/cip_copdgene_10002K_ct64.nii.gz"


def infer_ct(
    volume: Path,
    engine: str,
    out: Path,
    export_dir: str,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> dict:
    """One ``blosam infer`` process: its case record, wall seconds and peak resident MiB.

    The run's embedding cache is a new folder whose ``engines`` links to ``export_dir/engines``: the exports are
    shared, the embeddings are not (a run that found cached embeddings would not time the encoder).
    """
    cache = cold_cache(out.parent / f"{out.name}_cache", export_dir)
    command = [sys.executable, "-m", "blosam_med", "infer", "--task", "lung_ct", "--input", str(volume)]
    command += ["--out", str(out), "--engine", engine, "--device", "cpu", "--cache-dir", str(cache), *extra]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **(env or {})})
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
    return {"record": record, "wall": wall, "peak_mib": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime}


def cold_cache(folder: Path, export_dir: str) -> Path:
    """A new, empty embedding cache folder whose ``engines`` links to ``export_dir/engines`` (exports shared)."""
    folder.mkdir(parents=True)
    (folder / "engines").symlink_to(Path(export_dir, "engines").resolve(), target_is_directory=True)
    return folder


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
        smallest = {
            e: min(mask_dice(a, b) for a, b in zip(masks[e], masks[engines[0]], strict=True)) for e in engines[1:]
        }
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
            f"{mask_dice(labels[e], labels[engines[0]]):>13.4f}"
        )
    read, write = read_write_seconds(volume, work / "read_write")
    case = statistics.median(x["record"]["seconds"] for x in runs[engines[0]])
    print(
        f"outside the model: reading the CT {read:.2f} s, writing NIfTI + montage {write:.2f} s ({engines[0]} case {case:.0f} s)"
    )


#: ``blosam infer`` variants on the CT (environment of each run): OpenVINO before issue 38 (latency hint, each slice
#: encoded then decoded), a thread encoding 8 slices ahead of the decoder, and that with OpenVINO's throughput mode
#: (the default); eager PyTorch float32 is the reference of the masks.
CT_VARIANTS = {
    "torch (eager float32)": ("torch", {}),
    "openvino, slice by slice (before)": ("openvino", {"BLOSAM_OPENVINO_STREAMS": "1", "BLOSAM_ENCODE_AHEAD": "0"}),
    "openvino, encode ahead": ("openvino", {"BLOSAM_OPENVINO_STREAMS": "1", "BLOSAM_ENCODE_AHEAD": "8"}),
    "openvino, encode ahead + throughput (default)": (
        "openvino",
        {"BLOSAM_OPENVINO_STREAMS": "", "BLOSAM_ENCODE_AHEAD": "8"},
    ),
}
#: ``blosam train`` variants (environment, extra arguments): the cross-fit's folds one after the other in one process
#: (before issue 38), side by side (the default), and that in bfloat16 autocast (opt-in ``--amp bf16``). Early stopping
#: on B and 150 iterations lost pool Dice (docs/speed.md).
TRAIN_VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "folds one after the other (before)": ({"BLOSAM_FOLD_WORKERS": "1"}, []),
    "folds side by side (default)": ({"BLOSAM_FOLD_WORKERS": ""}, []),
    "folds side by side, bfloat16 autocast (opt-in --amp bf16)": ({"BLOSAM_FOLD_WORKERS": ""}, ["--amp", "bf16"]),
}


def eager_encoder_seconds(images: int = 3) -> float:
    """Median seconds per image of LiteMedSAM's encoder in eager PyTorch float32 (this process's threads)."""
    from blosam_med.model import build_backbone
    from blosam_med.model.encoder_engines import TorchEngine

    backbone = build_backbone("litemedsam")
    size = backbone.preprocessing.input_size
    engine = TorchEngine(backbone.image_encoder)
    x = torch.rand(images + 1, 1, 3, size, size, generator=torch.Generator().manual_seed(0))
    engine(x[0])  # warm-up
    times = []
    for xi in x[1:]:
        start = time.perf_counter()
        engine(xi)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_polyp(
    data: Path, out: Path, export_dir: str, env: dict[str, str], iterations: int, extra: Sequence[str] = ()
) -> tuple[float, float]:
    """Wall seconds and CPU seconds (its processes' user + system) of ``blosam train --task polyp --shots 4 --seed 0``
    (the defaults; ``--iterations`` when not 300; then ``extra``) with an empty embedding cache (the engine's export is
    shared)."""
    cache = cold_cache(out.parent / f"{out.name}_cache", export_dir)
    command = [sys.executable, "-m", "blosam_med", "train", "--task", "polyp", "--data", str(data / "polyp")]
    command += ["--shots", "4", "--seed", "0", "--out", str(out), "--cache-dir", str(cache)]
    command += ["--iterations", str(iterations)] if iterations != 300 else []
    command += list(extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"blosam train failed (status {proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _adapter_difference(a: Path, b: Path) -> float:
    """Largest |difference| between the trained tensors of two cross-fits' folds."""
    worst = 0.0
    for fold in ("fold0", "fold1"):
        sa = torch.load(a / fold / "adapter.pt", weights_only=True)["state_dict"]
        sb = torch.load(b / fold / "adapter.pt", weights_only=True)["state_dict"]
        worst = max([worst] + [float((sa[k].float() - sb[k].float()).abs().max()) for k in sa])
    return worst


def first_slices(volume: Path, slices: int | None, work: Path) -> Path:
    """The volume, or a copy of its first ``slices`` axial slices (same header otherwise)."""
    if not slices:
        return volume
    image = cast(nib.Nifti1Image, nib.load(volume))
    cropped = nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :slices], image.affine, image.header)
    path = work / f"first{slices}_{volume.name}"
    nib.save(cropped, path)
    return path


def speed_targets(
    data: Path,
    export_dir: str,
    work: Path,
    skip_train: bool,
    iterations: int = 300,
    slices: int | None = None,
    int8: str | None = None,
    train_variants: Sequence[str] = (),
    skip_ct: bool = False,
) -> None:
    """Issue 38's figures in one run: the eager encoder's s/image, the default 4-shot training from a cold cache in
    encoder-times, and the CT's slices/s in eager encoder rates, for each variant (interleaved with the encoder
    timing at the start and the end); ``int8``: also the CT with this ``blosam quantize`` folder (opt-in);
    ``train_variants``: only the training variants whose names contain one of these words (default: all)."""
    first = eager_encoder_seconds()
    print(f"eager float32 encoder (start): {first:.3f} s/image, load average {os.getloadavg()[0]:.2f}", flush=True)
    trained: dict[str, tuple[float, float, Path]] = {}
    if not skip_train:
        for name, (env, extra) in TRAIN_VARIANTS.items():
            if train_variants and not any(word in name for word in train_variants):
                continue
            out = work / f"train_{len(trained)}"
            trained[name] = (*train_polyp(data, out, export_dir, env, iterations, extra), out)
            print(
                f"train {name}: {trained[name][0]:.1f} s wall, {trained[name][1]:.1f} CPU-s, "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    volume = first_slices(data / CT, slices, work)
    ct: dict[str, dict] = {}
    variants: dict[str, tuple[str, dict[str, str], list[str]]] = {
        name: (engine, env, []) for name, (engine, env) in CT_VARIANTS.items()
    }
    if int8:
        variants["openvino int8 (opt-in --int8-encoder), default path"] = ("openvino", {}, ["--int8-encoder", int8])
    for name, (engine, env, options) in ({} if skip_ct else variants).items():
        ct[name] = infer_ct(volume, engine, work / f"ct_{len(ct)}", export_dir, env, options)
        print(f"CT {name}: case {ct[name]['record']['seconds']:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    last = eager_encoder_seconds()
    encoder = (first + last) / 2
    print(f"eager float32 encoder (end): {last:.3f} s/image; used: the mean, {encoder:.3f} s/image\n")
    print(f"{'what':<58}{'figure':>16}{'ratio':>22}  agreement")
    reference = _nifti(next(iter(ct.values()))["record"]["outputs"]["nifti"]) if ct else None
    for name, run in ct.items():
        rate = run["record"]["slices"] / run["record"]["seconds"]
        mask = _nifti(run["record"]["outputs"]["nifti"])
        changed = int((mask != reference).sum())
        print(
            f"{'CT ' + name:<58}{rate:>9.2f} sl/s{rate * encoder:>11.2f} enc. rates  "
            f"{run['cpu']:.0f} CPU-s; {changed} voxels differ from eager"
        )
    runs = list(trained.values())
    for name, (seconds, cpu, out) in trained.items():
        done = [json.loads((out / f"fold{k}" / "metrics.json").read_text())["iterations"] for k in (0, 1)]
        same = done == [
            json.loads((runs[0][2] / f"fold{k}" / "metrics.json").read_text())["iterations"] for k in (0, 1)
        ]
        diff = f"max |adapter - first| {_adapter_difference(runs[0][2], out):.1e}" if same else "another schedule"
        print(
            f"{'train polyp 4 shots, cold cache, ' + name:<58}{seconds:>10.1f} s  {seconds / encoder:>9.1f} enc.-times"
            f"  {cpu:.0f} CPU-s; fold iterations {done[0]} + {done[1]}; {diff}"
        )
    if (iterations != 300 and not skip_train) or slices:
        shown = "no training" if skip_train else f"{iterations} training iterations"
        print(f"(shortened: {shown}, the CT's first {slices or 'all'} slices)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=None, help="default: torch and every installed runtime")
    parser.add_argument("--export-dir", default=None, help="where exports are kept (default: a temporary folder)")
    parser.add_argument("--skip-2d", action="store_true", help="only the CT")
    parser.add_argument("--images", type=int, default=None, help="2D agreement: the first N images per task (all)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS_2D), choices=TASKS_2D, help="2D agreement tasks")
    parser.add_argument(
        "--skip-ct", action="store_true", help="only the 2D agreement (with --targets: the training only)"
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="issue 38's figures instead: eager encoder s/image, default 4-shot polyp training from a cold cache in "
        "encoder-times and CT slices/s in eager encoder rates, per variant (OpenVINO needed)",
    )
    parser.add_argument("--skip-train", action="store_true", help="with --targets: the CT only")
    parser.add_argument(
        "--train-variants",
        nargs="+",
        default=(),
        metavar="WORD",
        help="with --targets: only the training variants whose names contain a WORD (default, bf16, before)",
    )
    parser.add_argument("--iterations", type=int, default=300, help="with --targets: training iterations (default)")
    parser.add_argument("--slices", type=int, default=None, help="with --targets: only the CT's first N slices")
    parser.add_argument(
        "--int8-encoder",
        default=None,
        help="with --targets: also the CT with this blosam quantize folder (e.g. from scripts/check_int8.py)",
    )
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
    if args.targets:
        backbone = load_adapters([shipped_adapter("lung_ct")])[0][0].backbone
        start = time.perf_counter()
        export_encoder(backbone, "openvino", export_dir)
        print(f"openvino: export ready in {time.perf_counter() - start:.1f} s (once per machine, not in the figures)")
        speed_targets(
            data,
            export_dir,
            work,
            args.skip_train,
            args.iterations,
            args.slices,
            args.int8_encoder,
            args.train_variants,
            args.skip_ct,
        )
        print(f"\nbenchmark took {time.perf_counter() - began:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")
        return
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
