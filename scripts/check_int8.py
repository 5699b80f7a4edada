"""Issue 38's int8 gate: per task, the shipped adapter's int8 encoder against float32, on every evaluation image.

    python scripts/check_int8.py [--data ../shared/data] [--tasks lung_xray polyp teeth lung_ct] [--work /tmp/int8]

For each task this runs what ``blosam quantize --task <task>`` runs (calibration on the 40-pair folder's training
split, the images the shipped adapter was trained on; lung_ct: the slices of its one volume), with the check cases
being every image of ``eval/<task>`` (160) or, for lung_ct, every CT volume in the data (the NIfTI, its DICOM series
and the 3-slice DICOM series). It prints, per task: the smallest and mean mask Dice against float32 OpenVINO (per 2D
image, per volume), the cases below 0.99, and the encoder's s/image in float32 and int8 (medians of interleaved
single-image runs on the check inputs, one process, 2 threads). The int8 folders stay in ``--work`` (for
``benchmark_inference.py --targets --int8-encoder``). ``--timing-only`` times those folders again (7 inputs), e.g.
under ``ONEDNN_MAX_CPU_ISA=AVX2``, which OpenVINO's CPU plugin honours, to see an AVX2-only CPU's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from blosam_med.data import open_datalist
from blosam_med.inference.infer import load_adapters
from blosam_med.inference.int8 import quantize_for_adapters
from blosam_med.model.encoder_engines import export_encoder, openvino_engine
from blosam_med.model.quantize import MIN_DICE, int8_engine
from blosam_med.model.shipped import shipped_adapter

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TASKS = ("lung_xray", "polyp", "teeth", "lung_ct")


def datalist(data: Path, task: str, images: int | None) -> dict[str, list[dict]]:
    if task == "lung_ct":
        volume = {"image": str(data / "lung_ct/images/cip_copdgene_10002K_ct64.nii.gz")}
        series = [{"image": str(p / "dicom")} for p in sorted((data / "ct_dicom").iterdir()) if (p / "dicom").is_dir()]
        return {"training": [volume], "test": [volume, *series]}
    pool = open_datalist(data / "eval" / task)
    check = [*pool["training"], *pool["test"]]
    return {"training": open_datalist(data / task)["training"], "test": check[:images] if images else check}


def encoder_seconds(task: str, folder: Path, root: Path, rounds: int = 6) -> tuple[float, float]:
    """Median s/image of the float32 and int8 encoders on ``rounds`` random inputs, interleaved."""
    models, _, _ = load_adapters([shipped_adapter(task)])
    backbone = models[0].backbone
    fp32 = openvino_engine(export_encoder(backbone, "openvino", root))
    int8 = int8_engine(folder, backbone)
    size = backbone.preprocessing.input_size
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    g = torch.Generator().manual_seed(0)
    for _ in range(rounds):
        x = torch.rand(1, 3, size, size, generator=g)
        for name, engine in (("fp32", fp32), ("int8", int8)):
            start = time.perf_counter()
            engine(x)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["fp32"][1:]), statistics.median(times["int8"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--work", default="/tmp/blosam_int8", help="int8 folders, datalists and the export cache")
    parser.add_argument("--images", type=int, default=None, help="check only the first N pool images (all)")
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only time the encoders of int8 folders made before in --work (e.g. with ONEDNN_MAX_CPU_ISA=AVX2)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        if args.timing_only:
            fp32_s, int8_s = encoder_seconds(task, work / task, work / "cache", rounds=8)
            print(f"{task}: float32 {fp32_s:.3f} s/image, int8 {int8_s:.3f} s/image, {fp32_s / int8_s:.2f}x")
            continue
        listed = work / f"{task}_datalist.json"
        listed.write_text(json.dumps(datalist(data, task, args.images)))
        start = time.perf_counter()
        described = quantize_for_adapters(
            [shipped_adapter(task)], listed, work / task, min_dice=0.0, cache_dir=work / "cache", overwrite=True
        )
        seconds = time.perf_counter() - start
        check = described["check"]
        below = [c for c in check["cases"] if c["dice"] < MIN_DICE]
        fp32_s, int8_s = encoder_seconds(task, work / task, work / "cache")
        row = {
            "task": task,
            "calibration_images": len(described["calibration"]),
            "cases": len(check["cases"]),
            "smallest_dice": check["smallest_dice"],
            "mean_dice": check["mean_dice"],
            "below_0.99": len(below),
            "passes": not below,
            "fp32_s_per_image": round(fp32_s, 3),
            "int8_s_per_image": round(int8_s, 3),
            "speed_up": round(fp32_s / int8_s, 2),
            "quantize_and_check_s": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| task | cases | smallest Dice | mean Dice | below 0.99 | gate | fp32 s/img | int8 s/img | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['task']} | {r['cases']} | {r['smallest_dice']:.4f} | {r['mean_dice']:.4f} | {r['below_0.99']} | "
            f"{'passes' if r['passes'] else 'fails'} | {r['fp32_s_per_image']:.3f} | {r['int8_s_per_image']:.3f} | "
            f"{r['speed_up']:.2f}x |"
        )


if __name__ == "__main__":
    main()
