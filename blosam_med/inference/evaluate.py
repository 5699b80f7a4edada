"""Evaluate an adapter on a datalist split: Dice, HD95 (mm) and NSD at the original resolution."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blosam_med.data import TaskConfig, load_samples, open_datalist, slices_to_volume
from blosam_med.data.keys import CaseKeys, Sample, SampleKeys, SourceKeys
from blosam_med.inference.empty_slices import predict_logits
from blosam_med.inference.predictor import Predictor, binary_masks, default_batch_size, preset_options
from blosam_med.io import write_json
from blosam_med.metrics import NSD_TOLERANCE_MM, evaluate_cases
from blosam_med.model.checkpoint import load_adapter
from blosam_med.model.embedding_cache import EmbeddingCache
from blosam_med.model.ensemble import PromptFreeModel
from blosam_med.model.quantize import encoder_engine
from blosam_med.tracking import log_evaluation

__all__ = ["evaluate_adapter", "score_predictions", "group_volumes"]

logger = logging.getLogger(__name__)


def group_volumes(samples: list[Sample], masks: list[torch.Tensor]) -> list[dict[str, Any]]:
    """One entry per case: 2D samples as they are, slices of a volume put back on its voxel grid.

    Returns:
        dicts (keys: :class:`blosam_med.data.keys.CaseKeys`) with ``case``, ``pred`` and ``label`` (uint8 numpy, (H, W) or (X, Y, Z)) and ``spacing`` (mm per axis).
    """
    cases: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        cases[s[SampleKeys.CASE]].append(i)
    out = []
    for case, idx in cases.items():
        first = samples[idx[0]]
        if first.get(SampleKeys.SOURCE) is None:
            for i in idx:  # 2D images (or frames without geometry): one case each
                s = samples[i]
                name = case if len(idx) == 1 else f"{case}#{s.get(SampleKeys.SLICE)}"
                out.append(_scored(name, masks[i], s))
            continue
        source = first[SampleKeys.SOURCE]
        slices = [samples[i][SampleKeys.SLICE] for i in idx]
        pred = slices_to_volume([masks[i][:1] for i in idx], slices, source)[0].numpy()
        label = slices_to_volume([samples[i][SampleKeys.LABEL] for i in idx], slices, source)[0].numpy()
        affine = np.asarray(source[SourceKeys.AFFINE], dtype=float)
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        depth = int(source[SourceKeys.SHAPE][int(source[SourceKeys.AXIS])])
        if len(idx) != depth:
            logger.warning("%s: %d of %d slices evaluated; the others count as empty", case, len(idx), depth)
        out.append({CaseKeys.CASE: case, CaseKeys.PRED: pred, CaseKeys.LABEL: label, CaseKeys.SPACING: spacing})
    return out


def _scored(name: str, mask: torch.Tensor, sample: Sample) -> dict[str, Any]:
    """One 2D sample as a scored case: its (1, H, W) mask against its label at its pixel spacing."""
    return {
        CaseKeys.CASE: name,
        CaseKeys.PRED: mask[0].numpy(),
        CaseKeys.LABEL: sample[SampleKeys.LABEL][0].numpy(),
        CaseKeys.SPACING: tuple(float(v) for v in sample[SampleKeys.SPACING]),
    }


def _per_sample(samples: list[Sample], masks: list[torch.Tensor]) -> list[dict[str, Any]]:
    return [
        _scored(f"{Path(s[SampleKeys.IMAGE_PATH]).name}#{s.get(SampleKeys.SLICE)}", m, s)
        for s, m in zip(samples, masks, strict=True)
    ]


def score_predictions(
    samples: list[Sample],
    masks: list[torch.Tensor],
    *,
    per_sample: bool = False,
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> dict[str, Any]:
    """Dice, HD95 (mm) and NSD of predicted masks against the samples' labels: the one scoring path of
    ``blosam evaluate``, the bundle's evaluate.yaml and the study.

    Args:
        samples: 2D samples with ``label`` (1, H, W) and ``spacing`` (see :func:`blosam_med.data.load_samples`).
        masks: one (1, H, W) 0/1 mask per sample.
        per_sample: one case per 2D sample; otherwise per image, and per volume for slices of volumes.
        nsd_tolerance_mm: NSD tolerance in mm.

    Returns:
        ``{"cases": [...], "mean": {...}, ...}`` as :func:`blosam_med.metrics.evaluate_cases` returns it.
    """
    cases = _per_sample(samples, masks) if per_sample else group_volumes(samples, masks)
    return evaluate_cases(
        [c[CaseKeys.PRED] for c in cases],
        [c[CaseKeys.LABEL] for c in cases],
        [c[CaseKeys.SPACING] for c in cases],
        [c[CaseKeys.CASE] for c in cases],
        nsd_tolerance_mm=nsd_tolerance_mm,
    )


def evaluate_adapter(
    adapter: str | Path,
    data: str | Path | dict,
    split: str = "test",
    *,
    task: TaskConfig | None = None,
    base_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
    out: str | Path | None = None,
    overwrite: bool = False,
    model: PromptFreeModel | None = None,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    run_name: str | None = None,
    engine: str = "torch",
    int8_encoder: str | Path | None = None,
) -> dict[str, Any]:
    """Predict every case of ``split`` and score it against its label, per image (2D) or per volume (3D).

    Args:
        adapter: adapter file (its stored task preset is used unless ``task`` is given).
        data: a datalist JSON, a task folder, or a datalist dict with absolute paths.
        split: datalist section to evaluate (``test`` by default).
        cache_dir: embedding cache folder (reused across adapters of the same backbone).
        out: write the result JSON here (atomically; an existing file needs ``overwrite``).
        model: an already loaded model to use instead of reading ``adapter`` again.
        tracking_uri: log the mean metrics (``<split>_dice``, ``<split>_hd95_mm``, ``<split>_nsd``) and the result
            JSON into the MLflow run that trained the adapter, at this tracking URI; nothing is logged when the
            run is not found there.
        experiment_name: that run's experiment (default: the one the adapter stores).
        run_name: that run's name (default: the one the adapter stores).
        engine: what runs the frozen encoder (``torch``, ``auto``, ``openvino``, ``onnxruntime``; see
            :mod:`blosam_med.model.encoder_engines`).
        int8_encoder: a ``blosam quantize`` folder that runs the encoder in int8 instead of ``engine``.

    Returns:
        ``{"adapter", "split", "cases": [...], "mean": {...}}`` with Dice, HD95 (mm) and NSD per case.
    """
    if model is None:
        model, extra = load_adapter(adapter)
    else:
        extra = {}
    if task is None:
        if "task" not in extra:
            raise ValueError(f"{adapter}: the adapter stores no task preset; pass task=...")
        task = TaskConfig.from_dict(extra["task"])
    datalist = data if isinstance(data, dict) else open_datalist(data)
    if split not in datalist or not datalist[split]:
        raise ValueError(f"{data}: the datalist has no '{split}' cases")
    batch_size = batch_size or default_batch_size(device)
    samples = load_samples(datalist[split], task, base_dir=base_dir, foreground_only=False, every_n=1)
    encoder = encoder_engine(engine, int8_encoder, model.backbone, device)
    cache = EmbeddingCache(model.backbone, cache_dir, device=device, progress=True, engine=encoder)
    options = preset_options([task])
    predictor = Predictor([model], cache, device=device, batch_size=batch_size, **options)
    masks = [binary_masks(lg, options["postprocess"]) for lg in predict_logits(predictor, samples, task)]
    result = {
        "adapter": str(adapter),
        "split": split,
        "task": task.name,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        **score_predictions(samples, masks, nsd_tolerance_mm=nsd_tolerance_mm),
    }
    if out is not None:
        write_json(out, result, overwrite=overwrite)
    if tracking_uri is not None:
        params = extra.get("params", {})
        experiment_name = experiment_name or params.get("experiment_name") or f"blosam_{task.name}"
        run_name = run_name or params.get("run_name")
        if run_name is None:
            logger.info("%s: the adapter stores no MLflow run name; evaluation not tracked", adapter)
        else:
            log_evaluation(result, tracking_uri, experiment_name, run_name, prefix=split)
    return result
