"""Pieces shared by the ``blosam`` subcommands: the user error, ``--engine``, devices and bundle defaults in help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import torch


class CLIError(Exception):
    """A user error the CLI reports as one line on stderr with exit status 2."""


#: ``--engine`` choices (blosam_med.model.encoder_engines.ENGINES, listed here so the parser imports no torch).
ENGINE_CHOICES = ("auto", "torch", "openvino", "onnxruntime")

#: Errors reported as one line naming the file and the problem (exit status 2), never a traceback. ``OSError``
#: covers I/O faults (folder not writable, disk full) and missing or existing files.
USER_ERRORS = (CLIError, OSError, ValueError)


def _add_engine(p: argparse.ArgumentParser, default: str = "auto", text: str | None = None) -> None:
    """The ``--engine`` option: what runs the frozen encoder."""
    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=default,
        help=text
        or "what runs the frozen encoder: auto (the fastest installed CPU runtime, else torch), torch, or a runtime "
        "(exported once, float32; README Speed)",
    )


def _add_int8(p: argparse.ArgumentParser) -> None:
    """The ``--int8-encoder`` option: a ``blosam quantize`` folder that runs the encoder instead of ``--engine``."""
    p.add_argument(
        "--int8-encoder",
        default=None,
        metavar="FOLDER",
        help="run the encoder in int8 from this blosam quantize folder (CPU, opt-in: masks differ slightly from "
        "float32's; docs/speed.md#int8-encoder)",
    )


def _add_adapters(p: argparse.ArgumentParser) -> None:
    """``--adapter`` (files) or ``--task`` (shipped adapters), either repeatable, one of them required."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", action="append", help="adapter file; repeat for several structures")
    which.add_argument(
        "--task",
        action="append",
        help="an adapter shipped with the package (lung_xray, lung_ct, polyp, "
        "teeth; see its MODEL_CARD.md); repeat for several structures",
    )


def _adapter_paths(args: argparse.Namespace) -> list[str]:
    """The adapter files of ``--adapter``, or the shipped adapters of ``--task``."""
    if args.adapter:
        return list(args.adapter)
    from blosam_med.model.shipped import shipped_adapter

    return [str(shipped_adapter(task)) for task in args.task]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given.

    Raises:
        CLIError: a name torch does not know (``gpu``), a device type other than CPU and CUDA, CUDA or a CUDA
            index that this machine does not have.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--device {name}: not a device name ({err}); use auto, cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {name}: blosam runs on cpu or cuda, not {device.type}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _process_device(name: str) -> torch.device:
    """The device of this torchrun process: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` on a GPU machine, else the CPU."""
    from blosam_med.distributed import local_device

    resolve_device(name)  # the same checks as without --distributed
    return local_device(name)


def _bundle_defaults(config: str) -> Callable[[str, str], str]:
    """``help(text, bundle_id)``: ``text`` with the default ``config`` (a bundle config) gives that id.

    Expressions (``$...``) and references (``@...``) are described by ``text`` itself, so only plain values are shown.
    """
    from blosam_med.workflow import bundle_config

    raw = yaml.safe_load(bundle_config(config).read_text()) or {}

    def describe(text: str, bundle_id: str) -> str:
        value = raw.get(bundle_id)
        shown = not (isinstance(value, str) and value[:1] in "$@%")
        return f"{text} (default: {value}, {config})" if shown else f"{text} (default: {config})"

    return describe
