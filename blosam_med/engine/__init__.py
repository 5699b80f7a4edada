"""Bi-level (BLO-SAM) and single-level training engines over cached embeddings."""

from __future__ import annotations

from blosam_med.engine.fewshot import DrawMismatchError, FewShotData, augmentation, label_target
from blosam_med.engine.handlers import (
    RunRecorder,
    attach_checkpoint_pruning,
    attach_resume,
    check_output_dir,
    flatten_params,
    latest_checkpoint,
)
from blosam_med.engine.hypergradient import HYPERGRADIENTS, first_order_hypergradient, second_order_hypergradient
from blosam_med.engine.trainer import BiLevelTrainer, SingleLevelTrainer, TrainableState, bilevel_param_groups

__all__ = [
    "DrawMismatchError",
    "FewShotData",
    "RunRecorder",
    "attach_checkpoint_pruning",
    "attach_resume",
    "augmentation",
    "check_output_dir",
    "flatten_params",
    "label_target",
    "latest_checkpoint",
    "BiLevelTrainer",
    "HYPERGRADIENTS",
    "SingleLevelTrainer",
    "TrainableState",
    "bilevel_param_groups",
    "first_order_hypergradient",
    "second_order_hypergradient",
]
