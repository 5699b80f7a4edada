"""Prompt-free segmentation of one image or volume with a task's current adapter (``blosam infer``'s path)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from blosam_med.data import SourceKeys, image_kind
from blosam_med.inference import CasePrediction, predict_case, to_source_grid, write_nifti, write_png_mask
from lib.errors import BadInput
from lib.models import ModelStore, model_name

__all__ = ["BlosamInfer", "write_label"]

logger = logging.getLogger(__name__)


def _temp_file(suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="blosam_label_", suffix=suffix)
    os.close(fd)
    return Path(name)


def write_label(pred: CasePrediction, image_path: str | Path) -> Path:
    """The prediction as a label file on the input's own grid, in a new temporary file (MONAI Label deletes it once
    sent): a PNG (0/255) for a 2D raster or DICOM image, a NIfTI in the input's voxel order and affine for a NIfTI
    image or volume (a DICOM series: the NIfTI on the series' grid, as ``blosam infer`` writes it)."""
    labels = pred.label_map()
    if pred.kind == "2d" and image_kind(image_path) != "nifti":
        return write_png_mask(labels, _temp_file(".png"), overwrite=True)
    out = _temp_file(".nii.gz")
    if pred.kind == "2d":  # a one-slice NIfTI was read as (rows, cols) = its (Y, X): back to (X, Y[, 1])
        image: Any = nib.load(str(image_path))
        array = labels.T.reshape(tuple(int(s) for s in image.shape[:2]) + (1,) * (len(image.shape) >= 3))
        return write_nifti(array.astype(np.uint8), np.asarray(image.affine), out, overwrite=True)
    _, source = pred.geometry()
    volume, affine = to_source_grid(labels, source[SourceKeys.AFFINE], source[SourceKeys.ORIGINAL_AFFINE])
    return write_nifti(volume.astype(np.uint8), affine, out, overwrite=True)


class BlosamInfer(InferTask):
    """One task's prompt-free model: the adapter trained in the app for the task, else the one that ships.

    The result is a label map (1 = the task's structure) on the input's grid; its params name the adapter that made
    it (``adapter``, ``adapter_source``, ``adapter_sha256``).
    """

    def __init__(self, store: ModelStore, task: str) -> None:
        preset = store.preset(task)
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={preset.label_name: 1},
            dimension=preset.spatial_dims,
            description=f"blosam_med prompt-free {preset.label_name} segmentation ({task}; "
            f"{'volumes slice by slice' if preset.spatial_dims == 3 else '2D images'})",
        )
        self.store, self.task = store, task

    def is_valid(self) -> bool:
        return self.store.current_adapter(self.task) is not None

    def get_path(self, validate: bool = True) -> str | None:
        current = self.store.current_adapter(self.task)
        return str(current[0]) if current is not None else None

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = request.get("image")
        name = model_name(self.task)
        if not isinstance(image, str) or not image:
            raise BadInput(f"{name}: the request names no image file (got {type(image).__name__})")
        start = time.perf_counter()
        try:
            loaded = self.store.load(self.task)
            pred = predict_case({"image": image}, loaded.task, loaded.predictor, progress=False)
            out = write_label(pred, image)
        except (ValueError, OSError) as err:  # our readers name the file and the problem
            raise BadInput(f"{name}: {err}") from err
        seconds = round(time.perf_counter() - start, 3)
        logger.info("%s: %s -> %s (%s adapter, %.2f s)", name, image, out, loaded.source, seconds)
        return str(out), {
            "model": name,
            "task": self.task,
            "label_name": loaded.task.label_name,
            "kind": pred.kind,
            "slices": len(pred.slices),
            "adapter": str(loaded.adapter),
            "adapter_source": loaded.source,
            "adapter_sha256": loaded.sha256,
            "latencies": {"total": seconds},
        }
