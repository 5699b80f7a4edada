"""Box refinement: the backbone's own decoder, prompted with boxes around the first prediction's components.

LiteMedSAM (and SAM) segment well from a box (the study's ground-truth box oracle reaches 0.97 pool Dice on the
polyps), while a few-shot prompt-free adapter finds the object but draws its outline less well. A second pass gives
the pretrained prompt encoder and decoder, untouched by training, a box around each of the largest components of the
adapter's mask, and keeps their union where it agrees with the first mask (a gate on their Dice): a refined mask that
disagrees, usually because the first mask's largest component was a false positive, leaves the first mask as it was.
The image embedding is the one the first pass used, so the encoder does not run again (for an encoder-tail adapter,
the first pass's head features through the backbone's untrained tail: the embedding a plain adapter refines from).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from blosam_med.model.backbones import Backbone
from blosam_med.model.preprocess import postprocess_logits

__all__ = ["BoxRefiner", "box_logits", "component_boxes"]


def component_boxes(mask: np.ndarray, largest: int = 0, min_fraction: float = 0.0) -> np.ndarray:
    """Bounding boxes ``(N, 4)`` as ``x0, y0, x1, y1`` (pixels, inclusive-exclusive) of the connected components of a
    2D mask, largest first.

    Args:
        mask: 2D mask (non-zero is foreground).
        largest: keep only the ``n`` largest components (``0``: all).
        min_fraction: ignore specks smaller than this fraction of the foreground (the largest is always kept).
    """
    lab, n = ndimage.label(np.asarray(mask) > 0)
    if n == 0:
        return np.zeros((0, 4), dtype=np.float32)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    order = [int(i) for i in np.argsort(-sizes, kind="stable")]
    keep = [i for i in order if sizes[i] >= min_fraction * sizes.sum() or i == order[0]]
    keep = keep[:largest] if largest > 0 else keep
    slices = ndimage.find_objects(lab)
    return np.asarray(
        [[slices[i][1].start, slices[i][0].start, slices[i][1].stop, slices[i][0].stop] for i in keep],
        dtype=np.float32,
    )


def box_logits(backbone: Backbone, embedding: torch.Tensor, boxes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The backbone's pretrained prompt encoder and decoder on box prompts: (1, C, h, w) embedding of one image and
    ``(N, 4)`` boxes in that image's pixels -> (H, W) logits at ``size``, the union (maximum) over the boxes."""
    prep = backbone.preprocessing
    pe, decoder = backbone.prompt_encoder, backbone.mask_decoder
    scale = prep.input_size / max(size)  # the longest side is resized to the input size
    box = torch.as_tensor(boxes * scale, dtype=torch.float32, device=embedding.device)
    sparse, dense = pe(points=None, boxes=box, masks=None)
    logits, _ = decoder(
        image_embeddings=embedding,
        image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )  # (N, 1, 4h, 4w): segment_anything repeats the one embedding per box
    return postprocess_logits(logits.amax(dim=0, keepdim=True).float(), prep, size)[0, 0]


class BoxRefiner:
    """Refine one image's prompt-free logits with box prompts to the backbone's pretrained decoder.

    Args:
        backbone: the adapter's backbone; its prompt encoder and mask decoder are the pretrained ones.
        components: the ``n`` largest connected components of the first mask (logit > 0) each give one box.
        gate: the refined logits replace the first ones only if the Dice of their masks is at least ``gate``.
        frozen: maps what the model decodes to the pretrained encoder's embedding (the model's
            ``frozen_embeddings``: an encoder-tail adapter's head features through the untrained tail); ``None``:
            the embedding as given.

    Example::

        refiner = BoxRefiner(model.backbone, components=1, gate=0.6)
        logits = refiner(embedding, logits)  # (1, C, h, w), (H, W) -> (H, W)
    """

    def __init__(
        self,
        backbone: Backbone,
        components: int = 1,
        gate: float = 0.6,
        frozen: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if components < 1:
            raise ValueError(f"box refinement needs at least one component, got {components}")
        if not 0.0 <= gate <= 1.0:
            raise ValueError(f"the refinement gate is a Dice in [0, 1], got {gate}")
        self.backbone, self.components, self.gate, self.frozen = backbone, components, gate, frozen

    def to(self, device: str | torch.device) -> BoxRefiner:
        self.backbone.prompt_encoder.to(device)
        self.backbone.mask_decoder.to(device)
        return self

    @torch.inference_mode()
    def refine(self, embedding: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(1, C, h, w) embedding and (H, W) first-pass logits -> the box-prompted (H, W) logits and the Dice of
        their mask with the first one (the first logits and 1.0 when the first mask is empty)."""
        first = (logits > 0).cpu().numpy()
        boxes = component_boxes(first, largest=self.components)
        if len(boxes) == 0:
            return logits, 1.0
        size = (int(logits.shape[-2]), int(logits.shape[-1]))
        if self.frozen is not None:
            embedding = self.frozen(embedding)
        refined = box_logits(self.backbone, embedding, boxes, size).to(logits.device)
        second = (refined > 0).cpu().numpy()
        return refined, float(2.0 * np.logical_and(first, second).sum() / (first.sum() + second.sum()))

    def __call__(self, embedding: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) embedding and (H, W) first-pass logits -> (H, W) logits, refined or the first ones."""
        refined, agreement = self.refine(embedding, logits)
        return refined if agreement >= self.gate else logits
