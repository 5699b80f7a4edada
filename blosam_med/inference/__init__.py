"""Prediction with trained adapters, writers for clinical tools, and evaluation against labels."""

from __future__ import annotations

from blosam_med.inference.evaluate import evaluate_adapter, group_volumes
from blosam_med.inference.infer import FORMATS, CasePrediction, load_adapters, predict_case, run_inference, write_case
from blosam_med.inference.inputs import collect_inputs, find_inputs
from blosam_med.inference.postprocess import mask_postprocess
from blosam_med.inference.predictor import Predictor, preset_options
from blosam_med.inference.writers import (
    AtomicNiftiWriter,
    to_source_grid,
    write_dicom_seg,
    write_montage,
    write_nifti,
    write_overlay,
    write_png_mask,
)

__all__ = [
    "FORMATS",
    "CasePrediction",
    "Predictor",
    "preset_options",
    "mask_postprocess",
    "collect_inputs",
    "find_inputs",
    "evaluate_adapter",
    "group_volumes",
    "load_adapters",
    "predict_case",
    "run_inference",
    "AtomicNiftiWriter",
    "to_source_grid",
    "write_case",
    "write_dicom_seg",
    "write_montage",
    "write_nifti",
    "write_overlay",
    "write_png_mask",
]
