"""Prompt-free inference over images, DICOM files and series, NIfTI volumes, folders and datalists."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blosam_med.data import (
    TaskConfig,
    image_kind,
    load_samples,
    slices_to_volume,
)
from blosam_med.data.keys import SampleKeys, SourceKeys
from blosam_med.inference.empty_slices import predict_logits
from blosam_med.inference.inputs import find_inputs
from blosam_med.inference.predictor import Predictor, binary_masks, default_batch_size, preset_options
from blosam_med.inference.writers import (
    to_source_grid,
    write_dicom_seg,
    write_montage,
    write_nifti,
    write_overlay,
    write_png_mask,
)
from blosam_med.io import check_writable
from blosam_med.model.backbones import Backbone, build_backbone
from blosam_med.model.checkpoint import load_adapter, read_adapter
from blosam_med.model.ensemble import PromptFreeModel
from blosam_med.model.quantize import encoder_engine

__all__ = [
    "CasePrediction",
    "load_adapters",
    "predict_case",
    "write_case",
    "output_paths",
    "run_inference",
    "FORMATS",
    "AMP_DTYPES",
]

logger = logging.getLogger(__name__)

FORMATS = ("nifti", "png", "dicom-seg")

#: ``amp`` choices of :func:`run_inference`: autocast dtypes on a GPU.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CasePrediction:
    """One input's prediction: per 2D slice the windowed image and each adapter's logits."""

    case: str
    image_path: str
    kind: str  # "2d" or "volume"
    images: list[torch.Tensor]
    logits: list[torch.Tensor]  # per slice: (n_adapters, H, W)
    slices: list[int | None]
    source: dict[str, Any] | None = None
    spacing: tuple[float, ...] = (1.0, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)
    postprocess: list[Any] | None = None  # per adapter, see Predictor

    def masks(self, index: int) -> torch.Tensor:
        """(n_adapters, H, W) uint8 masks of slice ``index``, post-processed as each adapter's task says."""
        return binary_masks(self.logits[index], self.postprocess or [None] * len(self.logits[index]))

    def label_map(self) -> np.ndarray:
        """uint8 label map: 0 background, i+1 where adapter i predicts foreground (later adapters win overlaps);
        (H, W) for 2D, (X, Y, Z) on the RAS grid for volumes."""
        maps = [_label_map(self.masks(i)) for i in range(len(self.logits))]
        if self.kind == "2d":
            return maps[0]
        return slices_to_volume([m[None] for m in maps], *self.geometry())[0].numpy()

    def probabilities(self) -> np.ndarray:
        """float32 sigmoid probabilities, (n, H, W) for 2D or (n, X, Y, Z) for volumes."""
        probs = [torch.sigmoid(lg) for lg in self.logits]
        if self.kind == "2d":
            return probs[0].numpy()
        return slices_to_volume(probs, *self.geometry()).numpy()

    def geometry(self) -> tuple[list[int], dict[str, Any]]:
        """A volume's slice indices and ``source`` (shape, axis, affines); ValueError for a 2D prediction."""
        if self.source is None or any(i is None for i in self.slices):
            raise ValueError(f"{self.image_path}: a 2D prediction has no volume geometry")
        return [int(i) for i in self.slices if i is not None], self.source


def _label_map(masks: torch.Tensor) -> np.ndarray:
    out = np.zeros(masks.shape[-2:], np.uint8)
    for i, m in enumerate(masks):
        out[m.numpy() > 0] = i + 1
    return out


def load_adapters(
    paths: Sequence[str | Path], checkpoint: str | Path | None = None
) -> tuple[list[PromptFreeModel], TaskConfig, list[TaskConfig]]:
    """Load adapters that share one backbone (built once) and one input preparation (window, channels).

    Returns the models, the (first adapter's) task preset that prepares the inputs, and every adapter's own task
    preset (its mask post-processing and test-time flips: :func:`blosam_med.inference.preset_options`).

    Raises:
        ValueError: adapters of different backbones or different windowing, naming the files.
    """
    if not paths:
        raise ValueError("pass at least one --adapter")
    payloads = [read_adapter(p) for p in paths]
    names = {p["backbone"] for p in payloads}
    if len(names) > 1:
        listed = ", ".join(f"{path} ({p['backbone']})" for path, p in zip(paths, payloads, strict=True))
        raise ValueError(f"adapters of different backbones cannot share an encoder pass: {listed}")
    missing = [str(path) for path, p in zip(paths, payloads, strict=True) if "task" not in p.get("extra", {})]
    if missing:
        raise ValueError(f"{', '.join(missing)}: adapter stores no task preset")
    tasks = [TaskConfig.from_dict(p["extra"]["task"]) for p in payloads]
    prep = {(t.window, t.width, t.level, t.channels) for t in tasks}
    if len(prep) > 1:
        raise ValueError(f"adapters window their inputs differently ({sorted(map(str, prep))}); run them separately")
    backbone: Backbone = build_backbone(names.pop(), checkpoint)
    models = [load_adapter(p, backbone)[0] for p in paths]
    return models, tasks[0], tasks


def predict_case(
    entry: dict, task: TaskConfig, predictor: Predictor, axis: str | None = None, progress: bool = True
) -> CasePrediction:
    """Predict every slice (or the image) of one input; slices ``task.empty_below`` calls empty skip the model."""
    samples = load_samples([entry], task, foreground_only=False, every_n=1, axis=axis)
    if not samples:
        raise ValueError(f"{entry['image']}: nothing to predict")
    images = [s[SampleKeys.IMAGE] for s in samples]
    logits = predict_logits(predictor, samples, task, progress=progress, desc=samples[0][SampleKeys.CASE])
    first = samples[0]
    kind = "volume" if first.get(SampleKeys.SOURCE) is not None else "2d"
    if kind == "2d" and len(samples) > 1:
        raise ValueError(f"{entry['image']}: {len(samples)} frames in a 2D task; use a volume task or split the frames")
    return CasePrediction(
        case=entry.get("case") or first[SampleKeys.CASE],
        image_path=str(entry["image"]),
        kind=kind,
        images=images,
        logits=logits,
        slices=[s[SampleKeys.SLICE] for s in samples],
        source=first.get(SampleKeys.SOURCE),
        spacing=tuple(first[SampleKeys.SPACING]),
        postprocess=predictor.postprocess,
    )


def output_paths(
    case: str, kind: str, out_dir: str | Path, formats: Sequence[str], probabilities: bool = False
) -> dict[str, Path]:
    """The files :func:`write_case` writes for a case of ``kind`` (``"2d"`` or ``"volume"``), by output name."""
    out_dir = Path(out_dir)
    names: dict[str, Path] = {}
    if "nifti" in formats:
        names["nifti"] = out_dir / f"{case}.nii.gz"
    if "png" in formats:
        if kind == "2d":
            names["png"] = out_dir / f"{case}_mask.png"
        names["overlay"] = out_dir / (f"{case}_overlay.png" if kind == "2d" else f"{case}_montage.png")
    if "dicom-seg" in formats:
        names["dicom-seg"] = out_dir / f"{case}_seg.dcm"
    if probabilities:
        names["probabilities"] = out_dir / f"{case}_prob.nii.gz"
    return names


def write_case(
    pred: CasePrediction,
    out_dir: str | Path,
    formats: Sequence[str],
    labels: Sequence[str],
    probabilities: bool = False,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write one case's outputs; every file is checked before any is written (no silent overwrite)."""
    out_dir = Path(out_dir)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; choose from {', '.join(FORMATS)}")
    names = output_paths(pred.case, pred.kind, out_dir, formats, probabilities)
    if "dicom-seg" in names and image_kind(pred.image_path) not in ("series", "dicom"):
        raise ValueError(f"{pred.image_path}: DICOM-SEG needs DICOM input (a series folder or DICOM file)")
    for path in names.values():
        check_writable(path, overwrite)
    labels_map = pred.label_map()
    written: dict[str, str] = {}
    if pred.kind == "2d":
        affine = np.diag([pred.spacing[0], pred.spacing[1], 1.0, 1.0])
        if "nifti" in names:
            write_nifti(labels_map[..., None], affine, names["nifti"], overwrite)
        if "png" in names:
            write_png_mask(labels_map, names["png"], overwrite)
        if "overlay" in names:
            write_overlay(pred.images[0].numpy(), _split(labels_map, len(labels)), names["overlay"], overwrite)
        if "probabilities" in names:
            write_nifti(pred.probabilities().transpose(1, 2, 0)[:, :, None], affine, names["probabilities"], overwrite)
        if "dicom-seg" in names:
            write_dicom_seg(_split(labels_map, len(labels)), pred.image_path, names["dicom-seg"], labels, overwrite)
    else:
        indices, src = pred.geometry()
        volume, affine = to_source_grid(labels_map, src[SourceKeys.AFFINE], src[SourceKeys.ORIGINAL_AFFINE])
        if "nifti" in names:
            write_nifti(volume, affine, names["nifti"], overwrite)
        if "overlay" in names:
            order = np.argsort(indices)
            maps = [_label_map(pred.masks(i)) for i in order]
            write_montage(
                [pred.images[i].numpy() for i in order],
                [_split(m, len(labels)) for m in maps],
                names["overlay"],
                overwrite=overwrite,
            )
        if "probabilities" in names:
            probs = pred.probabilities().transpose(1, 2, 3, 0)  # (X, Y, Z, n)
            prob_src, _ = to_source_grid(probs, src[SourceKeys.AFFINE], src[SourceKeys.ORIGINAL_AFFINE])
            write_nifti(prob_src.astype(np.float32), affine, names["probabilities"], overwrite)
        if "dicom-seg" in names:
            write_dicom_seg(_split(volume, len(labels)), pred.image_path, names["dicom-seg"], labels, overwrite)
    written.update({k: str(v) for k, v in names.items()})
    return written


def _split(label_map: np.ndarray, n: int) -> np.ndarray:
    """(n, ...) binary masks from a label map with values 1..n."""
    return np.stack([label_map == i + 1 for i in range(n)]).astype(np.uint8)


def summary_line(pred: CasePrediction, written: dict[str, str]) -> str:
    return json.dumps({"case": pred.case, "kind": pred.kind, "slices": len(pred.slices), "outputs": written})


def run_inference(
    adapters: Sequence[str | Path],
    input: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] | None = None,
    *,
    axis: str | None = None,
    batch_size: int | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    split: str | None = None,
    labels: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    amp: str | None = None,
    engine: str = "auto",
    int8_encoder: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Predict every input with the adapters (one encoder pass per slice for all of them) and write the outputs.

    ``formats`` defaults to ``png`` (mask + overlay) for 2D inputs and ``nifti`` + ``png`` (montage) for volumes.
    ``batch_size`` defaults to 8 on a GPU and 1 on the CPU, where larger batches were slower (see the README).
    ``amp`` (``"bf16"`` or ``"fp16"``, GPU only) runs encoder and decoders under ``torch.autocast``.
    ``engine`` runs the frozen encoder (:mod:`blosam_med.model.encoder_engines`): ``auto`` is the fastest installed
    CPU runtime (exported once, float32), else eager PyTorch. ``int8_encoder``: a folder of ``blosam quantize``
    (:mod:`blosam_med.model.quantize`) runs the encoder instead, in int8 (opt-in; its masks differ from float32's).

    Inputs are cases of a cohort (:mod:`blosam_med.inference.cohort`): when a ``torch.distributed`` process group is
    initialised (``torchrun ... blosam infer --distributed``) each process predicts its share of the cases; each case
    gets a status file, finished cases of an earlier run are skipped, a failing case is recorded and the others go
    on, and ``<out_dir>/manifest.json`` lists every case. Returns one record per case (all processes' cases): case,
    image, status (done/skipped/failed), rank, kind, number of slices, written files, error, seconds.

    Raises:
        ValueError: ``amp`` on the CPU or unknown, adapters that do not fit together, two inputs of one case name.
    """
    from blosam_med.inference.cohort import run_cohort, run_signature
    from blosam_med.model.embedding_cache import EmbeddingCache

    device = torch.device(device)
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp '{amp}': choose one of {sorted(AMP_DTYPES)}")
    if amp is not None and device.type != "cuda":
        raise ValueError(f"amp '{amp}' needs a CUDA device (device is {device}); on the CPU inference runs in float32")
    amp_dtype = AMP_DTYPES[amp] if amp else None
    batch_size = batch_size or default_batch_size(device)
    models, task, presets = load_adapters(adapters, checkpoint)
    names = list(labels) if labels else [Path(a).stem if len(adapters) > 1 else task.label_name for a in adapters]
    if len(names) != len(models):
        raise ValueError(f"{len(names)} label names for {len(models)} adapters")
    entries, ignored = find_inputs(input, split)
    encoder = encoder_engine(engine, int8_encoder, models[0].backbone, device, amp_dtype)
    cache = EmbeddingCache(
        models[0].backbone, cache_dir, device, batch_size, progress=False, amp_dtype=amp_dtype, engine=encoder
    )
    predictor = Predictor(
        models, cache, device=device, batch_size=batch_size, amp_dtype=amp_dtype, **preset_options(presets)
    )

    def run_case(entry: dict, claim: Callable[[dict[str, Path]], None]) -> dict[str, Any]:
        pred = predict_case(entry, task, predictor, axis, progress=False)
        chosen = formats or (("png",) if pred.kind == "2d" else ("nifti", "png"))
        claim(output_paths(pred.case, pred.kind, out_dir, chosen, probabilities))
        written = write_case(pred, out_dir, chosen, names, probabilities, overwrite=True)  # claim checked them
        logger.info("%s", summary_line(pred, written))
        return {"kind": pred.kind, "slices": len(pred.slices), "outputs": written}

    signature = run_signature(
        adapters,
        formats=formats,
        axis=axis,
        probabilities=probabilities,
        labels=names,
        amp=amp,
        checkpoint=str(checkpoint) if checkpoint else None,
        **({"encoder": encoder.id} if not isinstance(encoder, str) else {}),
    )
    description = {
        "input": str(input),
        "adapters": [str(a) for a in adapters],
        "formats": formats,
        "axis": axis,
        "labels": names,
        "device": str(device),
        "amp": amp,
        "ignored": ignored,
    }
    return run_cohort(entries, run_case, out_dir, signature, overwrite=overwrite, description=description)
