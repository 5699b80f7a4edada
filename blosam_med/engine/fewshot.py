"""The few-shot training set: k-shot draw, disjoint A/B split, augmented views, cached embeddings."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
)
from torch.utils.data import DataLoader, Sampler

from blosam_med.data import TaskConfig, case_id, describe_draw, load_samples, sample_shots, split_ab
from blosam_med.data.augment import RandEraseForegroundd
from blosam_med.data.keys import Sample, SampleKeys
from blosam_med.io import write_json
from blosam_med.model.embedding_cache import EmbeddingCache
from blosam_med.model.preprocess import resized_shape
from blosam_med.variants import check_name

__all__ = [
    "FewShotData",
    "EpochSampler",
    "AlternatingSampler",
    "draw_shot_samples",
    "label_target",
    "augmentation",
    "augmented_views",
    "hash_case",
    "DrawMismatchError",
    "training_seed",
]

logger = logging.getLogger(__name__)


class DrawMismatchError(ValueError):
    """A resumed run would train on a different draw than the one recorded in its output folder."""


def label_target(label: torch.Tensor, size: int) -> torch.Tensor:
    """A (1, H, W) mask in the decoder's low-resolution frame: longest side to ``size``, padded bottom/right.

    Matches :func:`blosam_med.model.preprocess_image` geometry, so the loss compares like with like.
    """
    h, w = resized_shape(label.shape[-2], label.shape[-1], size)
    y = F.interpolate(label[None].float(), size=(h, w), mode="area")[0]
    return F.pad((y > 0.5).float(), (0, size - w, 0, size - h))


def augmentation(
    rotate_deg: float = 10.0, scale: float = 0.1, translate: float = 0.05, erase_prob: float = 0.0
) -> Compose:
    """Views for few-shot training: a left-right flip, a random rotation, scaling and shift, mild intensity changes,
    and (``erase_prob`` > 0) the label erased in a band of columns.

    Args:
        rotate_deg: rotations drawn from ``[-rotate_deg, rotate_deg]`` degrees (180: any orientation).
        scale: zoom factors drawn from ``[1 - scale, 1 + scale]``.
        translate: shifts drawn up to this fraction of the image size.
        erase_prob: probability of :class:`blosam_med.data.augment.RandEraseForegroundd` per view. It comes last in
            the chain and draws from its own generator, so at 0 every view is the one the chain made without it.

    The bundle's train.yaml declares the same chain as ``view_augmentation`` with ``view_rotate_deg``, ``view_scale``
    and ``view_translate`` (tests/engine/test_fewshot.py checks that both give identical views); this builder serves
    callers outside the bundle (the U-Net baseline) and :class:`FewShotData` when it is given no chain.
    """
    return Compose(
        [
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
            RandAffined(
                keys=("image", "label"),
                prob=1.0,
                rotate_range=(math.radians(rotate_deg),),
                scale_range=(scale, scale),
                translate_range=(translate, translate),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandAdjustContrastd(keys="image", prob=0.5, gamma=(0.8, 1.25)),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandEraseForegroundd(keys=("image", "label"), prob=erase_prob),
        ]
    )


def augmented_views(sample: Sample, views: int, aug: Compose) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """View 0 is the sample itself; views 1..K are ``aug`` (a dictionary transform chain on ``image`` and
    ``label``), reseeded per view.

    View ``k`` of an image depends on ``(k, case, slice)`` and the chain only, not on the draw's seed nor on the other
    shots, so its embedding is encoded once and reused by every draw (and every run) that picks the image. The
    embedding cache keys a view by its pixels, so another chain encodes new entries instead of reusing stale ones.

    Returns:
        per view the image, float32 (C, H, W) in [0, 1], and the mask, uint8 (1, H, W) 0/1.
    """
    out = [(torch.as_tensor(sample[SampleKeys.IMAGE]).float(), torch.as_tensor(sample[SampleKeys.LABEL]))]
    for k in range(1, views + 1):
        aug.set_random_state(seed=int(np.random.SeedSequence([k, hash_case(sample)]).generate_state(1)[0]))
        d = aug({SampleKeys.IMAGE: out[0][0].clone(), SampleKeys.LABEL: out[0][1].float()})
        image, label = torch.as_tensor(d[SampleKeys.IMAGE]), torch.as_tensor(d[SampleKeys.LABEL])
        out.append((image.clamp(0, 1).float(), (label > 0.5).to(torch.uint8)))
    return out


def hash_case(sample: dict) -> int:
    """A stable integer for a sample (case and slice), independent of Python's hash seed."""
    key = f"{sample.get(SampleKeys.CASE)}:{sample.get(SampleKeys.SLICE)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


class EpochSampler(Sampler[int]):
    """Indices drawn with replacement from a generator seeded by (seed, epoch).

    The trainer calls ``set_epoch`` at every epoch start, so a resumed run draws the same batches as one that was
    never interrupted.
    """

    def __init__(self, size: int, num_samples: int, seed: int = 0) -> None:
        self.size, self.num_samples, self.seed, self.epoch = size, num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def generator(self) -> torch.Generator:
        """The generator of the current epoch."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        return iter(torch.randint(self.size, (self.num_samples,), generator=self.generator()).tolist())


class AlternatingSampler(EpochSampler):
    """Batches drawn with replacement alternately from two index ranges, ``[0, n_a)`` and ``[n_a, n_a + n_b)``.

    Batch ``j`` of an epoch comes from range ``(j + first) % 2``; a second sampler with the other ``first`` gives the
    complementary batch, so the two loaders of a bi-level step never draw from the same subset in one iteration.
    Seeded by (seed, epoch) like :class:`EpochSampler`.
    """

    def __init__(self, n_a: int, n_b: int, num_samples: int, batch_size: int, first: int = 0, seed: int = 0) -> None:
        if n_a < 1 or n_b < 1:
            raise ValueError(f"both subsets need at least one item, got {n_a} and {n_b}")
        super().__init__(n_a + n_b, num_samples, seed)
        self.n, self.batch_size, self.first = (n_a, n_b), batch_size, first

    def __iter__(self):
        g = self.generator()
        out: list[int] = []
        for j in range(-(-self.num_samples // self.batch_size)):
            side = (j + self.first) % 2
            size = min(self.batch_size, self.num_samples - len(out))
            offset = 0 if side == 0 else self.n[0]
            out.extend((offset + torch.randint(self.n[side], (size,), generator=g)).tolist())
        return iter(out)


def draw_shot_samples(
    items: Sequence[dict], task: TaskConfig, shots: int, seed: int, base_dir: str | Path | None = None
) -> list[Sample]:
    """The ``shots`` 2D training samples of a seeded draw (images, or annotated slices of volumes).

    Every method of a study that uses this draw (BLO-SAM, single-level, a U-Net) trains on the same samples.

    Raises:
        ValueError: a drawn shot has no labelled structure, or its mask has several labels for a one-label task
            (the message names the files).
    """
    pool = [{**it, SampleKeys.CASE: it.get(SampleKeys.CASE) or case_id(it[SampleKeys.IMAGE])} for it in items]
    if task.spatial_dims == 3 and task.shot_unit == "slice":
        slices = load_samples(pool, task, base_dir=base_dir, foreground_only=True, check_labels=True)
        shot_samples = sample_shots(slices, shots, seed)
    else:
        chosen = sample_shots(pool, shots, seed)
        shot_samples = load_samples(chosen, task, base_dir=base_dir, check_labels=True)
    empty = [s[SampleKeys.IMAGE_PATH] for s in shot_samples if not _labelled(s)]
    if empty:
        raise ValueError(
            f"{', '.join(empty[:5])}: training shot(s) without a labelled structure (empty or missing "
            "mask); label the structure or remove the image from the training split"
        )
    return shot_samples


def _labelled(sample: Sample) -> bool:
    return SampleKeys.LABEL in sample and bool(sample[SampleKeys.LABEL].any())


def training_seed(seed: int, ab_fold: int, bilevel: bool) -> int:
    """The seed of a run's training randomness (initialisation, batch order). A bi-level run's folds differ by
    their A/B split, so they keep ``seed``; single-level has no split to turn, so fold ``ab_fold`` of a cross-fit
    reseeds the training instead (a seed ensemble). The shots and views depend on ``seed`` only."""
    return seed if bilevel or not ab_fold else seed + 7919 * int(ab_fold)


class FewShotData:
    """The shots a run trains on, split into subsets A and B, with every view's embedding cached.

    Args:
        items: training datalist entries (``{"image": path, "label": path}``), the pool shots are drawn from.
        task: the task preset (windowing, channels, labels, slicing).
        cache: embedding cache of the backbone being trained.
        shots: number of shots (images, or slices / volumes for 3D tasks as ``task.shot_unit`` says).
        seed: seed of the draw, the split and the augmentations.
        views: augmented views per shot besides the original (0 = none).
        view_augmentation: the dictionary transform chain (on ``image`` and ``label``) that makes the views, as the
            bundle's ``view_augmentation`` declares it; ``None``: :func:`augmentation`.
        fraction_a: share of the shots in subset A.
        ab_fold: cross-fitting turn of the A/B split (:func:`blosam_med.data.split_ab`; 0: the plain split); for
            single-level, the member of a seed ensemble (:func:`training_seed`).
        bilevel: split into A and B; ``False`` puts every shot in A (single-level baseline).
        roles: ``fixed`` or ``alternate`` (see :data:`blosam_med.engine.variants.ROLES`); bi-level only.
        base_dir: folder the datalist paths are relative to.
    """

    def __init__(
        self,
        items: Sequence[dict],
        task: TaskConfig,
        cache: EmbeddingCache,
        *,
        shots: int,
        seed: int,
        views: int,
        fraction_a: float,
        bilevel: bool,
        ab_fold: int = 0,
        roles: str,
        view_augmentation: Compose | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        check_name("roles", roles)
        self.task, self.cache, self.seed, self.views = task, cache, seed, views
        self.training_seed = training_seed(seed, ab_fold, bilevel)
        self.view_augmentation = view_augmentation if view_augmentation is not None else augmentation()
        self.roles = roles if bilevel else "fixed"
        self.target_size = 4 * cache.backbone.embedding_shape[-1]
        shot_samples = draw_shot_samples(items, task, shots, seed, base_dir)
        if bilevel:
            a, b = split_ab(shot_samples, seed, fraction_a=fraction_a, fold=ab_fold)
        else:
            a, b = list(shot_samples), []
        self.draw: dict[str, Any] = dict(describe_draw(a, b))
        self.draw.update(shots=shots, seed=seed, views=views, bilevel=bilevel, task=task.name)
        if self.roles != "fixed":
            self.draw["roles"] = self.roles
        if ab_fold:
            self.draw["ab_fold" if bilevel else "member"] = ab_fold
        self.subset_a = Dataset(self._cached(a, "A"))
        self.subset_b = Dataset(self._cached(b, "B"))
        self.validation = Dataset(
            [d for d in (self.subset_b.data if bilevel else self.subset_a.data) if d[SampleKeys.VIEW] == 0]
        )

    def _cached(self, samples: list[Sample], name: str) -> list[Sample]:
        pairs = [
            (s, v, img, lab)
            for s in samples
            for v, (img, lab) in enumerate(augmented_views(s, self.views, self.view_augmentation))
        ]
        if not pairs:
            return []
        emb = self.cache.embed([img for _, _, img, _ in pairs], desc=f"encoding subset {name}")
        return [
            {
                SampleKeys.IMAGE: e,
                SampleKeys.LABEL: label_target(lab, self.target_size),
                SampleKeys.CASE: s[SampleKeys.CASE],
                SampleKeys.SLICE: -1 if s.get(SampleKeys.SLICE) is None else int(s[SampleKeys.SLICE]),
                SampleKeys.VIEW: v,
            }
            for e, (s, v, _, lab) in zip(emb, pairs, strict=True)
        ]

    def loader(self, subset: str, batch_size: int, num_samples: int | None = None, num_workers: int = 0) -> DataLoader:
        """Batches of ``subset`` (``"a"``, ``"b"`` or ``"validation"``).

        With ``num_samples``: drawn with replacement, ``num_samples // batch_size`` batches per epoch, by an
        :class:`EpochSampler` (roles ``fixed``) or an :class:`AlternatingSampler` over A and B (roles ``alternate``:
        the ``a`` loader starts on A, the ``b`` loader on B). A batch never holds more items than its subset has
        (a duplicate only repeats the same gradient). Without ``num_samples``: one pass in order.
        """
        key = subset.lower()
        ds = {"a": self.subset_a, "b": self.subset_b, "validation": self.validation}[key]
        if len(ds) == 0:
            raise ValueError(f"subset {subset} is empty; the draw was {self.draw}")
        if num_samples is None:
            return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        seed = self.training_seed * 3 + {"a": 0, "b": 1, "validation": 2}[key]
        sampler: EpochSampler
        if self.roles == "alternate" and key in ("a", "b"):
            n_a, n_b = len(self.subset_a), len(self.subset_b)
            bs = min(batch_size, n_a, n_b)
            sampler = AlternatingSampler(n_a, n_b, num_samples // batch_size * bs, bs, first=int(key == "b"), seed=seed)
            ds = Dataset(list(self.subset_a.data) + list(self.subset_b.data))
        else:
            bs = min(batch_size, len(ds))
            sampler = EpochSampler(len(ds), num_samples // batch_size * bs, seed=seed)
        return DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=num_workers)

    def write_draw(self, path: str | Path, resume: bool = False) -> Path:
        """Record the draw (JSON). When resuming, the recorded draw must equal this one."""
        path = Path(path)
        if resume and path.is_file():
            recorded = json.loads(path.read_text())
            if recorded != json.loads(json.dumps(self.draw)):
                raise DrawMismatchError(
                    f"{path}: the recorded draw differs from this run's; a resumed run must use "
                    "the same data, shots, seed and views"
                )
            return path
        return write_json(path, self.draw, overwrite=True)
