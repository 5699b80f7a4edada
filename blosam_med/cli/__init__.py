"""The ``blosam`` command: one parser, one small function per subcommand.

Each subcommand parses its arguments, resolves the device and calls one library function; results go to
stdout, diagnostics to the log. One module per concern, each with its ``_add_<name>(sub)`` / ``_run_<name>(args)``
pair: ``info`` (info, prepare, bundle), ``train``, ``evaluate``, ``infer``, ``quantize``, ``study``; ``common`` holds what they
share (``CLIError``, ``--engine``, ``resolve_device``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from blosam_med.cli.common import ENGINE_CHOICES as ENGINE_CHOICES
from blosam_med.cli.common import USER_ERRORS, resolve_device
from blosam_med.cli.common import CLIError as CLIError
from blosam_med.cli.evaluate import _add_evaluate
from blosam_med.cli.infer import _add_infer
from blosam_med.cli.info import _add_bundle, _add_info, _add_prepare
from blosam_med.cli.quantize import _add_quantize
from blosam_med.cli.study import _add_study
from blosam_med.cli.train import TRAIN_OPTIONS as TRAIN_OPTIONS
from blosam_med.cli.train import _add_train

__all__ = ["main", "build_parser", "resolve_device"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ registration
# Each entry adds one subcommand. Keep one ``_add_<name>`` function per subcommand, in its module.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
    _add_prepare,
    _add_train,
    _add_evaluate,
    _add_infer,
    _add_quantize,
    _add_study,
    _add_bundle,
]


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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        user_error = _user_error(err, getattr(args, "out", None))
        if user_error is None:
            raise
        print(f"blosam {args.command}: error: {user_error}", file=sys.stderr)
        return 2


def _user_error(err: BaseException, out: str | None = None) -> BaseException | None:
    """The user-facing error in an exception chain (MONAI's config parser wraps errors in RuntimeError); a failed
    ``torch.save`` outside our atomic writer (MONAI's CheckpointSaver) is reported as a write error of ``out``."""
    from blosam_med.io import torch_write_error

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, USER_ERRORS):
            return cause
        failed = torch_write_error(cause, out) if out else None
        if failed is not None:
            return failed
        cause = cause.__cause__ or cause.__context__
    return None
