"""Slices the preset calls empty (every voxel below empty_below) skip encoder and decoder and keep the masks."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import torch

from blosam_med.data import load_samples, load_task
from blosam_med.inference import Predictor, evaluate_adapter, load_adapters, predict_case
from blosam_med.inference.empty_slices import empty_slices, predict_logits
from blosam_med.model import BloSam, EmbeddingCache, build_backbone, save_adapter

LUNG_CT = load_task("lung_ct")
SKIP = dataclasses.replace(LUNG_CT, empty_below=-900)
AIR = (0, 4, 8)  # axial slices of air only, first, middle and last


def _ct(path, air_max=-901):
    """A (12, 10, 9) RAS CT: body-like noise, and air-only axial slices ``AIR`` (every voxel <= -901 HU) of which
    the middle one has one voxel of ``air_max`` HU."""
    rng = np.random.default_rng(0)
    hu = rng.normal(-700, 150, (12, 10, 9)).astype(np.int16)
    hu[..., list(AIR)] = rng.integers(-1024, -901, (12, 10, len(AIR)), endpoint=True)
    hu[3, 5, AIR[1]] = air_max
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    return path


def _tiny_adapter(path):
    model = BloSam(build_backbone("tiny"))
    with torch.no_grad():
        model.prompt.add_(torch.randn(model.prompt.shape, generator=torch.Generator().manual_seed(0)))
    return save_adapter(model, path, extra={"task": LUNG_CT.to_dict()})


def _predictor(adapter):
    models, _, post = load_adapters([adapter])
    cache = EmbeddingCache(models[0].backbone, None, batch_size=1, progress=False)
    return Predictor(models, cache, batch_size=1, postprocess=post), cache


class _ThresholdPredictor:
    """Stands in for a Predictor of one model: logit = windowed image - 0.35 (foreground above about -825 HU)."""

    def __init__(self) -> None:
        self.models = [None]
        self.encoded = 0

    def logits(self, images, progress=False, desc=""):
        self.encoded += len(images)
        return [im[:1] - 0.35 for im in images]


def test_air_slices_skip_the_encoder_and_the_rest_is_unchanged(tmp_path):
    entry = {"image": str(_ct(tmp_path / "ct.nii.gz"))}
    adapter = _tiny_adapter(tmp_path / "a.pt")
    plain_predictor, plain_cache = _predictor(adapter)
    plain = predict_case(entry, LUNG_CT, plain_predictor, progress=False)
    skip_predictor, skip_cache = _predictor(adapter)
    skipped = predict_case(entry, SKIP, skip_predictor, progress=False)
    assert plain_cache.encoder_calls == 9 and skip_cache.encoder_calls == 6  # one call per slice at batch 1
    assert skipped.slices == plain.slices == list(range(9))
    for i in range(9):
        if i in AIR:
            assert not skipped.masks(i).any() and float(torch.sigmoid(skipped.logits[i]).max()) == 0.0
        else:
            assert torch.equal(skipped.logits[i], plain.logits[i])


def test_label_map_identical_when_the_model_predicts_nothing_on_air(tmp_path):
    """A model that predicts nothing on air (here: foreground where the windowed image is above -825 HU) gives
    voxel-identical label maps with and without the skip; a shifted or misplaced slice would differ."""
    entry = {"image": str(_ct(tmp_path / "ct.nii.gz"))}
    samples = load_samples([entry], LUNG_CT, foreground_only=False, every_n=1)

    model = _ThresholdPredictor()
    plain, skipped = predict_logits(model, samples, LUNG_CT), predict_logits(model, samples, SKIP)
    assert model.encoded == 9 + 6
    assert all((lg > 0).any() for i, lg in enumerate(plain) if i not in AIR)
    assert all(torch.equal(a > 0, b > 0) for a, b in zip(plain, skipped, strict=True))


def test_a_slice_with_one_voxel_at_the_threshold_is_predicted(tmp_path):
    samples = load_samples([{"image": str(_ct(tmp_path / "ct.nii.gz", air_max=-900))}], SKIP, foreground_only=False)
    assert empty_slices(samples, SKIP) == [i in (0, 8) for i in range(9)]  # slice 4 holds a voxel of -900 HU
    assert empty_slices(samples, LUNG_CT) == [False] * 9


def test_evaluate_skips_the_same_slices(tmp_path, monkeypatch):
    ct = _ct(tmp_path / "ct.nii.gz")
    label = np.zeros((12, 10, 9), np.uint8)
    label[3:8, 2:6, 2:7] = 1
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "label.nii.gz")
    datalist = {"test": [{"image": str(ct), "label": str(tmp_path / "label.nii.gz")}]}
    encoded = []
    encode = EmbeddingCache._encode
    monkeypatch.setattr(
        EmbeddingCache, "_encode", lambda self, batch: encoded.append(len(batch)) or encode(self, batch)
    )
    adapter = _tiny_adapter(tmp_path / "a.pt")
    evaluate_adapter(adapter, datalist, task=SKIP)
    assert sum(encoded) == 6
    evaluate_adapter(adapter, datalist, task=LUNG_CT)
    assert sum(encoded) == 6 + 9
