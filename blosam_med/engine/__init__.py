"""The bi-level (BLO-SAM) training engine over cached embeddings, its variants and its run handlers."""

from __future__ import annotations

from blosam_med.engine.events import BiLevelEvents
from blosam_med.engine.fewshot import DrawMismatchError, FewShotData, augmentation, label_target, training_seed
from blosam_med.engine.handlers import (
    KeepBestState,
    RunRecorder,
    attach_checkpoint_pruning,
    attach_resume,
    check_output_dir,
    latest_checkpoint,
)
from blosam_med.engine.hypergradient import HYPERGRADIENTS, first_order_hypergradient, second_order_hypergradient
from blosam_med.engine.trainer import BiLevelTrainer, TrainableState, bilevel_param_groups

__all__ = [
    "BiLevelEvents",
    "DrawMismatchError",
    "FewShotData",
    "KeepBestState",
    "RunRecorder",
    "attach_checkpoint_pruning",
    "attach_resume",
    "augmentation",
    "check_output_dir",
    "label_target",
    "latest_checkpoint",
    "BiLevelTrainer",
    "HYPERGRADIENTS",
    "TrainableState",
    "bilevel_param_groups",
    "first_order_hypergradient",
    "second_order_hypergradient",
    "training_seed",
]
