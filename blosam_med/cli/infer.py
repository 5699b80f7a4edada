"""``blosam infer``: prompt-free segmentation with one or more adapters."""

from __future__ import annotations

import argparse
import json
import sys

from blosam_med.cli.common import (
    CLIError,
    _adapter_paths,
    _add_adapters,
    _add_engine,
    _add_int8,
    _process_device,
    resolve_device,
)


# -------------------------------------------------------------------------------------------- infer
def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="prompt-free segmentation of images, DICOM, NIfTI volumes, folders, datalists")
    _add_adapters(p)
    p.add_argument("--input", required=True, help="image, DICOM file or series folder, NIfTI, folder or datalist")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--format",
        nargs="+",
        choices=("nifti", "png", "dicom-seg"),
        default=None,
        help="outputs (default: png for 2D; nifti and a png montage for volumes)",
    )
    p.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default=None, help="slicing axis of volumes")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per encoder/decoder call (default: 8 on a GPU, 1 on the CPU)",
    )
    p.add_argument("--probabilities", action="store_true", help="also write sigmoid probability maps (NIfTI)")
    p.add_argument("--labels", nargs="+", default=None, help="structure names, one per adapter")
    p.add_argument("--split", default=None, help="datalist input: only this split")
    p.add_argument("--checkpoint", default=None, help="backbone checkpoint for SAM/MedSAM backbones")
    p.add_argument("--cache-dir", default=None, help="reuse/fill an embedding cache")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision on a GPU (not on the CPU)")
    _add_engine(p)
    _add_int8(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute finished cases and replace existing outputs (a rerun skips finished cases)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="split the cases across torchrun processes (gloo on the CPU, nccl with cuda:LOCAL_RANK on GPUs)",
    )
    p.set_defaults(func=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    """Exit status 0, or 2 when any case failed (each failure is on stderr and in ``<out>/manifest.json``)."""
    from blosam_med import distributed
    from blosam_med.inference import run_inference
    from blosam_med.io import check_output_folder

    device = _process_device(args.device) if args.distributed else resolve_device(args.device)
    check_output_folder(args.out)
    if args.amp and device.type != "cuda":
        raise CLIError(
            f"--amp {args.amp}: mixed precision runs on a GPU only; on the CPU ({device}) inference runs in "
            "float32, so drop --amp"
        )
    if args.distributed:
        try:
            distributed.init_process_group(device)
        except RuntimeError as err:
            raise CLIError(f"--distributed: {err}") from err
    records = run_inference(
        _adapter_paths(args),
        args.input,
        args.out,
        args.format,
        axis=args.axis,
        batch_size=args.batch_size,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        device=device,
        checkpoint=args.checkpoint,
        split=args.split,
        labels=args.labels,
        cache_dir=args.cache_dir,
        amp=args.amp,
        engine=args.engine,
        int8_encoder=args.int8_encoder,
    )
    failed = [r for r in records if r["status"] == "failed"]
    if distributed.get_rank() == 0:
        for record in records:
            print(json.dumps(record))
        for record in failed:
            print(f"blosam infer: error: case {record['case']} ({record['image']}): {record['error']}", file=sys.stderr)
    if args.distributed:  # every process reports before any exits (torchrun stops the rest when one exits non-zero)
        distributed.barrier()
        distributed.destroy_process_group()
    return 2 if failed else 0
