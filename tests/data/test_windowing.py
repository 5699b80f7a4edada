from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from blosam_med.data import WINDOW_PRESETS, WindowIntensity, WindowIntensityd, window_range

# (a_min, a_max) = (L - W/2, L + W/2), computed by hand
HAND = {
    "lung": (-1350, 150),
    "mediastinum": (-160, 240),
    "abdomen": (-125, 225),
    "bone": (-500, 1300),
    "brain": (0, 80),
}


def test_presets_are_the_documented_width_level():
    assert WINDOW_PRESETS == {
        "lung": (1500, -600),
        "mediastinum": (400, 40),
        "abdomen": (350, 50),
        "bone": (1800, 400),
        "brain": (80, 40),
    }


@pytest.mark.parametrize("name", sorted(HAND))
def test_preset_maps_window_edges_and_level(name):
    lo, hi = HAND[name]
    assert window_range(name) == (lo, hi)
    level = (lo + hi) / 2
    x = torch.tensor([[lo - 1000.0, lo, lo + (hi - lo) / 4, level, hi, hi + 1000.0]])
    out = WindowIntensity(name)(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.25, 0.5, 1.0, 1.0]]), atol=1e-6)


def test_lung_window_hand_values():
    out = WindowIntensity("lung")(torch.tensor([[-600.0, -975.0, -1000.0, 0.0]]))
    # (-600 + 1350) / 1500 = 0.5; (-975 + 1350) / 1500 = 0.25; -1000 -> 350/1500; 0 HU -> 1350/1500 = 0.9
    assert torch.allclose(out, torch.tensor([[0.5, 0.25, 350 / 1500, 0.9]]), atol=1e-6)


def test_custom_width_level_and_override():
    out = WindowIntensity(width=200, level=100)(np.array([[0.0, 100.0, 150.0, 400.0]]))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.5, 0.75, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="width"):
        WindowIntensity("custom")


def test_percentile_clips_outliers_per_image():
    x = np.concatenate([np.arange(1000, dtype=np.float32), [1e6]]).reshape(1, 1, -1)
    out = WindowIntensity("percentile")(torch.as_tensor(x))
    lo, hi = np.percentile(x, 0.5), np.percentile(x, 99.5)
    expected = np.clip((x - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert float(out.max()) == 1.0 and float(out.min()) == 0.0
    assert 0.45 < float(out[0, 0, 500]) < 0.55  # the outlier did not squash the rest towards 0
    # per image: the same values scaled by 10 give the same result
    np.testing.assert_allclose(WindowIntensity("percentile")(torch.as_tensor(x * 10)).numpy(), out.numpy(), atol=1e-5)


def test_percentile_of_constant_image_is_zero_not_nan():
    out = WindowIntensity("percentile")(torch.full((1, 4, 4), 7.0))
    assert torch.equal(out, torch.zeros(1, 4, 4))


def test_clahe_raises_local_contrast_in_a_dim_region_and_stays_in_unit_range():
    rng = np.random.default_rng(0)
    x = np.full((1, 64, 64), 100.0, np.float32)
    x[0, :, 32:] = 900.0  # a bright half that sets the global range
    x[0, :, :32] += rng.normal(0, 5, (64, 32))  # faint texture in the dark half
    x[0, 0, 0], x[0, -1, -1] = x.min() - 50, x.max() + 50  # keep the percentile clip from cutting the texture
    plain = WindowIntensity("percentile")(torch.as_tensor(x))
    eq = WindowIntensity("clahe")(MetaTensor(torch.as_tensor(x), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0]))))
    assert isinstance(eq, MetaTensor) and eq.dtype == torch.float32 and eq.shape == plain.shape
    assert float(eq.min()) >= 0.0 and float(eq.max()) <= 1.0
    assert float(eq[0, :, :32].std()) > 3 * float(plain[0, :, :32].std())  # the dim half's texture is stretched
    stronger = WindowIntensity("clahe", clip_limit=0.05)(torch.as_tensor(x))
    assert float(stronger[0, :, :32].std()) > float(eq[0, :, :32].std())
    assert torch.equal(WindowIntensity("clahe")(torch.full((1, 8, 8), 3.0)), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="clip_limit"):
        WindowIntensity("clahe", clip_limit=0.0)


def test_rgb_divides_8bit_and_passes_unit_range():
    x = torch.tensor([[[0, 51, 255]]], dtype=torch.uint8)
    assert torch.allclose(WindowIntensity("rgb")(x), torch.tensor([[[0.0, 0.2, 1.0]]]))
    unit = torch.tensor([[[0.0, 0.3, 1.0]]])
    assert torch.equal(WindowIntensity("rgb")(unit), unit)
    with pytest.raises(ValueError, match="8-bit"):
        WindowIntensity("rgb")(torch.tensor([[[0.0, 4000.0]]]))


def test_none_and_minmax():
    unit = torch.tensor([[0.1, 0.9]])
    assert torch.equal(WindowIntensity("none")(unit), unit)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        WindowIntensity("none")(torch.tensor([[0.0, 2.0]]))
    out = WindowIntensity("minmax")(torch.tensor([[10.0, 15.0, 20.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.5, 1.0]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("window", ["lung", "percentile", "rgb"])
def test_nan_and_inf_are_refused(window, bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        WindowIntensity(window)(torch.tensor([[0.0, bad, 1.0]]))


def test_unknown_window_lists_the_choices():
    with pytest.raises(ValueError, match="lung.*percentile"):
        WindowIntensity("lungs")


def test_metatensor_keeps_geometry():
    img = MetaTensor(torch.tensor([[[-1350.0, 150.0]]]), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    out = WindowIntensity("lung")(img)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert torch.equal(out.affine, img.affine)


def test_dictionary_twin_matches_array_form():
    x = torch.linspace(-2000, 2000, 50).reshape(1, 5, 10)
    d = WindowIntensityd(("image", "other"), window="bone", allow_missing_keys=True)({"image": x, "label": x})
    assert torch.equal(d["image"], WindowIntensity("bone")(x))
    assert torch.equal(d["label"], x)  # untouched
    d = WindowIntensityd("image", width=100, level=0)({"image": torch.tensor([[-50.0, 0.0, 50.0]])})
    assert torch.allclose(d["image"], torch.tensor([[0.0, 0.5, 1.0]]))
    with pytest.raises(KeyError):
        WindowIntensityd("missing", window="lung")({"image": x})
