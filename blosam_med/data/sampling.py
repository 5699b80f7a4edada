"""Seeded few-shot draws, the disjoint A/B split of BLO-SAM, and a JSON record of both.

A shot is one pool item: a 2D image, one annotated slice, or a whole volume (a datalist entry). Items that share
``group_key`` (slices of one volume) form a group: draws spread over groups first, and the A/B split keeps groups
whole, so that one volume never feeds both levels of the optimisation.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from blosam_med.data.keys import SampleKeys

__all__ = ["sample_shots", "split_ab", "describe_draw"]

logger = logging.getLogger(__name__)


def _groups(items: Sequence[dict], group_key: str) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        key = item.get(group_key) if isinstance(item, dict) else None
        groups.setdefault(("item", i) if key is None else key, []).append(i)
    return groups


def sample_shots(pool: Sequence[dict], k: int, seed: int, group_key: str = SampleKeys.CASE) -> list[dict]:
    """Draw ``k`` shots from ``pool`` without replacement; the same ``seed`` and pool give the same shots.

    Groups (items sharing ``group_key``) are visited in a seeded order, one item per group per round, so k slices
    come from k different volumes when the pool has that many.

    Args:
        pool: the training items (datalist entries, or 2D samples such as annotated slices).
        k: number of shots, 1 <= k <= len(pool).
        seed: seed of the draw.
        group_key: item key naming its group (``case``).

    Returns:
        the drawn items, in pool order.

    Raises:
        ValueError: ``k`` out of range (the message gives the pool size).
    """
    if not 1 <= k <= len(pool):
        raise ValueError(f"cannot draw {k} shots from a training pool of {len(pool)} items (need 1 <= k <= pool size)")
    rng = random.Random(f"blosam-shots-{seed}")
    groups = [list(g) for g in _groups(pool, group_key).values()]
    rng.shuffle(groups)
    for g in groups:
        rng.shuffle(g)
    chosen: list[int] = []
    while len(chosen) < k:
        for g in groups:
            if g and len(chosen) < k:
                chosen.append(g.pop())
    return [pool[i] for i in sorted(chosen)]


def split_ab(
    shots: Sequence[dict],
    seed: int,
    fraction_a: float = 0.5,
    group_key: str = SampleKeys.CASE,
    fold: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Split shots into disjoint, non-empty subsets A (lower level: LoRA) and B (upper level: prompt).

    Shots sharing ``group_key`` stay on one side. When every shot comes from one group (a user who labelled 4 slices
    of one CT) the split is per shot, and an INFO message says so.

    Args:
        shots: the drawn shots, at least 2.
        seed: seed of the split.
        fraction_a: share of the groups (or shots) in A; A and B each get at least one.
        group_key: item key naming its group.
        fold: cross-fitting turn: the shuffled groups are rotated by ``fold * |B|`` before the first ``|A|`` go to
            A, so folds ``0 .. K-1`` (``K`` = groups / ``|B|``, rounded up) give every group a turn in B; fold 0 is
            the plain split. With ``fraction_a=0.5`` and 4 shots, fold 1 swaps A and B.

    Returns:
        (A, B), each in the order of ``shots``; together exactly the shots.

    Raises:
        ValueError: fewer than 2 shots, ``fraction_a`` outside (0, 1), or a negative ``fold``.
    """
    if len(shots) < 2:
        raise ValueError(f"bi-level training needs at least 2 shots to split into A and B, got {len(shots)}")
    if not 0 < fraction_a < 1:
        raise ValueError(f"fraction_a must be in (0, 1), got {fraction_a}")
    if fold < 0:
        raise ValueError(f"the A/B fold is a non-negative turn, got {fold}")
    units = [list(g) for g in _groups(shots, group_key).values()]
    if len(units) < 2:
        logger.info(
            "all %d shots share %s '%s'; splitting A/B per shot, so slices of one volume are in both A and B",
            len(shots),
            group_key,
            shots[0].get(group_key),
        )
        units = [[i] for i in range(len(shots))]
    random.Random(f"blosam-ab-{seed}").shuffle(units)
    n_a = min(len(units) - 1, max(1, round(fraction_a * len(units))))
    turn = (fold * (len(units) - n_a)) % len(units)
    units = units[turn:] + units[:turn]
    in_a = {i for u in units[:n_a] for i in u}
    return [s for i, s in enumerate(shots) if i in in_a], [s for i, s in enumerate(shots) if i not in in_a]


def _entry(s: dict) -> dict[str, Any]:
    image = s.get(SampleKeys.IMAGE)  # a datalist entry's image path, or a loaded sample's pixels
    return {
        SampleKeys.CASE: s.get(SampleKeys.CASE),
        SampleKeys.SLICE: None if s.get(SampleKeys.SLICE) is None else int(s[SampleKeys.SLICE]),
        SampleKeys.IMAGE_PATH: str(s.get(SampleKeys.IMAGE_PATH) or (image if isinstance(image, str) else "")),
    }


def describe_draw(a: Sequence[dict], b: Sequence[dict]) -> dict[str, list[dict[str, Any]]]:
    """The draw as JSON-able data: ``case``, ``slice`` and ``image_path`` of every shot in A and in B."""
    return {"A": [_entry(s) for s in a], "B": [_entry(s) for s in b]}
