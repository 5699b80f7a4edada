"""score_predictions: the one scoring path of blosam evaluate, evaluate.yaml and the study."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from synthetic import disc

from blosam_med.data import volume_to_slices
from blosam_med.inference.evaluate import score_predictions


def _binary(mask: np.ndarray) -> np.ndarray:
    return (mask > 0).astype(np.uint8)


def _sample(name: str, label: np.ndarray, spacing=(1.0, 1.0)) -> dict:
    return {
        "image": torch.zeros(1, *label.shape),
        "label": torch.as_tensor(label[None], dtype=torch.uint8),
        "spacing": spacing,
        "case": name,
        "image_path": f"/data/{name}.png",
    }


def test_images_are_cases_and_masks_are_scored_against_labels():
    a, b = _binary(disc(24, 32, 6.0)), _binary(disc(24, 32, 4.0))
    samples = [_sample("a", a), _sample("b", b)]
    masks = [torch.as_tensor(a[None]), torch.zeros(1, 24, 32)]
    result = score_predictions(samples, masks)
    cases = {c["case"]: c for c in result["cases"]}
    assert set(cases) == {"a", "b"}
    assert cases["a"]["dice"] == 1.0 and cases["a"]["hd95"] == 0.0
    assert cases["b"]["dice"] == 0.0 and cases["b"]["pred_empty"]
    assert result["mean"]["dice"]["mean"] == pytest.approx(0.5)


def test_slices_of_a_volume_are_one_case_unless_per_sample():
    vol = np.stack([_binary(disc(16, 16, 4.0))] * 3, axis=-1)  # (X, Y, Z)
    pair = {
        "image": MetaTensor(
            torch.as_tensor(vol[None], dtype=torch.float32), affine=torch.diag(torch.tensor([1.0, 1.0, 2.5, 1.0]))
        ),
        "label": MetaTensor(torch.as_tensor(vol[None])),
        "image_path": "/data/vol.nii.gz",
    }
    slices = volume_to_slices(pair, "axial")
    masks = [s["label"].clone() for s in slices]
    masks[0].zero_()  # one slice missed: the volume's Dice is 2/3 of the foreground, not a mean of slices
    per_volume = score_predictions(slices, masks)
    assert [c["case"] for c in per_volume["cases"]] == ["vol"]
    assert per_volume["cases"][0]["dice"] == pytest.approx(2 * 2 / (2 + 3))
    per_slice = score_predictions(slices, masks, per_sample=True)
    assert [c["dice"] for c in per_slice["cases"]] == [0.0, 1.0, 1.0]
