"""Mask post-processing of a task: largest components and hole filling, applied by the predictor's masks."""

from __future__ import annotations

import pytest
import torch

from blosam_med.data import TaskConfig
from blosam_med.inference.postprocess import mask_postprocess
from blosam_med.inference.predictor import binary_masks


def _blobs() -> torch.Tensor:
    m = torch.zeros(1, 40, 40, dtype=torch.uint8)
    m[0, 2:22, 2:22] = 1  # 400 px, with a hole
    m[0, 8:12, 8:12] = 0
    m[0, 25:35, 25:35] = 1  # 100 px
    m[0, 37:39, 2:4] = 1  # 4 px
    return m


def test_keep_largest_components_and_fill_holes():
    m = _blobs()
    one = mask_postprocess(1)(m)
    assert one.sum() == 400 - 16 and one[0, 30, 30] == 0
    two = mask_postprocess(2)(m)
    assert two.sum() == 400 - 16 + 100 and two[0, 38, 3] == 0
    filled = mask_postprocess(1, fill_holes=True)(m)
    assert filled.sum() == 400 and filled[0, 10, 10] == 1
    assert mask_postprocess(0, False) is None


def test_binary_masks_apply_each_models_postprocessing():
    logits = torch.stack([_blobs()[0].float() * 2 - 1, _blobs()[0].float() * 2 - 1])
    out = binary_masks(logits, [mask_postprocess(1), None])
    assert out.dtype == torch.uint8 and out.shape == (2, 40, 40)
    assert out[0].sum() == 384 and out[1].sum() == 384 + 100 + 4
    empty = binary_masks(-torch.ones(1, 8, 8), [mask_postprocess(1, True)])
    assert empty.sum() == 0


def test_task_refuses_negative_components():
    with pytest.raises(ValueError, match="keep_components"):
        TaskConfig(name="x", keep_components=-1)
    assert TaskConfig.from_dict(TaskConfig(name="x", keep_components=2, fill_holes=True).to_dict()).keep_components == 2


def test_input_mask_is_not_modified():
    m = _blobs()
    before = m.clone()
    mask_postprocess(1, fill_holes=True)(m)
    assert torch.equal(m, before)
