"""Pillow images in any mode read as the picture they show (palette, CMYK, YCbCr, LAB...), multi-frame files noted."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from blosam_med.data import TaskConfig, load_pair, read_image
from blosam_med.data.raster import convert_mode, frames_note, raster_frames

GREY = TaskConfig(name="grey", window="percentile", channels=1)
RGB = TaskConfig(name="rgb", window="rgb", channels=3)


def _grey(h: int = 12, w: int = 17) -> np.ndarray:
    """A grey image whose bright pixels are not the high palette indices (the bug read indices as grey)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w)).astype(np.uint8)


def _colours(h: int = 12, w: int = 17) -> np.ndarray:
    """An RGB image of 6 colours, so that a palette holds it exactly."""
    palette = np.array([[10, 200, 30], [250, 0, 0], [0, 0, 255], [128, 128, 128], [40, 90, 160], [255, 255, 0]])
    return palette[np.random.default_rng(1).integers(0, len(palette), (h, w))].astype(np.uint8)


def _array(path) -> np.ndarray:
    return np.asarray(read_image(path))


def test_palette_png_with_a_scrambled_grey_palette_reads_as_the_grey_original(tmp_path):
    grey = _grey()
    order = np.random.default_rng(2).permutation(256)  # index i shows grey level order[i]
    pal = Image.fromarray(np.argsort(order)[grey].astype(np.uint8), mode="P")
    pal.putpalette(np.repeat(order, 3).astype(np.uint8).tobytes())
    Image.fromarray(grey).save(tmp_path / "grey.png")
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    np.testing.assert_array_equal(_array(tmp_path / "pal.png"), _array(tmp_path / "grey.png"))
    assert torch.equal(
        load_pair(tmp_path / "pal.png", task=GREY)["image"], load_pair(tmp_path / "grey.png", task=GREY)["image"]
    )


def test_colour_palette_png_reads_as_the_rgb_original(tmp_path):
    rgb = _colours()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).quantize(8).save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    np.testing.assert_array_equal(_array(tmp_path / "pal.png"), _array(tmp_path / "rgb.png"))
    for task in (GREY, RGB):
        assert torch.equal(
            load_pair(tmp_path / "pal.png", task=task)["image"], load_pair(tmp_path / "rgb.png", task=task)["image"]
        )


def test_cmyk_reads_as_the_rgb_original(tmp_path):
    rgb = _colours()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")  # lossless: exactly the original
    np.testing.assert_array_equal(_array(tmp_path / "cmyk.tif"), _array(tmp_path / "rgb.png"))
    assert torch.equal(
        load_pair(tmp_path / "cmyk.tif", task=GREY)["image"], load_pair(tmp_path / "rgb.png", task=GREY)["image"]
    )
    smooth = np.stack([*np.meshgrid(np.linspace(0, 255, 48), np.linspace(0, 255, 32)), np.full((32, 48), 90.0)], -1)
    Image.fromarray(smooth.astype(np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    jpeg = _array(tmp_path / "cmyk.jpg")
    assert jpeg.shape == (3, 32, 48)  # not 4 ink channels read as RGB + alpha
    np.testing.assert_array_equal(
        jpeg, np.moveaxis(np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")), -1, 0)
    )
    assert np.abs(jpeg - np.moveaxis(smooth, -1, 0)).mean() < 3  # the original, up to JPEG loss


@pytest.mark.parametrize(("mode", "tolerance"), [("YCbCr", 3), ("HSV", 3), ("LAB", 25), ("RGBA", 0), ("RGBX", 0)])
def test_other_colour_modes_read_as_rgb(mode, tolerance):
    image = Image.fromarray(_colours()).convert(mode)
    out = convert_mode(image)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image.convert("RGB")))
    assert np.abs(np.asarray(out).astype(int) - _colours()).max() <= tolerance  # 8-bit LAB loses a little
    if mode in ("YCbCr", "HSV", "LAB"):  # its raw channels are not the picture's RGB
        assert np.abs(np.asarray(image)[..., :3].astype(int) - _colours()).max() > 50


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("1", "L"), ("LA", "L"), ("La", "L"), ("PA", "RGB"), ("I;16B", "I"), ("I;16", "I;16"), ("I", "I"), ("F", "F")],
)
def test_grey_modes_keep_their_values(mode, expected):
    grey = Image.fromarray(_grey())
    if mode == "1":
        image, want = grey.convert("1", dither=Image.Dither.NONE), (_grey() >= 128) * 255
    elif mode in ("LA", "La"):
        image, want = grey.convert("LA"), _grey()
        image = image.convert("La") if mode == "La" else image
    elif mode == "PA":
        image, want = Image.fromarray(_colours()).convert("RGBA").convert("PA"), _colours()
    else:
        want = _grey().astype(np.int64) * 257  # 16-bit values: precision kept, no clipping to 8 bits
        if mode == "I;16B":  # big-endian 16-bit (TIFFs saved on such machines)
            image = Image.frombytes(mode, (17, 12), want.astype(">u2").tobytes())
        elif mode == "F":
            image = Image.fromarray(want.astype(np.float32))
        else:
            image = Image.fromarray(want.astype(np.uint16)).convert(mode)
    out = convert_mode(image)
    assert out.mode == expected
    np.testing.assert_array_equal(np.asarray(out).astype(np.int64), want)


def test_sixteen_bit_png_keeps_its_precision(tmp_path):
    values = np.arange(12 * 17, dtype=np.uint16).reshape(12, 17) * 300  # 0..60900: not 8-bit levels
    Image.fromarray(values).save(tmp_path / "16.png")
    np.testing.assert_array_equal(_array(tmp_path / "16.png")[0], values)


def test_palette_masks_keep_their_indices(tmp_path):
    labels = np.zeros((12, 17), np.uint8)
    labels[2:6, 3:9] = 1
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC colours: index 1 is dark red
    mask.save(tmp_path / "mask.png")
    Image.fromarray(_grey()).save(tmp_path / "img.png")
    pair = load_pair(tmp_path / "img.png", tmp_path / "mask.png", task=GREY)
    assert torch.equal(pair["label"][0], torch.as_tensor(labels))


@pytest.mark.parametrize(
    ("name", "note"), [("a.gif", "frames read (animated GIF)"), ("a.tif", "pages read (multi-page TIFF)")]
)
def test_multi_frame_images_read_their_first_frame_and_say_so(tmp_path, caplog, name, note):
    frames = [Image.fromarray(_grey()), Image.fromarray(255 - _grey()), Image.fromarray(_grey() // 2)]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    Image.fromarray(_grey()).save(tmp_path / "first.png")
    assert raster_frames(tmp_path / name) == 3 and frames_note(tmp_path / name) == f"first of 3 {note}"
    with caplog.at_level(logging.WARNING):
        img = read_image(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(img), _array(tmp_path / "first.png"))
    assert img.meta["frames_in_file"] == 3
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [f"{tmp_path / name}: first of 3 {note}; save each frame as its own image to segment the others"]
    frames[0].save(tmp_path / "one.gif")
    assert raster_frames(tmp_path / "one.gif") == 1 and frames_note(tmp_path / "one.gif") is None
