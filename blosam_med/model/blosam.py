"""The BLO-SAM module: a frozen SAM-family backbone with LoRA on the mask decoder and a learned dense prompt."""

from __future__ import annotations

import copy

import torch
from torch import nn

from blosam_med.model.adapter import DECODER_HEADS, MASK_HEADS, LoraSettings, count_lora_modules, inject_lora
from blosam_med.model.backbones import Backbone
from blosam_med.model.preprocess import postprocess_logits

__all__ = ["BloSam", "PromptFreeDecoder", "PROMPT_PARAMETER", "PROMPT_TOKENS", "PROMPT_INITS", "load_trainable"]

#: The upper-level variable: SAM's dense "no mask" embedding, broadcast over the embedding grid.
PROMPT_PARAMETER = "prompt_encoder.no_mask_embed.weight"

#: Learned sparse prompt tokens (``prompt_init="box"``), also upper-level.
PROMPT_TOKENS = "prompt_tokens"

#: Where the learned prompt starts: SAM's "no mask" embedding alone (the paper), or with the sparse tokens of a box
#: over the whole input frame, a prompt the pretrained decoder answers with a non-empty mask.
PROMPT_INITS = ("no_mask", "box")


class BloSam(nn.Module):
    """Prompt-free SAM for few-shot segmentation (BLO-SAM, arXiv 2402.16338).

    The image encoder is frozen (and stays in eval mode). LoRA adapters (``peft``) sit on the q/v projections of the
    mask decoder's two-way transformer; with ``train_heads`` the decoder's output heads are trained with them. These
    are the lower-level parameters. The upper-level parameter is the dense prompt embedding
    (``prompt_encoder.no_mask_embed``, initialised at its pretrained value), so no prompt is needed at inference.
    With ``prompt_init="box"`` the upper level also learns two sparse prompt tokens, initialised at the prompt
    encoder's embedding of a box over the whole input frame: LiteMedSAM answers its "no mask" embedding alone with an
    empty mask, so training from it starts at Dice 0, whereas the box gives a non-empty mask to refine.

    Args:
        backbone: a built backbone (see :func:`blosam_med.model.build_backbone`).
        lora: LoRA rank, alpha and dropout.
        train_heads: also train the decoder heads (output upscaling, hypernetwork MLPs, IoU head, output tokens).
        prompt_init: ``"no_mask"`` or ``"box"`` (see :data:`PROMPT_INITS`).
        upper_heads: move the heads that shape the mask (:data:`~blosam_med.model.adapter.MASK_HEADS`) to the
            upper level: LoRA alone fits subset A and B trains the prompt and the heads (needs ``train_heads``).

    Example::

        model = BloSam(build_backbone("litemedsam"))
        logits = model.forward_embeddings(embeddings)  # (B, 256, 64, 64) -> (B, 1, 256, 256)
    """

    def __init__(
        self,
        backbone: Backbone,
        lora: LoraSettings = LoraSettings(),
        train_heads: bool = True,
        prompt_init: str = "no_mask",
        upper_heads: bool = False,
    ) -> None:
        super().__init__()
        if prompt_init not in PROMPT_INITS:
            raise ValueError(f"prompt_init must be one of {PROMPT_INITS}, got '{prompt_init}'")
        if upper_heads and not train_heads:
            raise ValueError("upper_heads=True trains the decoder heads at the upper level: it needs train_heads=True")
        self.backbone = backbone  # a plain dataclass: its modules are not registered twice
        self.backbone_name = backbone.name
        self.backbone_fingerprint = backbone.fingerprint
        self.preprocessing = backbone.preprocessing
        self.embedding_shape = tuple(backbone.embedding_shape)
        self.lora = lora
        self.train_heads = train_heads
        self.upper_heads = upper_heads
        # The encoder is shared (several adapters may use one backbone); the decoder side is copied, never mutated.
        self.image_encoder = backbone.image_encoder
        self.prompt_encoder = copy.deepcopy(backbone.prompt_encoder)
        self.mask_decoder = copy.deepcopy(backbone.mask_decoder)
        inject_lora(self, lora)  # freezes every non-LoRA parameter
        if train_heads:
            for name in DECODER_HEADS:
                getattr(self.mask_decoder, name).requires_grad_(True)
        self.prompt_encoder.no_mask_embed.weight.requires_grad_(True)
        self.image_encoder.requires_grad_(False)
        # The dense positional encoding depends only on the frozen prompt encoder's random Fourier matrix: computed
        # once here (moves with .to()), not in every decoder call.
        with torch.no_grad():
            self.register_buffer("image_pe", self.prompt_encoder.get_dense_pe(), persistent=False)
        self.prompt_init = prompt_init
        self.prompt_tokens: nn.Parameter | None = None
        if prompt_init == "box":
            self.prompt_tokens = nn.Parameter(self._frame_box_tokens())

    @torch.no_grad()
    def _frame_box_tokens(self) -> torch.Tensor:
        """The prompt encoder's sparse embedding (1, 2, C) of a box over the whole input frame."""
        size = float(self.preprocessing.input_size)
        box = torch.tensor([[0.0, 0.0, size - 1, size - 1]], device=self.prompt.device)
        sparse, _ = self.prompt_encoder(points=None, boxes=box, masks=None)
        return sparse.detach().clone()

    def train(self, mode: bool = True) -> BloSam:
        """Set train mode on the decoder side; the frozen encoder always stays in eval mode."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    @property
    def prompt(self) -> nn.Parameter:
        """The learned dense prompt (1, C)."""
        return self.prompt_encoder.no_mask_embed.weight

    def _upper_head(self, name: str) -> bool:
        """Whether the parameter ``name`` belongs to a mask head trained at the upper level (``upper_heads``)."""
        return self.upper_heads and name.startswith(tuple(f"mask_decoder.{head}." for head in MASK_HEADS))

    def upper_parameters(self) -> list[nn.Parameter]:
        """Upper-level parameters: the dense prompt, with ``prompt_init="box"`` the sparse tokens, with
        ``upper_heads`` the mask heads."""
        heads = [p for n, p in self.named_parameters() if p.requires_grad and self._upper_head(n)]
        return [self.prompt] + ([self.prompt_tokens] if self.prompt_tokens is not None else []) + heads

    def named_lower_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Lower-level parameters with their names: LoRA weights and, with ``train_heads``, the decoder heads (only
        the IoU head with ``upper_heads``)."""
        upper = (PROMPT_PARAMETER, PROMPT_TOKENS)
        return [
            (n, p) for n, p in self.named_parameters() if p.requires_grad and n not in upper and not self._upper_head(n)
        ]

    def lower_parameters(self) -> list[nn.Parameter]:
        """Lower-level parameters: LoRA weights and, with ``train_heads``, the decoder heads."""
        return [p for _, p in self.named_lower_parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained tensor (lower and upper level), detached, on the CPU."""
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy trained tensors in; the keys must be exactly this model's trainable parameters."""
        load_trainable(self, state, source)

    @property
    def lora_modules(self) -> int:
        return count_lora_modules(self)

    def frozen_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The pretrained encoder's embeddings of what :meth:`forward_embeddings` takes: here the same tensor (an
        encoder-tail model maps its head features through the untrained tail). Box refinement decodes these."""
        return embeddings

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen encoder: preprocessed (B, 3, S, S) -> embeddings (B, C, h, w)."""
        return self.image_encoder(images)

    def forward_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Prompt-free decoding of a batch in one decoder call.

        Args:
            embeddings: (B, C, h, w) image embeddings.

        Returns:
            (B, 1, 4h, 4w) mask logits (256x256 for LiteMedSAM and SAM), in the padded input frame.
        """
        if embeddings.ndim != 4 or tuple(embeddings.shape[1:]) != self.embedding_shape:
            raise ValueError(
                f"expected embeddings (B, {', '.join(map(str, self.embedding_shape))}), got {tuple(embeddings.shape)}"
            )
        grid = embeddings.shape[-2:]
        # Prompt batch 1 against image batch B: segment_anything broadcasts in attention (one call, no loop).
        dense = self.prompt.reshape(1, -1, 1, 1).expand(1, -1, *grid)
        sparse: torch.Tensor = (
            self.prompt_tokens if self.prompt_tokens is not None else embeddings.new_zeros((1, 0, embeddings.shape[1]))
        )
        logits, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S) -> mask logits (B, 1, 256, 256); the encoder runs without gradients."""
        return self.forward_embeddings(self.encode(images))

    def postprocess(self, logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Undo padding and resizing: (B, 1, h, w) logits -> (B, 1, H, W) at the original image size."""
        return postprocess_logits(logits, self.preprocessing, original_size)


def load_trainable(module: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy trained tensors into ``module``; the keys must be exactly its parameters that require gradients.

    Raises:
        ValueError: missing, unexpected or misshapen tensors, naming ``source`` and up to five keys of each.
    """
    own = dict(module.named_parameters())
    expected = {n for n, p in own.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(n for n in expected & set(state) if own[n].shape != state[n].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: trained tensors do not fit this model; missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {wrong[:5]}"
        )
    with torch.no_grad():
        for n, t in state.items():
            own[n].copy_(t)


class PromptFreeDecoder(nn.Module):
    """``embeddings -> logits`` view of a :class:`BloSam`, for engines and inferers that call ``network(inputs)``
    (MONAI's ``SupervisedEvaluator``, ``torch.func.functional_call``)."""

    def __init__(self, model: BloSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.model.forward_embeddings(embeddings)
