"""Adapter checkpoints: only what BLO-SAM trains (LoRA, decoder heads, prompt; an encoder tail's trained tensors)
plus what describes the model."""

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
from blosam_med.model.encoder_tail import TailBloSam, TailSettings
from blosam_med.model.ensemble import AdapterEnsemble, PromptFreeModel

__all__ = [
    "ADAPTER_FORMAT",
    "save_adapter",
    "safe_load",
    "read_adapter",
    "load_adapter",
    "merge_adapters",
    "BackboneMismatchError",
]

logger = logging.getLogger(__name__)

ADAPTER_FORMAT = "blosam_med.adapter/1"


class BackboneMismatchError(ValueError):
    """An adapter was loaded into a backbone other than the one it was trained on."""


#: What describes a trained model besides its tensors; the members of an ensemble must agree on all of it.
_DESCRIPTION = (
    "backbone",
    "backbone_fingerprint",
    "preprocessing",
    "embedding_shape",
    "lora",
    "train_heads",
    "prompt_init",
    "upper_heads",
    "encoder_tail",
)

#: What an adapter written before an option existed was trained with (``encoder_tail``: none, a frozen encoder).
_DESCRIPTION_DEFAULTS = {"prompt_init": "no_mask", "upper_heads": False, "encoder_tail": None}

#: Description keys written only when set, so an adapter without the option is the file it always was.
_WRITTEN_WHEN_SET = ("encoder_tail",)


def _written(described: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in described.items() if not (k in _WRITTEN_WHEN_SET and v is None)}


def save_adapter(
    model: PromptFreeModel, path: str | Path, *, extra: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write the trained tensors and the model description to ``path`` atomically.

    An :class:`AdapterEnsemble` is written as one file whose ``"members"`` list holds each member's trained tensors
    in place of ``"state_dict"``.

    Args:
        model: the trained model or cross-fitted ensemble.
        path: output file (conventionally ``adapter.pt``).
        extra: JSON-like metadata stored under ``"extra"`` (task preset, shots, A/B draw, metrics...).
        overwrite: replace an existing file.
    """
    members = list(model.members) if isinstance(model, AdapterEnsemble) else [model]
    described = [_describe(m) for m in members]
    if any(d != described[0] for d in described):
        raise ValueError(f"{path}: ensemble members differ in their description: {described}")
    states = [m.trainable_state_dict() for m in members]
    tensors = {"members": states} if isinstance(model, AdapterEnsemble) else {"state_dict": states[0]}
    payload = {"format": ADAPTER_FORMAT, **_written(described[0]), **tensors, "extra": extra or {}}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)


def _describe(model: BloSam | TailBloSam) -> dict[str, Any]:
    """The description of a model; an encoder-tail model's is its decoder's (the full backbone and its embeddings)
    with the tail's settings under ``encoder_tail``."""
    decoder = model.decoder if isinstance(model, TailBloSam) else model
    return {
        "backbone": decoder.backbone_name,
        "backbone_fingerprint": decoder.backbone_fingerprint,
        "preprocessing": decoder.preprocessing.to_dict(),
        "embedding_shape": list(decoder.embedding_shape),
        "lora": decoder.lora.to_dict(),
        "train_heads": decoder.train_heads,
        "prompt_init": decoder.prompt_init,
        "upper_heads": decoder.upper_heads,
        "encoder_tail": model.settings.to_dict() if isinstance(model, TailBloSam) else None,
    }


def merge_adapters(
    paths: list[str | Path], path: str | Path, *, extra: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write the adapters in ``paths`` (trained on one backbone with one description) as one ensemble file.

    Each input may itself be an ensemble; its members are taken in order. ``extra`` defaults to the first file's.

    Raises:
        ValueError: fewer than two members, or files that differ in backbone, preprocessing, LoRA settings,
            trained heads, prompt start or encoder tail, naming the files.
    """
    payloads = [read_adapter(p) for p in paths]
    first = {k: payloads[0].get(k, _DESCRIPTION_DEFAULTS.get(k)) for k in _DESCRIPTION}
    for p, payload in zip(paths[1:], payloads[1:], strict=True):
        differ = [k for k in _DESCRIPTION if payload.get(k, _DESCRIPTION_DEFAULTS.get(k)) != first[k]]
        if differ:
            raise ValueError(f"{p}: cannot be averaged with {paths[0]}: they differ in {', '.join(differ)}")
    members = [s for payload in payloads for s in payload.get("members", [payload.get("state_dict")])]
    if len(members) < 2:
        raise ValueError(f"{', '.join(map(str, paths))}: an ensemble needs at least two members, got {len(members)}")
    merged = {
        "format": ADAPTER_FORMAT,
        **_written(first),
        "members": members,
        "extra": extra or payloads[0].get("extra", {}),
    }
    return atomic_write(path, lambda tmp: torch.save(merged, tmp), overwrite=overwrite)


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
) -> tuple[PromptFreeModel, dict[str, Any]]:
    """Rebuild a trained BLO-SAM model (or a cross-fitted :class:`AdapterEnsemble`) from an adapter file.

    Args:
        path: adapter file written by :func:`save_adapter`.
        backbone: an already built backbone to reuse (several adapters may share one); built from the adapter's
            backbone name and ``checkpoint`` when ``None``.
        checkpoint: backbone checkpoint for SAM/MedSAM backbones.

    Returns:
        The model (eval mode) and the adapter's ``extra`` metadata: a :class:`~blosam_med.model.blosam.BloSam`, or
        for an adapter with ``encoder_tail`` a :class:`~blosam_med.model.encoder_tail.TailBloSam` (its
        ``backbone`` is the frozen head: caches of it hold the head's features), or an ensemble of either.

    Raises:
        BackboneMismatchError: ``backbone`` is not the one the adapter was trained on, or an encoder-tail adapter
            meets an encoder that cannot be split (not a TinyViT).
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
    states = payload["members"] if "members" in payload else [payload["state_dict"]]
    if "members" in payload and len(states) < 2:
        raise ValueError(f"{path}: an ensemble adapter needs at least two members, it holds {len(states)}")
    tail = payload.get("encoder_tail")
    settings = TailSettings.from_dict(tail, str(path)) if tail is not None else None
    members = []
    for i, state in enumerate(states):
        options: dict[str, Any] = {
            "lora": LoraSettings(**payload["lora"]),
            "train_heads": bool(payload["train_heads"]),
            "prompt_init": payload.get("prompt_init", _DESCRIPTION_DEFAULTS["prompt_init"]),
            "upper_heads": bool(payload.get("upper_heads", _DESCRIPTION_DEFAULTS["upper_heads"])),
        }
        model: BloSam | TailBloSam
        if settings is None:
            model = BloSam(backbone, **options)
        else:
            try:
                model = TailBloSam(backbone, settings, **options)
            except ValueError as err:
                raise BackboneMismatchError(
                    f"{path}: adapter adapts the encoder's tail (cut '{settings.cut}'), which needs a TinyViT "
                    f"encoder: {err}"
                ) from None
        try:
            model.load_trainable_state_dict(state, f"{path}, member {i}" if "members" in payload else str(path))
        except ValueError as err:
            raise BackboneMismatchError(str(err)) from err
        members.append(model)
    out: PromptFreeModel = AdapterEnsemble(members) if "members" in payload else members[0]
    return out.eval(), payload.get("extra", {})
