"""``blosam quantize``: an int8 encoder calibrated on a task's images, kept only where its masks match float32's."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from blosam_med.data import load_samples, open_datalist
from blosam_med.data.keys import SampleKeys
from blosam_med.inference.infer import load_adapters, predict_case
from blosam_med.inference.predictor import Predictor, preset_options
from blosam_med.io import check_writable
from blosam_med.model.embedding_cache import EmbeddingCache
from blosam_med.model.encoder_engines import build_engine
from blosam_med.model.paths import default_cache_dir
from blosam_med.model.quantize import DESCRIPTION, MIN_DICE, int8_engine, quantize_encoder

__all__ = ["CALIBRATION_IMAGES", "mask_dice", "quantize_for_adapters"]

logger = logging.getLogger(__name__)

#: Calibration images (2D images or volume slices, evenly spaced) taken from the calibration split by default
#: (``blosam quantize --images``; 0 takes them all).
CALIBRATION_IMAGES = 32


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two label maps' foregrounds; 1.0 when both are empty."""
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _evenly(items: list, n: int) -> list:
    if n <= 0 or len(items) <= n:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def quantize_for_adapters(
    adapters: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    split: str = "training",
    check_split: str = "test",
    images: int = CALIBRATION_IMAGES,
    min_dice: float = MIN_DICE,
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Quantise the adapters' encoder (or head, for a cut encoder) to int8 on images of ``split`` and keep it in
    ``out`` only if, on every case of ``check_split``, its masks through the adapters have Dice >= ``min_dice``
    against those of the float32 ``engine`` (2D: per image; volumes: per volume).

    Returns:
        ``int8.json``'s content: backbone, versions, calibration images, and ``check`` (engine, cases with their Dice,
        smallest Dice, ``min_dice``).

    Raises:
        ValueError: a split that is missing or empty, or a check whose smallest Dice is below ``min_dice`` (naming
            the case; nothing is written).
        OutputExistsError: ``out`` exists and not ``overwrite``.
    """
    out = check_writable(out, overwrite)
    models, task, presets = load_adapters(adapters)
    backbone = models[0].backbone
    datalist = open_datalist(data)
    for name in (split, check_split):
        if not datalist.get(name):
            raise ValueError(f"{data}: the datalist has no '{name}' cases (sections: {', '.join(datalist)})")
    samples = _evenly(load_samples(datalist[split], task, foreground_only=False, every_n=1), images)
    names = [
        f"{s[SampleKeys.IMAGE_PATH]}" + (f"#{s[SampleKeys.SLICE]}" if s.get(SampleKeys.SLICE) is not None else "")
        for s in samples
    ]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        folder = quantize_encoder(backbone, [s[SampleKeys.IMAGE] for s in samples], names, work / "int8", root)
        predictors = {
            name: Predictor(models, EmbeddingCache(backbone, None, progress=False, engine=e), **preset_options(presets))
            for name, e in (
                ("float32", build_engine(backbone, engine, root=root)),
                ("int8", int8_engine(folder, backbone)),
            )
        }
        cases: list[dict[str, Any]] = []
        for entry in datalist[check_split]:
            maps = [predict_case(entry, task, p, progress=False).label_map() for p in predictors.values()]
            cases.append({"image": str(entry["image"]), "dice": round(mask_dice(*maps), 6)})
        worst = min(cases, key=lambda c: c["dice"])
        check: dict[str, Any] = {
            "engine": predictors["float32"].cache.engine_name,
            "split": check_split,
            "min_dice": min_dice,
            "smallest_dice": worst["dice"],
            "mean_dice": round(float(np.mean([c["dice"] for c in cases])), 6),
            "cases": cases,
        }
        logger.info(
            "int8 vs float32 masks over %d cases: smallest Dice %.4f (%s)", len(cases), worst["dice"], worst["image"]
        )
        if worst["dice"] < min_dice:
            raise ValueError(
                f"{worst['image']}: int8 masks reach Dice {worst['dice']:.4f} against float32's, below {min_dice} "
                f"(mean {check['mean_dice']:.4f} over {len(cases)} {check_split} cases); the int8 encoder is not "
                "kept: use float32, or calibrate on more images of the task"
            )
        described = json.loads((folder / DESCRIPTION).read_text())
        described["check"] = check
        (folder / DESCRIPTION).write_text(json.dumps(described, indent=1))
        if out.is_dir():  # --overwrite (checked above): the old folder goes only once the new one passed
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.rename(folder, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return described
