"""Prediction with trained adapters and evaluation against labels."""

from __future__ import annotations

from blosam_med.inference.evaluate import evaluate_adapter, group_volumes
from blosam_med.inference.predictor import Predictor

__all__ = ["Predictor", "evaluate_adapter", "group_volumes"]
