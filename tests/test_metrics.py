"""Metric conventions on hand-made masks whose Dice, HD95 (mm) and NSD can be worked out on paper."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from blosam_med.metrics import compute_case_metrics, evaluate_cases, summarize

ANISO = (0.5, 2.0)  # rows 0.5 mm, columns 2 mm


def _square(shape, top, left, size):
    m = np.zeros(shape, np.uint8)
    m[top : top + size, left : left + size] = 1
    return m


def _lines():
    """Two 1-pixel-thick horizontal lines of 10 pixels, the second 1 row lower and 2 columns further right.

    Every pixel of a thin line is a boundary pixel. At ANISO spacing, 8 pixels of each line lie 1 row (0.5 mm) from
    the other line, one lies sqrt(0.5^2 + 2^2) = 2.06 mm away and one sqrt(0.5^2 + 4^2) = 4.03 mm away.
    """
    label, pred = np.zeros((8, 16), np.uint8), np.zeros((8, 16), np.uint8)
    label[3, 0:10] = 1
    pred[4, 2:12] = 1
    return pred, label


@pytest.mark.parametrize(
    "left, expected",
    [(2, 1.0), (6, 2 * 32 / (64 + 64)), (10, 0.0)],  # same square; overlap 8 x 4 = 32 px; touching, disjoint
    ids=["identical", "half-overlap", "disjoint"],
)
def test_dice_of_known_overlaps_does_not_depend_on_spacing(left, expected):
    label, pred = _square((20, 20), 2, 2, 8), _square((20, 20), 2, left, 8)
    assert compute_case_metrics(pred, label, (1.0, 1.0))["dice"] == pytest.approx(expected)
    assert compute_case_metrics(pred, label, ANISO)["dice"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "spacing, hd95_cols, hd95_rows",
    [((1.0, 1.0), 3.0, 3.0), ((0.5, 2.0), 6.0, 1.5), ((2.0, 0.5), 1.5, 6.0)],
    ids=["isotropic", "rows-0.5-cols-2", "rows-2-cols-0.5"],
)
def test_hd95_in_mm_of_a_shifted_square_follows_axis_spacing(spacing, hd95_cols, hd95_rows):
    # A 10x10 square moved 3 pixels: the 10 boundary pixels of the leading edge (28% of 36) are 3 pixels from the
    # other boundary, so the 95th percentile is 3 pixels times the spacing of the axis of the shift.
    label = _square((40, 40), 10, 10, 10)
    shifted_cols, shifted_rows = _square((40, 40), 10, 13, 10), _square((40, 40), 13, 10, 10)
    assert compute_case_metrics(shifted_cols, label, spacing)["hd95"] == pytest.approx(hd95_cols)
    assert compute_case_metrics(shifted_rows, label, spacing)["hd95"] == pytest.approx(hd95_rows)
    assert compute_case_metrics(label, label, spacing)["hd95"] == 0.0


def test_hd95_is_the_95th_percentile_not_the_maximum():
    pred, label = _lines()
    # each direction: eight 0.5 mm, one 2.06 mm, one 4.03 mm; numpy's linear 95th percentile of 10 sorted values
    # is v[8] + 0.55 * (v[9] - v[8]); the maximum (Hausdorff) would be 4.03 mm.
    near, far = math.hypot(0.5, 2.0), math.hypot(0.5, 4.0)
    r = compute_case_metrics(pred, label, ANISO)
    assert r["hd95"] == pytest.approx(near + 0.55 * (far - near))
    assert r["dice"] == 0.0  # no pixel in common


@pytest.mark.parametrize(
    "tolerance, expected",
    [(0.4, 0.0), (2.0, 16 / 20), (2.1, 18 / 20), (4.1, 1.0)],  # < 0.5 mm; only 2.06 and 4.03 out; only 4.03 out
)
def test_nsd_counts_boundary_pixels_within_the_tolerance_in_mm(tolerance, expected):
    pred, label = _lines()
    assert compute_case_metrics(pred, label, ANISO, nsd_tolerance_mm=tolerance)["nsd"] == pytest.approx(expected)


def test_nsd_of_a_shift_inside_and_outside_the_tolerance():
    label = _square((40, 40), 10, 10, 10)
    shifted = _square((40, 40), 13, 10, 10)  # 3 rows: 1.5 mm at 0.5 mm rows, 6 mm at 2 mm rows
    assert compute_case_metrics(shifted, label, (0.5, 0.5))["nsd"] == pytest.approx(1.0)  # default 2 mm
    assert compute_case_metrics(shifted, label, (0.5, 0.5), nsd_tolerance_mm=1.4)["nsd"] < 1.0
    assert compute_case_metrics(shifted, label, (2.0, 2.0))["nsd"] < 0.8


EMPTY, BLOB = np.zeros((10, 20), np.uint8), _square((10, 20), 2, 2, 4)
DIAGONAL = math.hypot(10 * 0.5, 20 * 2.0)  # 10 rows at 0.5 mm, 20 columns at 2 mm


@pytest.mark.parametrize(
    "pred, label, expected",
    [
        (EMPTY, EMPTY, {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "pred_empty": True, "label_empty": True}),
        (BLOB, EMPTY, {"dice": 0.0, "hd95": DIAGONAL, "nsd": 0.0, "pred_empty": False, "label_empty": True}),
        (EMPTY, BLOB, {"dice": 0.0, "hd95": DIAGONAL, "nsd": 0.0, "pred_empty": True, "label_empty": False}),
    ],
    ids=["both-empty", "false-positive", "missed"],
)
def test_empty_case_convention(pred, label, expected):
    r = compute_case_metrics(pred, label, ANISO)
    assert r == pytest.approx(expected)
    assert type(r["pred_empty"]) is bool and all(type(r[k]) is float for k in ("dice", "hd95", "nsd"))


def test_monai_natively_returns_nan_or_inf_for_empty_masks():
    """The reason for the convention: without it these cases would vanish from, or poison, a mean."""
    empty, blob = torch.zeros(1, 1, 10, 20), torch.as_tensor(BLOB[None, None]).float()
    with pytest.warns(UserWarning, match="all 0"):
        for p, y in ((blob, empty), (empty, blob)):
            assert not math.isfinite(compute_hausdorff_distance(p, y, include_background=True, percentile=95).item())
        assert math.isnan(compute_surface_dice(empty, empty, [2.0], include_background=True).item())
    assert math.isnan(compute_dice(blob, empty, include_background=True).item())  # ignore_empty=True default


def test_3d_volume_per_axis_spacing_and_channel_dim():
    label = np.zeros((1, 6, 20, 20), np.uint8)
    label[0, 1:5, 5:15, 5:15] = 1
    spacing = (3.0, 1.0, 0.5)  # (D, H, W)
    # one slice further: the 100 voxels of the far face (37% of the boundary) are 3 mm away; 3 of 4 slices overlap
    r = compute_case_metrics(np.roll(label, 1, axis=1), label, spacing)
    assert r["hd95"] == pytest.approx(3.0) and r["dice"] == pytest.approx(0.75)
    # per cube 272 boundary voxels; only the 100 of the far face (3 mm) are further than 2 mm from the other cube
    assert r["nsd"] == pytest.approx((272 - 100) / 272)
    assert compute_case_metrics(np.roll(label, 1, axis=1), label, spacing, nsd_tolerance_mm=3.0)["nsd"] == 1.0
    # two voxels along W: 2 x 0.5 mm
    r = compute_case_metrics(np.roll(label, 2, axis=3), label[0], spacing)
    assert r["hd95"] == pytest.approx(1.0) and r["dice"] == pytest.approx(0.8) and r["nsd"] == 1.0


def test_3d_empty_cases_use_the_volume_diagonal():
    empty, blob = np.zeros((4, 6, 8), np.uint8), np.zeros((4, 6, 8), np.uint8)
    blob[1:3, 2:4, 2:4] = 1
    spacing = (2.5, 1.0, 0.5)
    diagonal = math.sqrt((4 * 2.5) ** 2 + 6**2 + (8 * 0.5) ** 2)
    assert compute_case_metrics(empty, blob, spacing)["hd95"] == pytest.approx(diagonal)
    assert compute_case_metrics(blob, empty, spacing)["hd95"] == pytest.approx(diagonal)
    assert compute_case_metrics(empty, empty, spacing)["dice"] == 1.0


def test_spacing_length_decides_between_channel_and_single_slice_volume():
    empty, blob = np.zeros((1, 6, 8), np.uint8), np.zeros((1, 6, 8), np.uint8)
    blob[0, 2:4, 2:4] = 1
    assert compute_case_metrics(empty, blob, (1.0, 1.0))["hd95"] == pytest.approx(10.0)  # (6, 8) image
    assert compute_case_metrics(empty, blob, (5.0, 1.0, 1.0))["hd95"] == pytest.approx(math.sqrt(125))  # 1 slice


def test_accepts_tensors_metatensors_bool_and_float_masks():
    label, pred = _square((20, 20), 2, 2, 8), _square((20, 20), 2, 6, 8)
    expected = compute_case_metrics(pred, label, ANISO)
    variants = [
        (torch.as_tensor(pred), torch.as_tensor(label)),
        (MetaTensor(torch.as_tensor(pred[None]).float()), MetaTensor(torch.as_tensor(label))),
        (pred.astype(bool), label.astype(np.float32)),
        (pred.tolist(), label),
    ]
    for p, y in variants:
        assert compute_case_metrics(p, y, torch.tensor(ANISO)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "pred, label, spacing, kwargs, match",
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), (1.0, 1.0), {}, r"img7\.png: prediction shape \(4, 4\) differs.*\(4, 5\)"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1.0, 1.0, 1.0), {}, r"img7\.png: prediction has shape \(4, 4\) but spac"),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), (1.0, 1.0), {}, r"expected a 2D mask \(H, W\)"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1.0,), {}, r"spacing \(1.0,\) has 1 values"),
        (np.zeros((4, 4)), np.zeros((4, 4)), 1.0, {}, "spacing must be a sequence"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1.0, 0.0), {}, "positive and finite"),
        (np.full((4, 4), 255), np.zeros((4, 4)), (1.0, 1.0), {}, r"img7\.png: prediction must be binary .*\[255\]"),
        (np.zeros((4, 4)), np.full((4, 4), 0.5), (1.0, 1.0), {}, r"label must be binary .*\[0\.5\]"),
        (np.zeros((4, 4)), np.full((4, 4), np.nan), (1.0, 1.0), {}, "label must be binary"),
        (np.zeros((0, 4)), np.zeros((0, 4)), (1.0, 1.0), {}, "empty"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1.0, 1.0), {"nsd_tolerance_mm": -1.0}, "nsd_tolerance_mm"),
    ],
    ids=[
        "shape",
        "spacing-long",
        "channel-2",
        "spacing-short",
        "scalar",
        "zero-spacing",
        "255",
        "prob",
        "nan",
        "no-voxels",
        "tolerance",
    ],
)
def test_invalid_inputs_raise_with_the_case_name(pred, label, spacing, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_case_metrics(pred, label, spacing, name="img7.png", **kwargs)


def test_summarize_statistics_and_refusal_of_nan():
    cases = [
        {"case": "a", "dice": 1.0, "hd95": 0.0, "nsd": 1.0},
        {"case": "b", "dice": 0.0, "hd95": 9.0, "nsd": 0.0},
        {"case": "c", "dice": 0.5, "hd95": 3.0, "nsd": 0.25},
    ]
    s = summarize(cases)
    assert s["dice"] == pytest.approx({"mean": 0.5, "std": math.sqrt(1 / 6), "median": 0.5, "n": 3})
    assert s["hd95"] == pytest.approx({"mean": 4.0, "std": math.sqrt(14), "median": 3.0, "n": 3})
    assert summarize(cases, keys=("nsd",)) == {"nsd": pytest.approx(s["nsd"])}
    assert summarize([])["dice"] == {"mean": None, "std": None, "median": None, "n": 0}
    with pytest.raises(ValueError, match=r"'hd95' is NaN or infinite for 1 case\(s\) \['b'\]"):
        summarize([cases[0], {**cases[1], "hd95": float("nan")}])
    with pytest.raises(ValueError, match=r"\['a'\]"):
        summarize([{**cases[0], "hd95": float("inf")}])
    with pytest.raises(ValueError, match="has no metric 'nsd'"):
        summarize([{"case": "x", "dice": 1.0, "hd95": 0.0}])


def test_evaluate_cases_counts_every_case_and_is_json_serialisable():
    found, empty = _square((10, 20), 2, 2, 4), np.zeros((10, 20), np.uint8)
    res = evaluate_cases(
        [found, empty, found, empty],
        [found, found, empty, empty],
        [ANISO] * 4,
        ["hit", "missed", "false_pos", "nothing"],
    )
    assert [c["case"] for c in res["cases"]] == ["hit", "missed", "false_pos", "nothing"]
    assert res["counts"] == {"n_cases": 4, "n_both_empty": 1, "n_false_positive": 1, "n_missed": 1}
    assert res["mean"]["dice"] == pytest.approx({"mean": 0.5, "std": 0.5, "median": 0.5, "n": 4})
    assert res["mean"]["hd95"]["mean"] == pytest.approx(DIAGONAL / 2) and res["mean"]["hd95"]["n"] == 4
    assert res["mean"]["nsd"]["mean"] == pytest.approx(0.5)
    assert json.loads(json.dumps(res, allow_nan=False)) == res


def test_evaluate_cases_rejects_inconsistent_inputs():
    m = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="one entry per case"):
        evaluate_cases([m, m], [m], [(1.0, 1.0)] * 2, ["a", "b"])
    with pytest.raises(ValueError, match=r"unique; repeated: \['a'\]"):
        evaluate_cases([m, m], [m, m], [(1.0, 1.0)] * 2, ["a", "a"])
    with pytest.raises(ValueError, match=r"^b\.png: label must be binary"):
        evaluate_cases([m, m], [m, m * 0 + 2], [(1.0, 1.0)] * 2, ["a.png", "b.png"])
