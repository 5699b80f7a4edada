"""Slices a task preset calls empty (``empty_below``: air only) get an empty prediction without running the model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from blosam_med.data import TaskConfig
from blosam_med.inference.predictor import Predictor

__all__ = ["EMPTY_LOGIT", "empty_slices", "predict_logits"]

logger = logging.getLogger(__name__)

#: Logit given to every pixel of a skipped slice: mask 0, sigmoid probability exactly 0 in float32.
EMPTY_LOGIT = -1e4


def empty_slices(samples: Sequence[dict[str, Any]], task: TaskConfig) -> list[bool]:
    """Per sample, whether it is a volume slice that ``task.empty_below`` calls empty (all ``False`` when unset).

    Args:
        samples: 2D samples of :func:`blosam_med.data.load_samples`: ``image`` (C, H, W) windowed to [0, 1];
            volume slices carry ``source``.
        task: the preset the samples were windowed with.
    """
    level = task.empty_level
    if level is None:
        return [False] * len(samples)
    return [s.get("source") is not None and float(s["image"].max()) < level for s in samples]


def predict_logits(
    predictor: Predictor,
    samples: Sequence[dict[str, Any]],
    task: TaskConfig,
    progress: bool = False,
    desc: str = "predicting",
) -> list[torch.Tensor]:
    """:meth:`Predictor.logits` of the samples' images, with :data:`EMPTY_LOGIT` for the empty slices.

    Returns:
        per sample a (n_models, H, W) float32 tensor of logits; the encoder and decoders run only on the others.
    """
    empty = empty_slices(samples, task)
    computed = iter(
        predictor.logits([s["image"] for s, e in zip(samples, empty, strict=True) if not e], progress, desc)
    )
    if any(empty):
        logger.info(
            "%s: %d of %d slices have every voxel below %g (task '%s' empty_below): predicted empty without the model",
            desc,
            sum(empty),
            len(samples),
            task.empty_below,
            task.name,
        )
    n = len(predictor.models)
    return [
        torch.full((n, *s["image"].shape[-2:]), EMPTY_LOGIT) if e else next(computed)
        for s, e in zip(samples, empty, strict=True)
    ]
