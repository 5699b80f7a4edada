"""writers: NIfTI on the source grid, PNG masks and overlays, montages."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from blosam_med.inference.writers import COLOURS, overlay, to_source_grid, write_montage, write_nifti, write_png_mask
from blosam_med.io import OutputExistsError


def test_nifti_keeps_array_and_affine_in_qform_and_sform(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    path = write_nifti(array, affine, tmp_path / "m.nii.gz")
    img = nib.load(path)
    assert np.array_equal(np.asarray(img.dataobj), array) and img.get_data_dtype() == np.uint8
    assert np.allclose(img.get_qform(), affine) and np.allclose(img.get_sform(), affine)
    with pytest.raises(OutputExistsError):
        write_nifti(array, affine, path)


def test_source_grid_undoes_the_ras_reorientation():
    original = np.diag([-0.8, -0.8, 2.0, 1.0])  # an LPS-like source grid
    original[:3, 3] = [100.0, 80.0, -20.0]
    array = np.random.default_rng(0).integers(0, 2, (4, 5, 6)).astype(np.uint8)
    to_ras = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(original), nib.orientations.axcodes2ornt("RAS")
    )
    ras = nib.orientations.apply_orientation(array, to_ras)  # what the RAS reader hands the model
    ras_affine = original @ nib.orientations.inv_ornt_aff(to_ras, array.shape)
    out, affine = to_source_grid(ras, ras_affine, original)
    assert np.array_equal(out, array) and np.allclose(affine, original)


def test_png_mask_and_overlay_colours(tmp_path):
    mask = np.zeros((8, 10), np.uint8)
    mask[2:6, 3:7] = 1
    path = write_png_mask(mask, tmp_path / "m.png")
    assert set(np.unique(np.asarray(Image.open(path)))) == {0, 255}
    image = np.full((1, 8, 10), 0.5, np.float32)
    rgb = overlay(image, mask[None])
    assert rgb.shape == (8, 10, 3) and rgb.dtype == np.uint8
    assert (rgb == COLOURS[0]).all(axis=-1).any()  # the structure's contour in its colour
    assert (rgb[0, 0] == 127).all()  # background: the image, 0.5 -> 127


def test_montage_writes_one_png(tmp_path):
    images = [np.random.default_rng(i).random((1, 8, 8)).astype(np.float32) for i in range(5)]
    masks = [np.zeros((1, 8, 8), np.uint8) for _ in range(5)]
    path = write_montage(images, masks, tmp_path / "montage.png")
    assert Image.open(path).size == (4 * 192, 2 * 192)  # 5 tiles in rows of 4, 8 px enlarged to 192
