"""Backbones, the BLO-SAM module, adapter checkpoints and the embedding cache."""

from __future__ import annotations

from blosam_med.model.adapter import DECODER_HEADS, LORA_TARGET, LoraSettings, count_lora_modules, inject_lora
from blosam_med.model.backbones import (
    BACKBONES,
    Backbone,
    CheckpointMismatchError,
    Preprocessing,
    build_backbone,
    load_state_dict_checked,
)
from blosam_med.model.blosam import PROMPT_PARAMETER, BloSam, PromptFreeDecoder
from blosam_med.model.checkpoint import BackboneMismatchError, load_adapter, merge_adapters, read_adapter, save_adapter
from blosam_med.model.embedding_cache import EmbeddingCache
from blosam_med.model.ensemble import AdapterEnsemble, PromptFreeModel, mean_probability_logit
from blosam_med.model.network import PromptFreeNetwork
from blosam_med.model.paths import default_cache_dir
from blosam_med.model.preprocess import postprocess_logits, preprocess_batch, preprocess_image, resized_shape

__all__ = [
    "AdapterEnsemble",
    "BACKBONES",
    "Backbone",
    "BackboneMismatchError",
    "BloSam",
    "CheckpointMismatchError",
    "DECODER_HEADS",
    "EmbeddingCache",
    "LORA_TARGET",
    "LoraSettings",
    "PROMPT_PARAMETER",
    "PromptFreeModel",
    "PromptFreeNetwork",
    "Preprocessing",
    "PromptFreeDecoder",
    "build_backbone",
    "count_lora_modules",
    "default_cache_dir",
    "describe_model",
    "inject_lora",
    "load_adapter",
    "load_state_dict_checked",
    "mean_probability_logit",
    "merge_adapters",
    "postprocess_logits",
    "preprocess_batch",
    "preprocess_image",
    "read_adapter",
    "resized_shape",
    "save_adapter",
]


def describe_model(backbone: str = "litemedsam", checkpoint: str | None = None, lora_rank: int = 4) -> dict:
    """What ``blosam info --json`` prints: the backbone and the sizes of BLO-SAM's frozen and trained parts."""
    bb = build_backbone(backbone, checkpoint)
    model = BloSam(bb, LoraSettings(rank=lora_rank, alpha=float(lora_rank)))
    n = lambda params: sum(p.numel() for p in params)
    return {
        "backbone": bb.name,
        "fingerprint": bb.fingerprint,
        "input_size": bb.preprocessing.input_size,
        "preprocessing": bb.preprocessing.to_dict(),
        "embedding_shape": list(bb.embedding_shape),
        "encoder_params": n(model.image_encoder.parameters()),
        "encoder_frozen": not any(p.requires_grad for p in model.image_encoder.parameters()),
        "decoder_params": n(model.mask_decoder.parameters()) + n(model.prompt_encoder.parameters()),
        "lora_modules": model.lora_modules,
        "lora_rank": lora_rank,
        "lower_params": n(model.lower_parameters()),
        "upper_params": n(model.upper_parameters()),
        "trainable_params": n(p for p in model.parameters() if p.requires_grad),
    }
