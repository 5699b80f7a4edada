"""Reference methods of the study: SAM with an oracle box prompt, and a U-Net trained from scratch on the shots."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from blosam_med.data.keys import SampleKeys
from blosam_med.engine.fewshot import augmentation, label_target
from blosam_med.inference.refine import box_logits, component_boxes
from blosam_med.model.backbones import Backbone, Preprocessing
from blosam_med.model.embedding_cache import EmbeddingCache
from blosam_med.model.preprocess import postprocess_logits, preprocess_image

__all__ = ["component_boxes", "BoxPromptPredictor", "UNetBaseline"]  # component_boxes: re-exported

logger = logging.getLogger(__name__)


class BoxPromptPredictor:
    """The backbone as MedSAM is used: one box prompt per object, here the ground-truth box of each component
    (an oracle: it needs the answer's extent, so it is a reference, not a competitor). The component masks are
    united; a sample without foreground gets an empty mask.

    Args:
        backbone: the pretrained backbone (its own prompt encoder and mask decoder, untouched).
        cache: embedding cache of that backbone (shared with the other methods).
        device: where the decoder runs.
    """

    def __init__(self, backbone: Backbone, cache: EmbeddingCache, device: str | torch.device = "cpu") -> None:
        self.backbone, self.cache, self.device = backbone, cache, torch.device(device)

    @torch.inference_mode()
    def masks(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per sample a (1, H, W) uint8 mask from the boxes of ``labels`` (each (1, H, W))."""
        self.backbone.prompt_encoder.to(self.device)
        self.backbone.mask_decoder.to(self.device)
        out = []
        for image, label in zip(images, labels, strict=True):
            h, w = image.shape[-2:]
            boxes = component_boxes(label[0].numpy(), min_fraction=1e-3)
            if len(boxes) == 0:
                out.append(torch.zeros((1, h, w), dtype=torch.uint8))
                continue
            emb = self.cache.embed([image]).to(self.device)
            out.append((box_logits(self.backbone, emb, boxes, (h, w)) > 0)[None].to(torch.uint8).cpu())
        return out


class UNetBaseline:
    """A MONAI ``UNet`` trained from scratch on the shots: the usual supervised baseline.

    Images go through the backbone's geometry (longest side to ``prep.input_size``, zero padding) and min-max
    normalisation; training uses the same DiceCE loss as BLO-SAM and on-the-fly augmentation (flips, small
    affine, intensity), AdamW with a polynomial decay.

    Args:
        prep: input geometry (use the backbone's, so every method sees the same pixels).
        channels: UNet feature channels per level.
        iterations, batch_size, lr, weight_decay: optimisation.
        seed: initialisation and augmentation seed.
        device: where it trains.
    """

    def __init__(
        self,
        prep: Preprocessing,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        iterations: int = 300,
        batch_size: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.prep = Preprocessing(prep.input_size, "minmax")
        self.iterations, self.batch_size, self.lr, self.weight_decay = iterations, batch_size, lr, weight_decay
        self.seed, self.device = seed, torch.device(device)
        torch.manual_seed(seed)
        self.net = UNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=1,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=2,
        ).to(self.device)

    def fit(self, samples: Sequence[dict[str, Any]]) -> list[float]:
        """Train on 2D samples (``image`` (C, H, W) in [0, 1], ``label`` (1, H, W)); returns the loss per iteration."""
        x = torch.stack([preprocess_image(s[SampleKeys.IMAGE], self.prep) for s in samples])
        y = torch.stack([label_target(torch.as_tensor(s[SampleKeys.LABEL]), self.prep.input_size) for s in samples])
        aug = augmentation()
        aug.set_random_state(seed=self.seed)
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=self.iterations, power=0.9)
        loss_fn = DiceCELoss(sigmoid=True)
        bs = min(self.batch_size, len(samples))
        losses = []
        self.net.train()
        for _ in range(self.iterations):
            idx = torch.randint(len(samples), (bs,), generator=g).tolist()
            views = [aug({SampleKeys.IMAGE: x[i].clone(), SampleKeys.LABEL: y[i].clone()}) for i in idx]
            xb = torch.stack([torch.as_tensor(v[SampleKeys.IMAGE]) for v in views]).float().to(self.device)
            yb = (torch.stack([torch.as_tensor(v[SampleKeys.LABEL]) for v in views]) > 0.5).float().to(self.device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(self.net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"U-Net training diverged (loss {losses[-1]}) at iteration {len(losses)}")
        return losses

    @torch.inference_mode()
    def masks(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per image a (1, H, W) uint8 mask at its own size."""
        self.net.eval()
        out = []
        for image in images:
            logits = self.net(preprocess_image(image, self.prep)[None].to(self.device))
            out.append(
                (postprocess_logits(logits, self.prep, (image.shape[-2], image.shape[-1]))[0] > 0).to(torch.uint8).cpu()
            )
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()
