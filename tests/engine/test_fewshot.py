"""The few-shot training set: decoder-frame targets, seeded views (the bundle's chain), draws, A/B subsets, samplers."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from synthetic import write_png

from blosam_med.data import SampleKeys, load_task, task_preset_path
from blosam_med.engine.fewshot import (
    DrawMismatchError,
    EpochSampler,
    FewShotData,
    augmentation,
    augmented_views,
    draw_shot_samples,
    hash_case,
    label_target,
)
from blosam_med.model import EmbeddingCache
from blosam_med.workflow import bundle_config


def _sample(case: str = "a", slice_: int | None = None, h: int = 40, w: int = 52) -> dict:
    g = torch.Generator().manual_seed(len(case))
    label = torch.zeros(1, h, w, dtype=torch.uint8)
    label[:, 10:25, 12:30] = 1
    return {
        SampleKeys.IMAGE: torch.rand(1, h, w, generator=g),
        SampleKeys.LABEL: label,
        SampleKeys.CASE: case,
        SampleKeys.SLICE: slice_,
    }


def _items(root, n=6, empty=()):
    """Datalist entries of ``n`` 2D pairs; masks of the indices in ``empty`` have no foreground."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        mask = np.zeros((32, 40), np.uint8)
        if i not in empty:
            mask[8:20, 10:26] = 255
        img = write_png(root / "images" / f"c{i}.png", rng.integers(0, 256, (32, 40)))
        msk = write_png(root / "masks" / f"c{i}.png", mask)
        items.append({"image": str(img), "label": str(msk)})
    return items


def test_label_target_is_binary_in_the_decoder_frame_padded_bottom_right():
    label = torch.zeros(1, 40, 80, dtype=torch.uint8)
    label[:, :, :40] = 1  # left half
    y = label_target(label, 64)
    assert y.shape == (1, 64, 64) and y.dtype == torch.float32
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert y[:, 32:].sum() == 0  # 40x80 -> 32x64, the rows below are padding
    assert y[:, :32, :32].all() and not y[:, :32, 32:].any()


def test_views_are_seeded_by_view_case_and_slice_only():
    s = _sample("a", 3)
    views = augmented_views(s, 3, augmentation())
    assert len(views) == 4
    assert torch.equal(views[0][0], s[SampleKeys.IMAGE]) and torch.equal(views[0][1], s[SampleKeys.LABEL])
    for image, mask in views[1:]:
        assert image.shape == (1, 40, 52) and image.min() >= 0 and image.max() <= 1
        assert mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}
    assert not torch.equal(views[1][0], views[2][0])
    again = augmented_views(s, 3, augmentation())  # another chain object, the same views
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(views, again, strict=True))
    other_slice = augmented_views(_sample("a", 4), 1, augmentation())
    assert not torch.equal(views[1][0], other_slice[1][0])
    shared = augmentation()  # one chain reused across shots (FewShotData) gives each shot its own views
    augmented_views(_sample("b", 0), 2, shared)
    reused = augmented_views(s, 3, shared)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(views, reused, strict=True))


def test_hash_case_is_stable_and_tells_slices_apart():
    assert hash_case({"case": "a", "slice": 1}) == hash_case({"case": "a", "slice": 1, "image": None})
    assert hash_case({"case": "a", "slice": 1}) != hash_case({"case": "a", "slice": 2})
    # the seed of cached views: SHA-256 of "case:slice", so it never depends on Python's hash seed
    assert hash_case({"case": "a", "slice": None}) == int.from_bytes(hashlib.sha256(b"a:None").digest()[:4], "little")


def test_views_without_erasing_are_those_of_the_chain_without_the_eraser():
    """The eraser comes last and draws from its own generator: at probability 0 the cached views (and their
    embeddings' keys) of every earlier run are unchanged; at 1 the views lose label pixels."""
    from monai.transforms import Compose

    s = _sample("polyp", None)
    chain = augmentation()
    before = augmented_views(s, 4, Compose(list(chain.transforms[:-1])))
    for (xi, xl), (yi, yl) in zip(augmented_views(s, 4, chain), before, strict=True):
        assert torch.equal(xi, yi) and torch.equal(xl, yl)
    erased = augmented_views(s, 4, augmentation(erase_prob=1.0))
    assert all(int(e[1].sum()) < int(b[1].sum()) for e, b in zip(erased[1:], before[1:], strict=True))


def test_bundle_view_augmentation_equals_the_builder():
    """train.yaml declares the chain; its views (hence the cached embeddings' keys) equal the Python builder's."""
    parser = ConfigParser()
    parser.read_config([str(bundle_config("train.yaml")), str(task_preset_path("lung_xray"))])
    declared = parser.get_parsed_content("view_augmentation")
    assert [type(t) for t in declared.transforms] == [type(t) for t in augmentation().transforms]
    assert parser.get("fewshot#view_augmentation") == "@view_augmentation"
    s = _sample("polyp", None)
    default = augmented_views(s, 4, augmentation())
    for (xi, xl), (yi, yl) in zip(augmented_views(s, 4, declared), default, strict=True):
        assert torch.equal(xi, yi) and torch.equal(xl, yl)
    # the polyp preset's strength keys reach the chain: its views are the builder's strong ones, not the default's
    parser = ConfigParser()
    parser.read_config([str(bundle_config("train.yaml")), str(task_preset_path("polyp"))])
    assert (parser["views"], parser["view_rotate_deg"], parser["view_scale"], parser["view_translate"]) == (
        8,
        180.0,
        0.25,
        0.1,
    )
    strong = parser.get_parsed_content("view_augmentation")
    built = augmented_views(s, 4, augmentation(rotate_deg=180.0, scale=0.25, translate=0.1))
    for (xi, xl), (yi, yl) in zip(augmented_views(s, 4, strong), built, strict=True):
        assert torch.equal(xi, yi) and torch.equal(xl, yl)
    assert all(not torch.equal(x[0], y[0]) for x, y in zip(built[1:], default[1:], strict=True))


def test_draw_refuses_a_shot_without_foreground(tmp_path):
    task = load_task("lung_xray")
    items = _items(tmp_path, n=3, empty=(0, 1, 2))
    with pytest.raises(ValueError, match="without a labelled structure"):
        draw_shot_samples(items, task, shots=2, seed=0)


def test_draw_is_seeded(tmp_path):
    task = load_task("lung_xray")
    items = _items(tmp_path, n=6)
    first = [s[SampleKeys.CASE] for s in draw_shot_samples(items, task, shots=3, seed=1)]
    assert len(set(first)) == 3
    assert first == [s[SampleKeys.CASE] for s in draw_shot_samples(items, task, shots=3, seed=1)]


def _fewshot(items, tiny_backbone, **kwargs):
    options = {"shots": 4, "seed": 0, "views": 1, "fraction_a": 0.5, "bilevel": True, "roles": "fixed"}
    options.update(kwargs)
    return FewShotData(items, load_task("lung_xray"), EmbeddingCache(tiny_backbone, None, progress=False), **options)


def test_subsets_are_disjoint_cached_views_and_validation_is_b(tmp_path, tiny_backbone):
    data = _fewshot(_items(tmp_path), tiny_backbone)
    cases_a = {d[SampleKeys.CASE] for d in data.subset_a.data}
    cases_b = {d[SampleKeys.CASE] for d in data.subset_b.data}
    assert len(cases_a) == len(cases_b) == 2 and not cases_a & cases_b
    assert len(data.subset_a) == 4  # 2 shots x (original + 1 view)
    item = data.subset_a.data[0]
    assert item[SampleKeys.IMAGE].shape == tiny_backbone.embedding_shape
    assert item[SampleKeys.LABEL].shape == (1, 64, 64)  # 4 x the 16x16 embedding
    assert item[SampleKeys.SLICE] == -1  # 2D images have no slice
    assert {d[SampleKeys.VIEW] for d in data.validation.data} == {0}
    assert {d[SampleKeys.CASE] for d in data.validation.data} == cases_b
    assert {d["case"] for d in data.draw["A"]} == cases_a and data.draw["views"] == 1


def test_ab_fold_swaps_the_subsets_and_is_recorded(tmp_path, tiny_backbone):
    items = _items(tmp_path)
    plain, turned = _fewshot(items, tiny_backbone, views=0), _fewshot(items, tiny_backbone, views=0, ab_fold=1)
    assert [d["case"] for d in turned.draw["A"]] == [d["case"] for d in plain.draw["B"]]
    assert [d["case"] for d in turned.draw["B"]] == [d["case"] for d in plain.draw["A"]]
    assert turned.draw["ab_fold"] == 1 and "ab_fold" not in plain.draw


def test_single_level_puts_every_shot_in_a_and_refuses_an_empty_loader(tmp_path, tiny_backbone):
    data = _fewshot(_items(tmp_path), tiny_backbone, bilevel=False, views=0, roles="alternate")
    assert len(data.subset_a) == 4 and len(data.subset_b) == 0
    assert data.roles == "fixed"  # roles only matter when bi-level
    with pytest.raises(ValueError, match="subset b is empty"):
        data.loader("b", 2)
    batches = list(data.loader("a", 3, num_samples=6))
    assert [len(b[SampleKeys.CASE]) for b in batches] == [3, 3]


def test_write_draw_checks_a_resumed_run(tmp_path, tiny_backbone):
    items = _items(tmp_path / "data")
    path = _fewshot(items, tiny_backbone, views=0).write_draw(tmp_path / "draw.json")
    assert json.loads(path.read_text())["seed"] == 0
    _fewshot(items, tiny_backbone, views=0).write_draw(path, resume=True)  # the same draw: accepted
    with pytest.raises(DrawMismatchError, match="recorded draw differs"):
        _fewshot(items, tiny_backbone, views=0, seed=5).write_draw(path, resume=True)


def test_epoch_sampler_repeats_an_epoch_and_changes_with_it():
    sampler = EpochSampler(10, 20, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 20 and all(0 <= i < 10 for i in first)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
