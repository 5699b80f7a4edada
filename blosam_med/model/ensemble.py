"""Cross-fitted adapters: BLO-SAM models trained on rotated A/B splits of the same shots, averaged at inference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from blosam_med.model.blosam import BloSam
from blosam_med.model.encoder_tail import TailBloSam

__all__ = ["AdapterEnsemble", "Member", "PromptFreeModel", "mean_probability_logit"]

#: What an ensemble averages: models trained on one backbone, the encoder frozen or its tail adapted (one cut).
Member = BloSam | TailBloSam


def mean_probability_logit(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """One tensor: unchanged; several of one shape: the logit of their mean probability."""
    if len(logits) == 1:
        return logits[0]
    return torch.logit(torch.stack(list(logits)).sigmoid().mean(0), eps=1e-6)


class AdapterEnsemble(nn.Module):
    """Members of one backbone that predict as one model: the logit of their mean probability.

    Made by A/B cross-fitting (``blosam train --cross-fit K``): member ``k`` trained the adapter on one part of the
    shots and chose its prompt (and its best epoch) on the rest, rotated by fold ``k``, so every shot trains both
    levels of some member. The members share the backbone's frozen encoder; each has its own decoder copy.
    It answers what :class:`~blosam_med.inference.Predictor` asks of a :class:`BloSam`.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        kinds = {(m.backbone_name, m.embedding_shape, m.preprocessing) for m in members}
        if len(kinds) != 1:
            raise ValueError(f"ensemble members of different backbones: {sorted(str(k[:2]) for k in kinds)}")
        self.folds = nn.ModuleList(members)  # registered, so .to() and .eval() reach every member
        first = members[0]
        self.backbone = first.backbone
        self.backbone_name = first.backbone_name
        self.backbone_fingerprint = first.backbone_fingerprint
        self.preprocessing = first.preprocessing
        self.embedding_shape = first.embedding_shape

    @property
    def members(self) -> list[Member]:
        """The members, in fold order."""
        return [cast(Member, m) for m in self.folds]

    def __len__(self) -> int:
        return len(self.folds)

    def forward_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) embeddings -> (B, 1, 4h, 4w) logits of the members' mean probability."""
        return mean_probability_logit([m.forward_embeddings(embeddings) for m in self.members])

    def frozen_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The pretrained encoder's embeddings of what :meth:`forward_embeddings` takes, as every member gives them."""
        return self.members[0].frozen_embeddings(embeddings)

    def postprocess(self, logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Undo padding and resizing, as every member does."""
        return self.members[0].postprocess(logits, original_size)


#: What predicts masks from embeddings (or an encoder tail's head features): one trained model or a cross-fitted
#: ensemble.
PromptFreeModel = BloSam | TailBloSam | AdapterEnsemble
