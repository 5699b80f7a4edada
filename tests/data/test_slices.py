from __future__ import annotations

import numpy as np
import pytest
import torch

from blosam_med.data import slice_spacing, slice_view, slices_to_volume, volume_to_slices


def _ras_volume(shape=(4, 5, 6)):
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(1, *shape)


def test_axial_slice_is_in_radiological_view():
    vol = torch.zeros(1, 4, 5, 6)
    vol[0, 3, 4, 2] = 1  # most right (x max), most anterior (y max)
    s = slice_view(vol, "axial", 2)
    assert s.shape == (1, 5, 4)
    assert s[0, 0, 0] == 1  # top-left: anterior up, patient's right on the image's left


@pytest.mark.parametrize(("axis", "shape"), [("coronal", (1, 6, 4)), ("sagittal", (1, 6, 5))])
def test_coronal_and_sagittal_have_superior_up(axis, shape):
    vol = torch.zeros(1, 4, 5, 6)
    vol[0, :, :, 5] = 1  # most superior plane
    s = slice_view(vol, axis, 1)
    assert s.shape == shape and bool(s[0, 0].all()) and not bool(s[0, 1:].any())


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_slices_go_back_into_the_volume(axis):
    vol = _ras_volume()
    a = {"sagittal": 0, "coronal": 1, "axial": 2}[axis]
    idx = list(range(vol.shape[a + 1]))
    source = {"shape": tuple(vol.shape[1:]), "axis": a}
    assert torch.equal(slices_to_volume([slice_view(vol, axis, i) for i in idx], idx, source), vol)
    partial = slices_to_volume([slice_view(vol, axis, 1)], [1], source, fill=-1)
    assert torch.equal(partial.select(a + 1, 1), vol.select(a + 1, 1)) and float(partial.select(a + 1, 0).max()) == -1


def test_slice_spacing_is_row_then_column():
    aff = np.diag([0.5, 0.7, 3.0, 1.0])
    assert slice_spacing(aff, "axial") == pytest.approx((0.7, 0.5))
    assert slice_spacing(aff, "coronal") == pytest.approx((3.0, 0.5))
    assert slice_spacing(aff, "sagittal") == pytest.approx((3.0, 0.7))


def test_volume_to_slices_options():
    vol = _ras_volume((3, 3, 8))
    lab = torch.zeros(1, 3, 3, 8, dtype=torch.uint8)
    lab[0, 1, 1, [2, 3, 4, 6]] = 1
    pair = {"image": vol, "label": lab, "image_path": "/x/ct7.nii.gz"}
    assert [s["slice"] for s in volume_to_slices(pair, foreground_only=True)] == [2, 3, 4, 6]
    assert [s["slice"] for s in volume_to_slices(pair, foreground_only=True, every_n=2)] == [2, 4]
    assert [s["slice"] for s in volume_to_slices(pair, every_n=3)] == [0, 3, 6]
    s = volume_to_slices(pair)[0]
    assert s["case"] == "ct7" and s["source"]["shape"] == (3, 3, 8) and s["label"].dtype == torch.uint8
    with pytest.raises(ValueError, match="foreground_only needs a label"):
        volume_to_slices({"image": vol, "image_path": "v"}, foreground_only=True)
