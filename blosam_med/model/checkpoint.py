"""Adapter checkpoints: only what BLO-SAM trains (LoRA, decoder heads, prompt) plus what describes the model."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from blosam_med.io import atomic_write
from blosam_med.model.adapter import LoraSettings
from blosam_med.model.backbones import Backbone, Preprocessing, build_backbone
from blosam_med.model.blosam import BloSam

__all__ = ["ADAPTER_FORMAT", "save_adapter", "safe_load", "read_adapter", "load_adapter", "BackboneMismatchError"]

logger = logging.getLogger(__name__)

ADAPTER_FORMAT = "blosam_med.adapter/1"


class BackboneMismatchError(ValueError):
    """An adapter was loaded into a backbone other than the one it was trained on."""


def save_adapter(
    model: BloSam, path: str | Path, *, extra: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write the trained tensors and the model description to ``path`` atomically.

    Args:
        model: the trained model.
        path: output file (conventionally ``adapter.pt``).
        extra: JSON-like metadata stored under ``"extra"`` (task preset, shots, A/B draw, metrics...).
        overwrite: replace an existing file.
    """
    payload = {
        "format": ADAPTER_FORMAT,
        "backbone": model.backbone_name,
        "backbone_fingerprint": model.backbone_fingerprint,
        "preprocessing": model.preprocessing.to_dict(),
        "embedding_shape": list(model.embedding_shape),
        "lora": model.lora.to_dict(),
        "train_heads": model.train_heads,
        "prompt_init": model.prompt_init,
        "state_dict": model.trainable_state_dict(),
        "extra": extra or {},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)


def safe_load(path: str | Path, what: str, advice: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file it refuses gives one ``ValueError`` naming it.

    A file holding Python objects (a pickle that would run code) is refused as such, without torch's advice to load
    it with ``weights_only=False``; truncated or foreign files name torch's reason.

    Raises:
        ValueError: ``"<path>: not a readable <what> (<reason>)"`` and ``advice`` when given.
    """
    tail = f"; {advice}" if advice else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = next(
            (ln for ln in lines if ln.startswith(("Trying to load", "Unsupported"))), lines[-1] if lines else ""
        )
        raise ValueError(
            f"{path}: not a readable {what}: it holds Python objects that a safe load refuses ({reason.rstrip('.')}); "
            f"blosam files hold tensors only, so this one was not written by blosam or was altered{tail}"
        ) from None
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(f"{path}: not a readable {what} ({type(err).__name__}: {reason}){tail}") from err


def read_adapter(path: str | Path) -> dict[str, Any]:
    """Read and check an adapter file (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter checkpoint not found")
    payload = safe_load(path, "adapter checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a blosam_med adapter (format {found!r}, expected {ADAPTER_FORMAT!r})")
    return payload


def load_adapter(
    path: str | Path, backbone: Backbone | None = None, *, checkpoint: str | Path | None = None
) -> tuple[BloSam, dict[str, Any]]:
    """Rebuild a trained BLO-SAM model from an adapter file.

    Args:
        path: adapter file written by :func:`save_adapter`.
        backbone: an already built backbone to reuse (several adapters may share one); built from the adapter's
            backbone name and ``checkpoint`` when ``None``.
        checkpoint: backbone checkpoint for SAM/MedSAM backbones.

    Returns:
        The model (eval mode) and the adapter's ``extra`` metadata.

    Raises:
        BackboneMismatchError: ``backbone`` is not the one the adapter was trained on.
    """
    payload = read_adapter(path)
    name = payload["backbone"]
    if backbone is None:
        backbone = build_backbone(name, checkpoint)
    if backbone.name != name or list(backbone.embedding_shape) != list(payload["embedding_shape"]):
        raise BackboneMismatchError(
            f"{path}: adapter was trained on backbone '{name}' "
            f"(embeddings {tuple(payload['embedding_shape'])}), not '{backbone.name}' "
            f"(embeddings {tuple(backbone.embedding_shape)})"
        )
    if backbone.fingerprint != payload["backbone_fingerprint"]:
        logger.warning(
            "%s: trained on %s weights %s, loading into %s",
            path,
            name,
            payload["backbone_fingerprint"],
            backbone.fingerprint,
        )
    if Preprocessing.from_dict(payload["preprocessing"]) != backbone.preprocessing:
        raise BackboneMismatchError(
            f"{path}: adapter preprocessing {payload['preprocessing']} differs from the "
            f"backbone's {backbone.preprocessing.to_dict()}"
        )
    model = BloSam(
        backbone,
        LoraSettings(**payload["lora"]),
        train_heads=bool(payload["train_heads"]),
        prompt_init=payload.get("prompt_init", "no_mask"),  # adapters written before prompt_init existed
    )
    try:
        model.load_trainable_state_dict(payload["state_dict"], str(path))
    except ValueError as err:
        raise BackboneMismatchError(str(err)) from err
    return model.eval(), payload.get("extra", {})
