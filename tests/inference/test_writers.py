"""writers: NIfTI on the source grid, PNG masks and overlays, montages."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage
from PIL import Image

from blosam_med.inference.writers import (
    COLOURS,
    AtomicNiftiWriter,
    overlay,
    to_source_grid,
    write_montage,
    write_nifti,
    write_png_mask,
)
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


@pytest.mark.parametrize(
    "shape, dtype",
    [((5, 6, 1), np.uint8), ((4, 5, 6), np.uint8), ((5, 6, 1, 2), np.float32), ((4, 5, 6, 2), np.float32)],
)
def test_nifti_through_the_monai_writer_equals_plain_nibabel(tmp_path, shape, dtype):
    """2D label maps (H, W, 1), volumes, and probabilities with a trailing channel: same header bytes and data as a
    direct nibabel save with qform = sform (code 1), the files written before the MONAI writer path."""
    array = (np.random.default_rng(0).random(shape) * 3).astype(dtype)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    plain = nib.Nifti1Image(array, affine)
    plain.set_qform(affine, code=1)
    plain.set_sform(affine, code=1)
    nib.save(plain, str(tmp_path / "plain.nii.gz"))
    ours = nib.load(write_nifti(array, affine, tmp_path / "ours.nii.gz"))
    reference = nib.load(tmp_path / "plain.nii.gz")
    assert ours.shape == shape and ours.get_data_dtype() == dtype
    assert ours.header.binaryblock == reference.header.binaryblock
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(reference.dataobj))


def test_monai_save_image_writes_through_the_atomic_writer_and_never_overwrites(tmp_path):
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    image = MetaTensor(torch.ones(1, 4, 5, 6, dtype=torch.uint8), affine=torch.as_tensor(affine))
    image.meta["filename_or_obj"] = "case"
    save = SaveImage(
        output_dir=tmp_path, output_postfix="", separate_folder=False, writer=AtomicNiftiWriter, print_log=False
    )
    save(image)
    written = nib.load(tmp_path / "case.nii.gz")
    assert written.shape == (4, 5, 6) and np.allclose(written.affine, affine)
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]  # no temporary file left
    before = (tmp_path / "case.nii.gz").read_bytes()
    with pytest.raises(RuntimeError, match="already exists"):
        save(image)
    assert (tmp_path / "case.nii.gz").read_bytes() == before


def test_atomic_writer_refuses_to_resample():
    with pytest.raises(ValueError, match="resample before writing"):
        AtomicNiftiWriter().set_metadata({"affine": np.eye(4)}, resample=True)
