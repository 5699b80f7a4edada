"""``blosam quantize``: an opt-in int8 encoder, calibrated on a task's images and checked against float32."""

from __future__ import annotations

import argparse
import json

from blosam_med.cli.common import _adapter_paths, _add_adapters


# ----------------------------------------------------------------------------------------- quantize
def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="int8 encoder (OpenVINO + NNCF) calibrated on a task's images, kept only if its masks match float32's",
    )
    _add_adapters(p)
    p.add_argument("--data", required=True, help="datalist JSON or task folder of the task's own images")
    p.add_argument("--out", required=True, help="folder to write the int8 encoder to")
    p.add_argument("--split", default="training", help="calibration images: this datalist section")
    p.add_argument("--images", type=int, default=32, help="calibration images (volume slices), evenly spaced; 0: all")
    p.add_argument("--check-split", default="test", help="cases whose masks are compared with float32's")
    p.add_argument("--min-dice", type=float, default=0.99, help="smallest mask Dice against float32 to keep it")
    p.add_argument("--cache-dir", default=None, help="where the float32 export is kept (default: the cache)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_quantize)


def _run_quantize(args: argparse.Namespace) -> int:
    from blosam_med.inference.int8 import quantize_for_adapters

    described = quantize_for_adapters(
        _adapter_paths(args),
        args.data,
        args.out,
        split=args.split,
        check_split=args.check_split,
        images=args.images,
        min_dice=args.min_dice,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
    )
    check = described["check"]
    print(
        json.dumps(
            {
                "out": args.out,
                "calibration_images": len(described["calibration"]),
                "cases": len(check["cases"]),
                "smallest_dice": check["smallest_dice"],
                "mean_dice": check["mean_dice"],
            }
        )
    )
    return 0
