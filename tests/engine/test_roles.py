"""Alternating A/B roles: every shot trains both levels, never both in one iteration."""

from __future__ import annotations

import json

from blosam_med.cli import main
from blosam_med.engine.fewshot import AlternatingSampler


def _batches(sampler, bs):
    idx = list(sampler)
    return [idx[i : i + bs] for i in range(0, len(idx), bs)]


def test_alternating_sampler_complements():
    lower = AlternatingSampler(3, 2, num_samples=8, batch_size=2, first=0, seed=1)
    upper = AlternatingSampler(3, 2, num_samples=8, batch_size=2, first=1, seed=2)
    for lo, up in zip(_batches(lower, 2), _batches(upper, 2), strict=True):
        sides = {all(i < 3 for i in lo), all(i < 3 for i in up)}
        assert sides == {True, False}  # one loader on A, the other on B
    assert [all(i < 3 for i in b) for b in _batches(lower, 2)] == [True, False, True, False]
    first = list(lower)
    assert list(lower) == first  # seeded by (seed, epoch)
    lower.set_epoch(1)
    assert len(list(lower)) == 8


def test_bundle_trains_with_alternating_roles(synthetic_2d, tmp_path):
    out = tmp_path / "alt"
    assert (
        main(
            [
                "train",
                "--backbone",
                "tiny",
                "--task",
                "lung_xray",
                "--device",
                "cpu",
                "--data",
                str(synthetic_2d),
                "--out",
                str(out),
                "--shots",
                "2",
                "--iterations",
                "4",
                "--method",
                "blosam",
                "--cross-fit",
                "1",
                "--roles",
                "alternate",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["draw"]["roles"] == "alternate" and metrics["params"]["roles"] == "alternate"
    assert set(metrics["final_loss"]) == {"loss_lower", "loss_upper"}
