"""Loading through MONAI readers: PNG/JPEG/TIFF/BMP, NIfTI, DICOM files, multi-frame DICOM, pairs and samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from synthetic import disc, png_pairs, write_nifti, write_png

from blosam_med.data import TaskConfig, load_pair, load_samples, load_task, read_image, slices_to_volume

GREY = TaskConfig(name="grey", window="minmax", channels=1)
RGB = TaskConfig(name="rgb", window="rgb", channels=3)
VOL = TaskConfig(name="vol", window="custom", width=1000, level=0, spatial_dims=3, foreground_only=False)


def test_png_pair_sample(tmp_path):
    h, w = 20, 30  # not square: rows and columns must not swap
    img = np.tile(np.arange(w, dtype=np.uint8) * 8, (h, 1))
    img[0, :] = 255
    write_png(tmp_path / "a.png", img)
    write_png(tmp_path / "a_mask.png", disc(h, w, r=5))
    (s,) = load_samples([{"image": "a.png", "label": "a_mask.png"}], GREY, base_dir=tmp_path)
    assert s["image"].shape == (1, h, w) and s["image"].dtype == torch.float32 and type(s["image"]) is torch.Tensor
    assert torch.allclose(s["image"][0], torch.as_tensor(img, dtype=torch.float32) / 255)
    assert s["label"].dtype == torch.uint8 and s["label"].shape == (1, h, w)
    assert torch.equal(s["label"][0], torch.as_tensor(disc(h, w, r=5) > 0).to(torch.uint8))
    assert (s["spacing"], s["spacing_known"], s["slice"], s["case"]) == ((1.0, 1.0), False, None, "a")
    assert s["image_path"] == str(tmp_path / "a.png")


def test_unlabelled_item_has_no_label(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((8, 9)))
    (s,) = load_samples([{"image": str(tmp_path / "a.png")}], GREY)
    assert "label" not in s and s["image"].shape == (1, 8, 9)


def test_rgb_and_channel_conversion(tmp_path):
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 90
    write_png(tmp_path / "c.png", rgb)
    pair = load_pair(tmp_path / "c.png", task=RGB)
    assert pair["image"].shape == (3, 6, 7)
    assert torch.allclose(pair["image"][:, 0, 0], torch.tensor([30, 60, 90]) / 255)
    grey = load_pair(tmp_path / "c.png", task=TaskConfig(name="g", window="rgb", channels=1))["image"]
    assert grey.shape == (1, 6, 7) and torch.allclose(grey, torch.full((1, 6, 7), 60 / 255))
    write_png(tmp_path / "g.png", np.full((6, 7), 51))
    as_rgb = load_pair(tmp_path / "g.png", task=RGB)["image"]
    assert as_rgb.shape == (3, 6, 7) and torch.allclose(as_rgb, torch.full((3, 6, 7), 0.2))


@pytest.mark.parametrize("suffix", [".jpg", ".tif", ".bmp"])
def test_other_raster_formats(tmp_path, suffix):
    img = np.zeros((10, 14), np.uint8)
    img[:, 7:] = 200
    write_png(tmp_path / f"x{suffix}", img)
    out = read_image(tmp_path / f"x{suffix}")
    assert out.shape == (1, 10, 14)
    assert float(out[0, :, :6].mean()) < 20 and float(out[0, :, 8:].mean()) > 180


def test_label_values_select_foreground(tmp_path):
    lab = np.zeros((8, 8), np.uint8)
    lab[:2], lab[2:4], lab[4:6] = 1, 2, 3
    write_png(tmp_path / "img.png", np.arange(64).reshape(8, 8))
    write_png(tmp_path / "lab.png", lab)
    pair = load_pair(tmp_path / "img.png", tmp_path / "lab.png", TaskConfig(name="t", label_values=[2, 3]))
    assert pair["label"][0, :, 0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    pair = load_pair(tmp_path / "img.png", tmp_path / "lab.png", TaskConfig(name="t"))  # nonzero
    assert int(pair["label"].sum()) == 48


def test_mask_problems_name_the_file(tmp_path):
    write_png(tmp_path / "img.png", np.zeros((8, 8)))
    write_png(tmp_path / "small.png", np.zeros((8, 7)))
    with pytest.raises(ValueError, match=r"small\.png: mask size \(8, 7\) differs from image img\.png size \(8, 8\)"):
        load_pair(tmp_path / "img.png", tmp_path / "small.png", GREY)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[:2, :, 0] = 255
    colour[4:, :, 1] = 255
    write_png(tmp_path / "colour.png", colour)
    with pytest.raises(ValueError, match=r"colour\.png: mask has 3 channels with different values"):
        load_pair(tmp_path / "img.png", tmp_path / "colour.png", GREY)
    write_png(tmp_path / "greyrgb.png", np.repeat(disc(8, 8, r=2)[..., None], 3, axis=2))  # RGB-saved binary mask
    assert int(load_pair(tmp_path / "img.png", tmp_path / "greyrgb.png", GREY)["label"].sum()) > 0


def test_jpeg_masks_are_read_as_binary_not_as_compression_noise(tmp_path):
    """Kvasir-SEG ships RGB JPEG masks: compression spreads 0/255 over ~0-20 / ~235-255."""
    from PIL import Image

    from blosam_med.data import prepare_datalist

    (tmp_path / "masks").mkdir()
    for i in range(3):
        ref = disc(64, 80, r=12 + 3 * i)
        write_png(tmp_path / "images" / f"c{i}.png", np.arange(64 * 80).reshape(64, 80) % 251)
        write_png(tmp_path / "ref" / f"c{i}.png", ref)
        Image.fromarray(np.repeat(ref[..., None], 3, axis=2)).save(tmp_path / "masks" / f"c{i}.jpg", quality=60)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "masks" / "c0.jpg")))) > 2  # the noise is there
    image = tmp_path / "images" / "c0.png"
    pair = load_pair(image, tmp_path / "masks" / "c0.jpg", GREY, check_labels=True)  # training's check passes
    assert torch.equal(pair["label"], load_pair(image, tmp_path / "ref" / "c0.png", GREY)["label"])
    _, datalist = prepare_datalist(tmp_path / "images", tmp_path / "masks", out=tmp_path / "datalist.json")
    assert sum(len(v) for v in datalist.values() if isinstance(v, list)) == 3


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"broken\.png: unreadable"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt: unsupported file type"):
        read_image(tmp_path / "notes.txt")


def test_nifti_volume_is_reoriented_to_ras(tmp_path):
    arr = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    lps = np.diag([-1.0, -2.0, 3.0, 1.0])  # x, y axes point to L and P
    write_nifti(tmp_path / "v.nii.gz", arr, lps)
    img = read_image(tmp_path / "v.nii.gz")
    assert img.shape == (1, 6, 5, 4)
    np.testing.assert_allclose(np.diag(np.asarray(img.affine))[:3], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(np.asarray(img[0]), arr[::-1, ::-1, :])
    np.testing.assert_allclose(np.asarray(img.meta["original_affine"]), lps)
    # the same voxel has the same world position before and after
    world_before = lps @ np.array([0, 0, 1, 1])
    world_after = np.asarray(img.affine) @ np.array([5, 4, 1, 1])
    np.testing.assert_allclose(world_before, world_after)


def test_nifti_nan_is_refused_naming_the_file(tmp_path):
    arr = np.zeros((4, 4, 3), np.float32)
    arr[1, 1, 1] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", arr)
    with pytest.raises(ValueError, match=r"nan\.nii\.gz: .*NaN"):
        load_pair(tmp_path / "nan.nii.gz", task=VOL)


def test_volume_samples_keep_index_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, (6, 5, 7)).astype(np.int16)
    lab = np.zeros((6, 5, 7), np.uint8)
    lab[2:4, 1:3, 2:5] = 1
    aff = np.diag([0.5, 0.7, 2.0, 1.0])
    write_nifti(tmp_path / "images" / "ct1.nii.gz", arr, aff)
    write_nifti(tmp_path / "labels" / "ct1.nii.gz", lab, aff)
    item = {"image": "images/ct1.nii.gz", "label": "labels/ct1.nii.gz"}
    samples = load_samples([item], VOL, base_dir=tmp_path)
    assert [s["slice"] for s in samples] == list(range(7))
    s = samples[3]
    assert s["image"].shape == (1, 5, 6) and s["label"].shape == (1, 5, 6)  # axial: rows = y, cols = x
    assert s["spacing"] == pytest.approx((0.7, 0.5)) and s["spacing_known"] and s["case"] == "ct1"
    assert s["source"]["shape"] == (6, 5, 7) and s["source"]["axis"] == 2
    np.testing.assert_allclose(s["source"]["affine"], aff)
    # the slices go back into the volume exactly
    back = slices_to_volume([t["image"] for t in samples], [t["slice"] for t in samples], s["source"])
    expected = np.clip((arr + 500) / 1000, 0, 1)
    np.testing.assert_allclose(back[0].numpy(), expected, atol=1e-6)
    lab_back = slices_to_volume([t["label"] for t in samples], [t["slice"] for t in samples], s["source"])
    np.testing.assert_array_equal(lab_back[0].numpy(), lab)
    # training options
    fg = load_samples([item], VOL, base_dir=tmp_path, foreground_only=True)
    assert [t["slice"] for t in fg] == [2, 3, 4]
    assert [t["slice"] for t in load_samples([item], VOL, base_dir=tmp_path, every_n=3)] == [0, 3, 6]
    cor = load_samples([item], VOL, base_dir=tmp_path, axis="coronal")
    assert len(cor) == 5 and cor[0]["image"].shape == (1, 7, 6) and cor[0]["spacing"] == pytest.approx((2.0, 0.5))


def test_one_slice_nifti_is_2d_in_2d_tasks_and_a_volume_in_3d_tasks(tmp_path):
    arr = np.arange(12, dtype=np.int16).reshape(4, 3, 1)
    write_nifti(tmp_path / "one.nii.gz", arr, np.diag([0.5, 0.8, 2.0, 1.0]))
    flat = read_image(tmp_path / "one.nii.gz", spatial_dims=2)
    assert flat.shape == (1, 3, 4) and flat.meta["spacing"] == pytest.approx((0.8, 0.5))
    np.testing.assert_array_equal(np.asarray(flat[0]), arr[..., 0].T)  # rows = y, columns = x, as for DICOM
    assert read_image(tmp_path / "one.nii.gz", spatial_dims=3).shape == (1, 4, 3, 1)


def test_task_dimension_mismatch_is_explained(tmp_path):
    write_nifti(tmp_path / "v.nii.gz", np.zeros((4, 4, 3), np.int16))
    write_png(tmp_path / "a.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="spatial_dims: 3"):
        load_pair(tmp_path / "v.nii.gz", task=GREY)
    with pytest.raises(ValueError, match="expects volumes"):
        load_pair(tmp_path / "a.png", task=VOL)


def test_shipped_presets_load_synthetic_data(tmp_path):
    png_pairs(tmp_path / "g", n=1)
    png_pairs(tmp_path / "c", n=1, rgb=True)
    for name, root, c in (("lung_xray", "g", 1), ("teeth", "g", 1), ("polyp", "c", 3)):
        (s,) = load_samples(
            [{"image": f"{root}/images/case0.png", "label": f"{root}/masks/case0.png"}],
            load_task(name),
            base_dir=tmp_path,
        )
        assert s["image"].shape == (c, 24, 32) and 0 <= float(s["image"].min()) <= float(s["image"].max()) <= 1
        assert set(s["label"].unique().tolist()) == {0, 1}


# ----------------------------------------------------------------------------------------------- DICOM files
def test_dicom_ct_rescale_and_spacing():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    assert img.shape == (1, 128, 128) and img.meta["kind"] == "2d"
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(np.asarray(img[0]), hu)  # rows/cols as stored, rescale applied
    assert float(ds.RescaleIntercept) == -1024 and img.meta["spacing"] == pytest.approx((0.661468, 0.661468))
    assert img.meta["spacing_known"] is True and img.meta["modality"] == "CT"


def test_dicom_mr_and_seg_files_load():
    mr = read_image(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(np.asarray(mr[0]), pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array)
    seg = read_image(get_testdata_file("liver_1frame.dcm"))
    assert seg.shape == (1, 512, 512) and set(np.unique(np.asarray(seg)).tolist()) <= {0.0, 1.0, 255.0}


def test_dicom_sample_in_a_2d_task(tmp_path):
    write_png(tmp_path / "m.png", disc(64, 64, r=10))
    (s,) = load_samples(
        [{"image": get_testdata_file("MR_small.dcm"), "label": str(tmp_path / "m.png")}], load_task("lung_xray")
    )
    assert s["image"].shape == (1, 64, 64) and s["spacing"] == pytest.approx((0.3125, 0.3125)) and s["spacing_known"]
    assert s["case"] == "MR_small" and int(s["label"].sum()) > 0


def _mr_12bit(tmp_path, monochrome1: bool, **tags):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    a = ds.pixel_array.astype(np.int64)
    a = a * 4095 // a.max()
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    if monochrome1:
        a = 4095 - a
        ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = a.astype(np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    path = tmp_path / f"{'m1' if monochrome1 else 'm2'}_{len(tags)}.dcm"
    ds.save_as(path)
    return path


def test_monochrome1_loads_equal_to_the_monochrome2_original(tmp_path):
    m2 = read_image(_mr_12bit(tmp_path, False))
    m1 = read_image(_mr_12bit(tmp_path, True))
    assert m1.meta["photometric"] == "MONOCHROME1"
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))
    task = load_task("lung_xray")
    assert torch.equal(
        load_pair(_mr_12bit(tmp_path, True), task=task)["image"],
        load_pair(_mr_12bit(tmp_path, False), task=task)["image"],
    )


def test_rescale_slope_intercept_applied(tmp_path):
    plain = np.asarray(read_image(_mr_12bit(tmp_path, False)))
    scaled = np.asarray(read_image(_mr_12bit(tmp_path, False, RescaleSlope=2, RescaleIntercept=-100)))
    np.testing.assert_array_equal(scaled, 2 * plain - 100)


def test_spacing_from_imager_pixel_spacing_or_unknown(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.25]
    ds.save_as(tmp_path / "dx.dcm")
    img = read_image(tmp_path / "dx.dcm")
    assert img.meta["spacing"] == pytest.approx((0.2, 0.25)) and img.meta["spacing_known"]
    del ds.ImagerPixelSpacing
    ds.save_as(tmp_path / "nospacing.dcm")
    (s,) = load_samples([{"image": str(tmp_path / "nospacing.dcm")}], GREY)
    assert s["spacing"] == (1.0, 1.0) and s["spacing_known"] is False


def test_multiframe_dicom_gives_one_sample_per_frame(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    frames = np.stack([ds.pixel_array + 100 * k for k in range(3)]).astype(np.int16)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "mf.dcm")
    task = TaskConfig(name="mf", window="custom", width=8192, level=4096)
    samples = load_samples([{"image": str(tmp_path / "mf.dcm")}], task)
    assert [s["slice"] for s in samples] == [0, 1, 2]
    assert samples[0]["spacing"] == pytest.approx((0.3125, 0.3125)) and samples[0]["spacing_known"]
    for k, s in enumerate(samples):
        assert s["image"].shape == (1, 64, 64)
        np.testing.assert_allclose(s["image"][0].numpy() * 8192, frames[k], atol=0.01)


@pytest.mark.parametrize(("name", "problem"), [("MR_truncated.dcm", "truncated"), ("no_meta.dcm", "not a DICOM file")])
def test_broken_pydicom_files_are_refused_by_name(name, problem):
    with pytest.raises(ValueError, match=rf"{name}: {problem}"):
        read_image(get_testdata_file(name))


def test_dicom_without_pixel_data_is_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.Modality = "RTSTRUCT"
    ds.save_as(tmp_path / "rtstruct.dcm")
    with pytest.raises(ValueError, match=r"rtstruct\.dcm: DICOM without pixel data \(Modality RTSTRUCT"):
        read_image(tmp_path / "rtstruct.dcm")


def test_truncated_copy_of_a_good_file(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    with pytest.raises(ValueError, match=r"cut\.dcm: .*truncated"):
        read_image(tmp_path / "cut.dcm")
