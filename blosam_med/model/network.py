"""The whole prompt-free network as one module: image in, mask logits out (what a MONAI bundle's ``network_def`` is)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from blosam_med.model.backbones import build_backbone
from blosam_med.model.blosam import BloSam
from blosam_med.model.checkpoint import load_adapter
from blosam_med.model.encoder_tail import TailBloSam
from blosam_med.model.ensemble import AdapterEnsemble, PromptFreeModel
from blosam_med.model.preprocess import preprocess_batch

__all__ = ["PromptFreeNetwork"]


class PromptFreeNetwork(nn.Module):
    """Windowed images ``(B, C, H, W)`` -> mask logits ``(B, 1, H, W)``: preprocessing, the frozen encoder and a
    trained adapter (or a cross-fitted ensemble, averaged as probabilities) in one ``forward``.

    This is the network the bundles declare as ``network_def`` (for ``verify_net_in_out``, ``ckpt_export`` and code
    that calls ``network(image)``). It decides nothing: threshold the logits at ``logit(threshold)`` of the adapter's
    task preset (0 for the default 0.5). Test-time flips, box refinement and mask post-processing are applied by
    :class:`~blosam_med.inference.Predictor` (``blosam infer`` and the bundles' ``run``), not here.

    Its ``state_dict`` is the full network (encoder included), so MONAI's ``CheckpointLoader`` and
    ``copy_model_state`` work on it as on any module; trained adapters are read with :meth:`from_adapter`.

    Args:
        adapter: an adapter file (a bundle's ``models/model.pt``, a run's ``adapter.pt``), an already built
            :class:`BloSam` / :class:`~blosam_med.model.encoder_tail.TailBloSam` / :class:`AdapterEnsemble` (an
            encoder-tail adapter runs its frozen head here, then the trained tail and the decoder), or ``None`` for the untrained starting point of training (zero
            LoRA update, the backbone's own no-mask prompt).
        backbone: backbone name when ``adapter`` is ``None`` (an adapter file names its own).
        checkpoint: backbone checkpoint for SAM / MedSAM backbones (LiteMedSAM's ships with its package).

    Raises:
        FileNotFoundError: the adapter file does not exist.
        ValueError: it is not a blosam_med adapter.
    """

    def __init__(
        self,
        adapter: str | Path | PromptFreeModel | None = None,
        *,
        backbone: str = "litemedsam",
        checkpoint: str | Path | None = None,
    ) -> None:
        super().__init__()
        if adapter is None:
            model: PromptFreeModel = BloSam(build_backbone(backbone, checkpoint)).eval()
        elif isinstance(adapter, BloSam | TailBloSam | AdapterEnsemble):
            model = adapter
        else:
            model, _ = load_adapter(adapter, checkpoint=checkpoint)
        self.model = model
        self.preprocessing = model.preprocessing

    @property
    def members(self) -> int:
        """How many cross-fitted models are averaged (1 for a single adapter)."""
        return len(self.model) if isinstance(self.model, AdapterEnsemble) else 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits of a batch of one size.

        Args:
            images: (B, C, H, W) float, C = 1 (grey, repeated to 3) or 3 (RGB), intensities windowed to [0, 1] as
                the task's preset windows them.

        Returns:
            (B, 1, H, W) float32 logits on the input grid.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
        device = next(self.model.parameters()).device
        x = preprocess_batch(list(images.to(device)), self.preprocessing)
        with torch.no_grad():
            embeddings = self.model.backbone.image_encoder(x)
        logits = self.model.forward_embeddings(embeddings)
        return self.model.postprocess(logits, (int(images.shape[-2]), int(images.shape[-1]))).float()
