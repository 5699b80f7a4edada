"""RandEraseForegroundd: the label erased in a band of columns, the image there filled from its surroundings."""

from __future__ import annotations

import pytest
import torch

from blosam_med.data.augment import RandEraseForegroundd


def _pair(h: int = 48, w: int = 96) -> dict[str, torch.Tensor]:
    """Bright 'teeth' (0.9) in a row of blocks on a dark textured background (about 0.2)."""
    g = torch.Generator().manual_seed(0)
    image = 0.2 + 0.02 * torch.rand(1, h, w, generator=g)
    label = torch.zeros(1, h, w, dtype=torch.uint8)
    for x0 in range(10, 86, 12):
        label[:, 16:32, x0 : x0 + 9] = 1
    image[label.bool()] = 0.9
    return {"image": image, "label": label}


def test_erases_a_band_of_the_label_and_fills_it_from_the_background():
    data = _pair()
    t = RandEraseForegroundd(prob=1.0, width=(0.3, 0.3), sigma=6.0, margin=2)
    t.set_random_state(3)
    out = t({k: v.clone() for k, v in data.items()})
    gone = data["label"].bool() & ~out["label"].bool()
    assert out["label"].dtype == torch.uint8 and not (out["label"].bool() & ~data["label"].bool()).any()
    columns = torch.nonzero(gone.any(dim=1)[0]).flatten()
    # one band of about 30 % of the label's 81-column extent (24 columns); the label outside it is untouched
    assert 20 <= int(columns.max() - columns.min()) + 1 <= 26
    outside = torch.ones_like(gone)
    outside[..., int(columns.min()) : int(columns.max()) + 1] = False
    assert torch.equal(out["label"][outside], data["label"][outside])
    # erased teeth take the background's intensity, not their own
    assert out["image"][gone].max() < 0.3 and out["image"][gone].min() > 0.15
    assert torch.equal(out["image"][outside], data["image"][outside])


def test_probability_zero_and_an_empty_label_leave_the_view_as_it_is():
    data = _pair()
    t = RandEraseForegroundd(prob=0.0)
    out = t({k: v.clone() for k, v in data.items()})
    assert torch.equal(out["image"], data["image"]) and torch.equal(out["label"], data["label"])
    empty = {"image": data["image"].clone(), "label": torch.zeros_like(data["label"])}
    out = RandEraseForegroundd(prob=1.0)(empty)
    assert torch.equal(out["image"], data["image"]) and not out["label"].any()


def test_seeded_views_repeat_and_differ_by_seed():
    data = _pair()
    t = RandEraseForegroundd(prob=1.0)
    views = []
    for seed in (1, 1, 2):
        t.set_random_state(seed)
        views.append(t({k: v.clone() for k, v in data.items()})["label"])
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])


@pytest.mark.parametrize("width", [(0.0, 0.5), (0.6, 0.4), (0.2, 1.5)])
def test_a_width_outside_0_1_is_refused(width):
    with pytest.raises(ValueError, match="width"):
        RandEraseForegroundd(prob=1.0, width=width)


def test_a_label_that_is_not_2d_is_refused_with_its_shape():
    data = {"image": torch.zeros(1, 4, 8, 8), "label": torch.ones(1, 4, 8, 8)}
    with pytest.raises(ValueError, match=r"'label' must be a channel-first 2D label.*\(1, 4, 8, 8\)"):
        RandEraseForegroundd(prob=1.0)(data)
