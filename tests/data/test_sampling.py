from __future__ import annotations

import json
import logging

import pytest

from blosam_med.data import describe_draw, sample_shots, split_ab

POOL = [{"case": f"img{i:02d}", "slice": None, "image_path": f"/d/img{i:02d}.png"} for i in range(40)]
SLICES = [{"case": f"ct{v}", "slice": z, "image_path": f"/d/ct{v}.nii.gz"} for v in range(4) for z in range(10)]


def _ids(items):
    return [(s["case"], s["slice"]) for s in items]


def test_same_seed_same_draw_other_seed_other_draw():
    assert _ids(sample_shots(POOL, 4, seed=0)) == _ids(sample_shots(POOL, 4, seed=0))
    assert _ids(sample_shots(POOL, 4, seed=0)) != _ids(sample_shots(POOL, 4, seed=1))
    shots = sample_shots(POOL, 8, seed=3)
    assert len({s["case"] for s in shots}) == 8 and all(s in POOL for s in shots)


def test_draw_bounds():
    with pytest.raises(ValueError, match="pool of 40"):
        sample_shots(POOL, 41, seed=0)
    with pytest.raises(ValueError):
        sample_shots(POOL, 0, seed=0)
    assert len(sample_shots(POOL, 40, seed=0)) == 40


def test_slice_draws_spread_over_volumes():
    shots = sample_shots(SLICES, 4, seed=0)
    assert len({s["case"] for s in shots}) == 4


@pytest.mark.parametrize("seed", range(5))
def test_split_is_disjoint_complete_and_non_empty(seed):
    shots = sample_shots(POOL, 8, seed=seed)
    a, b = split_ab(shots, seed=seed)
    assert a and b and len(a) == len(b) == 4
    assert not set(_ids(a)) & set(_ids(b)) and sorted(_ids(a) + _ids(b)) == sorted(_ids(shots))
    assert _ids(split_ab(shots, seed=seed)[0]) == _ids(a)


def test_split_depends_on_the_seed():
    shots = sample_shots(POOL, 8, seed=0)
    assert len({tuple(_ids(split_ab(shots, seed=s)[0])) for s in range(6)}) > 1


def test_volume_slices_never_in_both_a_and_b():
    shots = [s for s in SLICES if s["slice"] in (2, 5)]  # 2 slices of each of 4 volumes
    for seed in range(10):
        a, b = split_ab(shots, seed=seed)
        assert a and b and not {s["case"] for s in a} & {s["case"] for s in b}


def test_single_volume_falls_back_to_per_slice_split(caplog):
    shots = [s for s in SLICES if s["case"] == "ct0"][:4]  # a user labelled 4 slices of one CT
    with caplog.at_level(logging.INFO, logger="blosam_med.data.sampling"):
        a, b = split_ab(shots, seed=0)
    assert len(a) == len(b) == 2 and not set(_ids(a)) & set(_ids(b))
    assert "splitting A/B per shot" in caplog.text


def test_split_needs_two_shots_and_a_valid_fraction():
    with pytest.raises(ValueError, match="at least 2 shots"):
        split_ab(POOL[:1], seed=0)
    with pytest.raises(ValueError, match="fraction_a"):
        split_ab(POOL[:4], seed=0, fraction_a=1.0)
    a, b = split_ab(POOL[:2], seed=0, fraction_a=0.9)
    assert len(a) == len(b) == 1


def test_folds_rotate_the_split_so_every_shot_has_a_turn_in_b():
    shots = sample_shots(POOL, 4, seed=3)
    a0, b0 = split_ab(shots, seed=3)
    assert split_ab(shots, seed=3, fold=0) == (a0, b0)
    a1, b1 = split_ab(shots, seed=3, fold=1)
    assert (_ids(a1), _ids(b1)) == (_ids(b0), _ids(a0))  # fraction 0.5: fold 1 swaps the levels
    turns = [split_ab(shots, seed=3, fraction_a=0.75, fold=k) for k in range(4)]
    assert all(len(a) == 3 and len(b) == 1 for a, b in turns)
    assert sorted(_ids(b)[0] for _, b in turns) == sorted(_ids(shots))
    assert _ids(split_ab(shots, seed=3, fraction_a=0.75, fold=4)[1]) == _ids(turns[0][1])  # K folds, then round again
    with pytest.raises(ValueError, match="fold"):
        split_ab(shots, seed=3, fold=-1)


def test_describe_draw_is_json_and_exact():
    a, b = split_ab(sample_shots(SLICES, 4, seed=0), seed=0)
    d = json.loads(json.dumps(describe_draw(a, b)))
    assert [(e["case"], e["slice"]) for e in d["A"]] == _ids(a)
    assert [(e["case"], e["slice"]) for e in d["B"]] == _ids(b)
    assert d["A"][0]["image_path"].startswith("/d/ct")
