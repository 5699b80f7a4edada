"""The ``blosam`` command: one parser, one small function per subcommand.

Each subcommand parses its arguments, resolves the device and calls one library function; results go to
stdout, diagnostics to the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

__all__ = ["main", "build_parser", "resolve_device"]

logger = logging.getLogger(__name__)


class CLIError(Exception):
    """A user error the CLI reports as one line on stderr with exit status 2."""


def resolve_device(name: str = "auto"):
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return torch.device(name)


# --------------------------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a backbone and the BLO-SAM trainable parts")
    p.add_argument("--backbone", default="litemedsam", help="backbone name (see --list)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file for SAM/MedSAM backbones")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="list registered backbones and exit")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from blosam_med.model import BACKBONES, describe_model

    if args.list:
        print("\n".join(sorted(BACKBONES)))
        return 0
    info = describe_model(args.backbone, checkpoint=args.checkpoint, lora_rank=args.lora_rank)
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


# ------------------------------------------------------------------------------------ registration
# Each entry adds one subcommand. Keep one ``_add_<name>`` function per subcommand above.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blosam",
        description="Prompt-free few-shot segmentation with BLO-SAM on MONAI",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for p in sub.choices.values():
        p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError) as err:
        print(f"blosam {args.command}: error: {err}", file=sys.stderr)
        return 2
