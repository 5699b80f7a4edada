"""LoRA on the mask decoder's two-way transformer, through ``peft``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

__all__ = ["LoraSettings", "LORA_TARGET", "DECODER_HEADS", "MASK_HEADS", "inject_lora", "count_lora_modules"]

#: q and v projections of every attention block in ``mask_decoder.transformer`` (14 linears for a depth-2 decoder).
LORA_TARGET = r"mask_decoder\.transformer\..*\.(q_proj|v_proj)"

#: ``MaskDecoder`` submodules trained with the LoRA weights at the lower level.
DECODER_HEADS = ("output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head", "mask_tokens", "iou_token")

#: The heads that shape the mask (all but the IoU head, which no mask loss reaches): upper-level with
#: ``BloSam(upper_heads=True)``.
MASK_HEADS = ("output_upscaling", "output_hypernetworks_mlps", "mask_tokens", "iou_token")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters. ``alpha = rank`` gives scale 1 (the original BLO-SAM's unscaled LoRA)."""

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def inject_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Insert LoRA layers in place on ``model.mask_decoder.transformer`` q/v projections.

    ``peft`` freezes every non-LoRA parameter of ``model``; the caller re-enables what else it trains.
    """
    if settings.rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {settings.rank}")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int; a float scales as well
        lora_dropout=settings.dropout,
        target_modules=LORA_TARGET,
    )
    return inject_adapter_in_model(config, model)


def count_lora_modules(model: nn.Module) -> int:
    """Number of modules carrying a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in model.modules())
