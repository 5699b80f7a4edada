"""Dice, HD95 and NSD in millimetres with MONAI metrics, and a stated convention for empty masks.

The unit of evaluation is one 2D image (X-ray, endoscopy, dental) or one 3D volume (CT, slices stacked back before
scoring), at the original image resolution. Masks are binary (0/1), shape ``(H, W)`` or ``(D, H, W)`` with an optional
leading channel of 1; ``spacing`` gives the millimetres per *array* axis, in array order, so distances come out in mm.

Metrics (``monai.metrics``):

- Dice: ``compute_dice(include_background=True)``; does not depend on spacing.
- HD95: ``compute_hausdorff_distance(percentile=95, directed=False, spacing=...)``: the larger of the two directed
  95th-percentile distances between the mask boundaries, in mm.
- NSD: ``compute_surface_dice(class_thresholds=[tolerance_mm], use_subvoxels=False, spacing=...)``: the fraction of
  boundary voxels of both masks that lie within the tolerance (default 2 mm, as in MedSAM) of the other boundary.

Empty masks. Natively MONAI returns NaN or inf when a mask is empty (HD95 NaN for every empty case, Hausdorff
inf, Dice NaN with ``ignore_empty=True``, NSD NaN when both are empty), and NaN values silently vanish from
``aggregate()`` means, so missed structures and false positives would not count. Here every case gets a finite
value instead, so that every case counts in a mean:

=========================================  ======  =====  ==================================================
case                                       Dice    NSD    HD95 (mm)
=========================================  ======  =====  ==================================================
both empty (correctly found nothing)       1       1      0
label empty, prediction not (false pos.)   0       0      image diagonal ``sqrt(sum((n_i * s_i) ** 2))``
prediction empty, label not (missed)       0       0      image diagonal ``sqrt(sum((n_i * s_i) ** 2))``
=========================================  ======  =====  ==================================================

The image diagonal (``n_i`` voxels and ``s_i`` mm along axis ``i``) bounds every distance between two points of
the image, so it is the worst HD95 a prediction can have. Each case also carries ``pred_empty`` and
``label_empty`` flags, and :func:`evaluate_cases` counts the three empty-case kinds.

:func:`summarize` never drops a value: a NaN or infinite value raises ``ValueError`` naming the cases.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

__all__ = [
    "METRIC_KEYS",
    "METRIC_NAMES",
    "NSD_TOLERANCE_MM",
    "compute_case_metrics",
    "summarize",
    "evaluate_cases",
    "mean_metrics",
]

logger = logging.getLogger(__name__)

#: The metrics of every evaluation, as keys of per-case results and of ``result["mean"]``.
METRIC_KEYS = ("dice", "hd95", "nsd")
#: Their names in tracked runs (MLflow) and tables, with units: ``<prefix>_dice``, ``<prefix>_hd95_mm``, ...
METRIC_NAMES = {"dice": "dice", "hd95": "hd95_mm", "nsd": "nsd"}
#: Default NSD tolerance in mm (the bundle's evaluate.yaml and ``blosam evaluate`` use it).
NSD_TOLERANCE_MM = 2.0


def _as_tensor(x: Any) -> torch.Tensor:
    """A plain CPU tensor from a numpy array, a (Meta)Tensor on any device, or a nested sequence."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.as_tensor() if hasattr(x, "as_tensor") else x
    return torch.as_tensor(np.asarray(x))


def _check_spacing(spacing: Any, name: str) -> tuple[float, ...]:
    """Spacing as a tuple of positive finite floats (2 or 3 of them), else ValueError."""
    if isinstance(spacing, (str, bytes)) or not hasattr(spacing, "__iter__"):
        raise ValueError(f"{name}: spacing must be a sequence of mm per array axis, e.g. (0.5, 0.5); got {spacing!r}")
    values = tuple(float(s) for s in spacing)
    if len(values) not in (2, 3):
        raise ValueError(f"{name}: spacing {values} has {len(values)} values; expected 2 (H, W) or 3 (D, H, W)")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name}: spacing {values} must be positive and finite (mm per array axis)")
    return values


def _spatial(x: torch.Tensor, ndim: int, what: str, spacing: tuple[float, ...], name: str) -> torch.Tensor:
    """Drop a leading channel of 1 when the spacing says the mask has one axis fewer."""
    if x.ndim == ndim + 1 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != ndim:
        raise ValueError(
            f"{name}: {what} has shape {tuple(x.shape)} but spacing {spacing} has {ndim} values; expected a "
            f"{ndim}D mask {'(D, H, W)' if ndim == 3 else '(H, W)'}, optionally with a leading channel of 1"
        )
    if x.numel() == 0:
        raise ValueError(f"{name}: {what} of shape {tuple(x.shape)} is empty (no voxels)")
    return x


def _binary(x: torch.Tensor, what: str, name: str) -> torch.Tensor:
    """The mask as uint8 0/1, or ValueError listing some of the offending values."""
    ok = (x == 0) | (x == 1)
    if not bool(ok.all()):
        bad = torch.unique(x[~ok])[:5].tolist()
        raise ValueError(
            f"{name}: {what} must be binary (0/1); found values {bad} (threshold probabilities or map label "
            f"values to 0/1 first)"
        )
    return x.to(torch.uint8)


def _diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the image diagonal: an upper bound on any distance inside the image."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def compute_case_metrics(
    pred: Any, label: Any, spacing: Sequence[float], *, nsd_tolerance_mm: float = NSD_TOLERANCE_MM, name: str = "case"
) -> dict[str, Any]:
    """Dice, HD95 (mm) and NSD of one binary 2D image or 3D volume, with the module's empty-case convention.

    Args:
        pred: predicted mask, numpy array or tensor, shape (H, W) or (D, H, W), or with a leading channel of 1;
            values 0/1 (bool, int or float).
        label: reference mask, same shape as ``pred`` (a leading channel of 1 may differ).
        spacing: mm per array axis, in array order, one value per spatial axis: (s_H, s_W) or (s_D, s_H, s_W).
            Its length decides whether a leading axis of size 1 is a channel or a one-slice volume.
        nsd_tolerance_mm: NSD tolerance in mm, defaults to :data:`NSD_TOLERANCE_MM` (2.0).
        name: case name used in error messages (e.g. the file name).

    Returns:
        ``{"dice": float, "hd95": float (mm), "nsd": float, "pred_empty": bool, "label_empty": bool}``.

    Raises:
        ValueError: spacing not 2 or 3 positive values, a mask not matching the spacing's dimensions, prediction and
            label shapes differing, non-binary values, or a negative or non-finite tolerance.
    """
    spacing = _check_spacing(spacing, name)
    tolerance = float(nsd_tolerance_mm)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"{name}: nsd_tolerance_mm must be a finite value >= 0 mm; got {nsd_tolerance_mm!r}")
    ndim = len(spacing)
    p = _as_tensor(pred)
    y = _as_tensor(label)
    p_shape = tuple(p.shape[1:]) if p.ndim == ndim + 1 and p.shape[0] == 1 else tuple(p.shape)
    y_shape = tuple(y.shape[1:]) if y.ndim == ndim + 1 and y.shape[0] == 1 else tuple(y.shape)
    if p_shape != y_shape:
        raise ValueError(f"{name}: prediction shape {tuple(p.shape)} differs from label shape {tuple(y.shape)}")
    p = _binary(_spatial(p, ndim, "prediction", spacing, name), "prediction", name)
    y = _binary(_spatial(y, ndim, "label", spacing, name), "label", name)

    pred_empty, label_empty = not bool(p.any()), not bool(y.any())
    if pred_empty and label_empty:
        dice, hd95, nsd = 1.0, 0.0, 1.0
    elif pred_empty or label_empty:
        dice, hd95, nsd = 0.0, _diagonal_mm(p.shape, spacing), 0.0
    else:
        pb, yb = p[None, None].double(), y[None, None].double()  # (B=1, C=1, *spatial)
        with warnings.catch_warnings():
            # MONAI 1.6 warns about its own deprecated always_return_as_numpy argument on every call
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            dice = float(compute_dice(pb, yb, include_background=True, ignore_empty=False)[0, 0])
            hd95 = float(
                compute_hausdorff_distance(pb, yb, include_background=True, percentile=95, spacing=spacing)[0, 0]
            )
            nsd = float(
                compute_surface_dice(
                    pb, yb, [tolerance], include_background=True, spacing=spacing, use_subvoxels=False
                )[0, 0]
            )
        if not all(math.isfinite(v) for v in (dice, hd95, nsd)):  # cannot happen with two non-empty masks
            raise RuntimeError(f"{name}: MONAI returned dice={dice}, hd95={hd95}, nsd={nsd} for non-empty masks")
    return {"dice": dice, "hd95": hd95, "nsd": nsd, "pred_empty": pred_empty, "label_empty": label_empty}


def summarize(cases: Sequence[dict], keys: Sequence[str] = METRIC_KEYS) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation (population, ddof=0), median and count of each metric over all cases.

    No value is dropped: every case counts, so ``n == len(cases)`` for every key.

    Args:
        cases: per-case dicts holding ``keys`` (and optionally ``"case"``, used in error messages).
        keys: metric names to summarise.

    Returns:
        ``{key: {"mean", "std", "median", "n"}}``; with no cases the statistics are ``None`` and ``n`` is 0.

    Raises:
        ValueError: a case lacks a key, or a value is NaN or infinite (the message names the cases).
    """
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = []
        for i, case in enumerate(cases):
            if key not in case:
                raise ValueError(f"case {case.get('case', i)!r} has no metric '{key}' (keys: {sorted(case)})")
            values.append(float(case[key]))
        arr = np.asarray(values, dtype=float)
        bad = [cases[i].get("case", i) for i in np.flatnonzero(~np.isfinite(arr)).tolist()]
        if bad:
            raise ValueError(
                f"metric '{key}' is NaN or infinite for {len(bad)} case(s) {bad[:5]}; compute_case_metrics never "
                f"returns such values, so they come from elsewhere and would distort the mean"
            )
        if arr.size == 0:
            out[key] = {"mean": None, "std": None, "median": None, "n": 0}
        else:
            out[key] = {
                "mean": float(arr.mean()),
                "std": float(arr.std()),
                "median": float(np.median(arr)),
                "n": int(arr.size),
            }
    return out


def mean_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """The mean of each metric of an evaluation result (``result["mean"]``) under its tracked name
    (``{prefix}_dice``, ``{prefix}_hd95_mm``, ``{prefix}_nsd``); metrics without cases are left out."""
    out = {}
    for key, name in METRIC_NAMES.items():
        stats = result.get("mean", {}).get(key)
        if isinstance(stats, dict) and stats.get("mean") is not None:
            out[f"{prefix}_{name}"] = float(stats["mean"])
    return out


def evaluate_cases(
    preds: Sequence[Any],
    labels: Sequence[Any],
    spacings: Sequence[Sequence[float]],
    case_ids: Sequence[str],
    *,
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> dict[str, Any]:
    """Score every case with :func:`compute_case_metrics` and summarise them.

    Args:
        preds: predicted masks, one per case (see :func:`compute_case_metrics` for shapes).
        labels: reference masks, in the same order.
        spacings: mm per array axis for each case.
        case_ids: unique case names, used in the table and in error messages.
        nsd_tolerance_mm: NSD tolerance in mm, defaults to :data:`NSD_TOLERANCE_MM` (2.0).

    Returns:
        JSON-serialisable ``{"cases": [{"case", "dice", "hd95", "nsd", "pred_empty", "label_empty"}, ...],
        "mean": summarize(cases), "counts": {"n_cases", "n_both_empty", "n_false_positive", "n_missed"}}``.

    Raises:
        ValueError: the four sequences differ in length, case ids repeat, or a case is invalid.
    """
    lengths = {"preds": len(preds), "labels": len(labels), "spacings": len(spacings), "case_ids": len(case_ids)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"preds, labels, spacings and case_ids must have one entry per case; got lengths {lengths}")
    ids = [str(c) for c in case_ids]
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:
        raise ValueError(f"case ids must be unique; repeated: {repeated[:5]}")
    cases = [
        {"case": c, **compute_case_metrics(p, y, s, nsd_tolerance_mm=nsd_tolerance_mm, name=c)}
        for p, y, s, c in zip(preds, labels, spacings, ids, strict=True)
    ]
    counts = {
        "n_cases": len(cases),
        "n_both_empty": sum(c["pred_empty"] and c["label_empty"] for c in cases),
        "n_false_positive": sum(c["label_empty"] and not c["pred_empty"] for c in cases),
        "n_missed": sum(c["pred_empty"] and not c["label_empty"] for c in cases),
    }
    if counts["n_both_empty"] or counts["n_false_positive"] or counts["n_missed"]:
        logger.info("empty-case convention applied: %s", counts)
    return {"cases": cases, "mean": summarize(cases), "counts": counts}
