"""Prompt-free prediction with one or more adapters that share one backbone's encoder pass."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import TypedDict

import torch
from tqdm.auto import tqdm

from blosam_med.data.tasks import FLIPS, TaskConfig
from blosam_med.inference.postprocess import mask_postprocess
from blosam_med.inference.refine import BoxRefiner
from blosam_med.model.embedding_cache import EmbeddingCache, autocast
from blosam_med.model.ensemble import PromptFreeModel, mean_probability_logit

__all__ = ["ENCODE_AHEAD", "ENCODE_AHEAD_ENV", "Predictor", "binary_masks", "default_batch_size", "preset_options"]


#: Images a thread encodes ahead of the decoders by default, on the CPU with a runtime engine (``blosam infer``):
#: its throughput mode encodes them side by side while the decoders work on the images before them.
ENCODE_AHEAD = 8
#: Environment variable that sets that default (0: off).
ENCODE_AHEAD_ENV = "BLOSAM_ENCODE_AHEAD"


def default_batch_size(device: str | torch.device) -> int:
    """Slices per call: 8 on a GPU; 1 on the CPU, where larger batches measured slower (scripts/benchmark_inference.py)."""
    return 8 if torch.device(device).type == "cuda" else 1


class Predictor:
    """Masks at the original image size for images in [0, 1].

    Args:
        models: trained models (or cross-fitted ensembles) of one backbone, e.g. two structures on one CT; the
            encoder runs once per image.
        cache: embedding cache to read and fill; ``None`` encodes in memory without keeping anything.
        device: where the decoders run.
        batch_size: images per decoder call.
        amp_dtype: run the decoders under ``torch.autocast`` with this dtype (GPU); logits come back as float32.
        postprocess: per model, a transform of its binary (1, H, W) masks (see
            :func:`blosam_med.inference.mask_postprocess`) or ``None``; applied by :meth:`masks`.
        flips: per model, test-time flips (names of :data:`blosam_med.data.FLIPS`): each flipped image is encoded
            once for every model that asks for it, its logits are flipped back, and a model's logits become the
            logit of its mean probability over the original and its flips. ``None``: no flips.
        refine: per model, ``(components, gate)`` of box refinement (:class:`blosam_med.inference.refine.BoxRefiner`,
            on the unflipped image's embedding, after the flips are averaged) or ``(0, gate)`` for none. ``None``:
            no refinement.
        thresholds: per model, the probability above which a pixel is foreground: its logits (after the flips,
            before refinement) are shifted by ``logit(threshold)``, so everything downstream decides at logit 0.
            ``None``: 0.5 for every model.
        encode_ahead: images a background thread encodes ahead of the decoders (rounded up to whole batches); 0: none,
            each batch is encoded, then decoded. ``None``: :data:`ENCODE_AHEAD` (or the variable :data:`ENCODE_AHEAD_ENV`) on the CPU with a
            runtime engine, else 0. The logits are the same either way.

    :func:`preset_options` gives ``postprocess``, ``flips``, ``refine`` and ``thresholds`` from each model's task
    preset.
    """

    def __init__(
        self,
        models: Sequence[PromptFreeModel],
        cache: EmbeddingCache | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        amp_dtype: torch.dtype | None = None,
        postprocess: Sequence[Callable | None] | None = None,
        flips: Sequence[Sequence[str]] | None = None,
        refine: Sequence[tuple[int, float]] | None = None,
        thresholds: Sequence[float] | None = None,
        encode_ahead: int | None = None,
    ) -> None:
        if not models:
            raise ValueError("at least one adapter is needed")
        names = {(m.backbone_name, m.embedding_shape) for m in models}
        if len(names) != 1:
            raise ValueError(f"adapters of different backbones cannot share an encoder pass: {sorted(names)}")
        self.models = [m.to(device).eval() for m in models]
        self.postprocess = list(postprocess) if postprocess is not None else [None] * len(models)
        if len(self.postprocess) != len(self.models):
            raise ValueError(f"{len(self.postprocess)} post-processing entries for {len(self.models)} models")
        self.flips = [tuple(f) for f in flips] if flips is not None else [()] * len(models)
        if len(self.flips) != len(self.models) or any(f not in FLIPS for fl in self.flips for f in fl):
            raise ValueError(f"flips must list, per model ({len(self.models)}), names among {list(FLIPS)}: {flips}")
        self.device = torch.device(device)
        if refine is not None and len(refine) != len(self.models):
            raise ValueError(f"{len(refine)} refinement entries for {len(self.models)} models")
        self.refiners = [
            BoxRefiner(m.backbone, n, gate, m.frozen_embeddings).to(self.device) if n else None
            for m, (n, gate) in zip(self.models, refine or [(0, 0.0)] * len(self.models), strict=True)
        ]
        chosen = list(thresholds) if thresholds is not None else [0.5] * len(self.models)
        if len(chosen) != len(self.models) or not all(0.0 < t < 1.0 for t in chosen):
            raise ValueError(
                f"thresholds must give, per model ({len(self.models)}), a probability in (0, 1): {thresholds}"
            )
        self.shifts = [math.log(t / (1.0 - t)) for t in chosen]  # logit(threshold), subtracted from the logits
        self.batch_size = batch_size
        self.amp_dtype = amp_dtype
        if encode_ahead is not None and (isinstance(encode_ahead, bool) or encode_ahead < 0):
            raise ValueError(f"encode_ahead {encode_ahead!r}: give a number of images, 0 (none) or more")
        self.encode_ahead = encode_ahead
        self.cache = (
            cache if cache is not None else EmbeddingCache(models[0].backbone, None, device, batch_size, progress=False)
        )

    def _window(self) -> int:
        """Images encoded per call of the encoder-ahead thread: ``encode_ahead`` rounded up to whole decoder
        batches; the decoder batch when encoding ahead is off."""
        ahead = self.encode_ahead
        if ahead is None:  # default: ahead on the CPU with a runtime engine (it runs a window's images side by side)
            on_cpu_runtime = self.device.type == "cpu" and self.cache.engine_name != "torch"
            ahead = int(os.environ.get(ENCODE_AHEAD_ENV, ENCODE_AHEAD)) if on_cpu_runtime else 0
        return -(-ahead // self.batch_size) * self.batch_size if ahead > 0 else self.batch_size

    def _embed_window(self, images: Sequence[torch.Tensor], passes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Per pass (no flip, then each flip), the embeddings of ``images`` flipped so."""
        with torch.inference_mode():
            return [self.cache.embed([im.flip(dims) for im in images] if dims else list(images)) for dims in passes]

    @torch.inference_mode()
    def logits(
        self, images: Sequence[torch.Tensor], progress: bool = False, desc: str = "predicting"
    ) -> list[torch.Tensor]:
        """Per image a (n_models, H, W) float tensor of logits at the image's own size.

        The encoder runs once per image and once more per test-time flip any model asks for, under
        ``torch.inference_mode``; every model decodes the batches it needs, then box refinement (if any) decodes
        once more from the unflipped embedding. With encoding ahead (``encode_ahead``), a thread encodes the next
        window of images while the decoders work on this one: the embeddings, the decoder batches and so the
        logits are those without it (``tests/inference/test_predictor.py``).
        """
        passes = [()] + sorted({FLIPS[f] for fl in self.flips for f in fl})
        window = self._window()
        starts = list(range(0, len(images), window))
        out: list[torch.Tensor] = []
        bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False)
        with (
            ThreadPoolExecutor(1, thread_name_prefix="encode-ahead")
            if window > self.batch_size
            else nullcontext() as pool
        ):

            def encode(start: int) -> Future | list[torch.Tensor]:
                chunk = images[start : start + window]
                return (
                    pool.submit(self._embed_window, chunk, passes)
                    if pool is not None
                    else self._embed_window(chunk, passes)
                )

            pending = encode(starts[0]) if starts else None
            for n, first in enumerate(starts):
                embeddings = pending.result() if isinstance(pending, Future) else pending
                assert embeddings is not None
                if n + 1 < len(starts):
                    pending = encode(starts[n + 1])
                for start in range(first, min(first + window, len(images)), self.batch_size):
                    offset = slice(start - first, start - first + self.batch_size)
                    chunk = list(images[start : start + self.batch_size])
                    out.extend(self._decode(chunk, [e[offset] for e in embeddings], passes))
                    bar.update(len(chunk))
        bar.close()
        return out

    def _decode(
        self, chunk: list[torch.Tensor], embeddings: list[torch.Tensor], passes: list[tuple[int, ...]]
    ) -> list[torch.Tensor]:
        """A decoder batch: per image its (n_models, H, W) logits from its embeddings of each pass."""
        sizes = [(im.shape[-2], im.shape[-1]) for im in chunk]
        # per model, per image: its logits at the image's size, one tensor per pass it takes (flipped back)
        found: list[list[list[torch.Tensor]]] = [[[] for _ in chunk] for _ in self.models]
        plain = embeddings[0].to(self.device)  # passes[0]: the images as given, for box refinement
        for dims, emb in zip(passes, embeddings, strict=True):
            users = [i for i, fl in enumerate(self.flips) if not dims or dims in (FLIPS[f] for f in fl)]
            emb = emb.to(self.device)
            with autocast(self.device, self.amp_dtype):
                per_model = {i: self.models[i].forward_embeddings(emb).float() for i in users}  # (b, 1, h, w)
            for i, p in per_model.items():
                for j, size in enumerate(sizes):
                    lg = self.models[i].postprocess(p[j : j + 1], size)[0, 0]
                    found[i][j].append(lg.flip(dims) if dims else lg)
        out = []
        for j in range(len(chunk)):
            per_image = [mean_probability_logit(found[i][j]) - self.shifts[i] for i in range(len(self.models))]
            with autocast(self.device, self.amp_dtype):
                per_image = [
                    r(plain[j : j + 1], lg).float() if r is not None else lg
                    for r, lg in zip(self.refiners, per_image, strict=True)
                ]
            out.append(torch.stack(per_image).cpu())
        return out

    def masks(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per image a (n_models, H, W) uint8 mask (logit > 0, then each model's post-processing)."""
        return [binary_masks(lg, self.postprocess) for lg in self.logits(images)]


class PresetOptions(TypedDict):
    postprocess: list[Callable | None]
    flips: list[tuple[str, ...]]
    refine: list[tuple[int, float]]
    thresholds: list[float]


def preset_options(presets: Sequence[TaskConfig]) -> PresetOptions:
    """:class:`Predictor` keywords from each model's task preset: mask post-processing, test-time flips, box
    refinement and the decision threshold."""
    return {
        "postprocess": [mask_postprocess(t.keep_components, t.fill_holes) for t in presets],
        "flips": [t.flips for t in presets],
        "refine": [(t.refine_boxes, t.refine_gate) for t in presets],
        "thresholds": [float(t.threshold) for t in presets],
    }


def binary_masks(logits: torch.Tensor, postprocess: Sequence[Callable | None]) -> torch.Tensor:
    """(n_models, H, W) logits -> uint8 masks: logit > 0, then model ``i``'s post-processing (if any)."""
    out = []
    for lg, post in zip(logits, postprocess, strict=True):
        m = (lg > 0).to(torch.uint8)[None]
        out.append(torch.as_tensor(post(m)).to(torch.uint8)[0] if post is not None and m.any() else m[0])
    return torch.stack(out)
