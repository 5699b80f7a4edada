"""The sample keys: the dicts load_samples builds carry exactly the documented keys, named by data/keys.py."""

from __future__ import annotations

import numpy as np
from monai.utils import CommonKeys
from synthetic import png_pairs, write_nifti

from blosam_med.data import PairKeys, SampleKeys, SourceKeys, load_pair, load_samples, load_task


def test_trainer_batches_use_monai_common_keys():
    assert SampleKeys.IMAGE == CommonKeys.IMAGE and SampleKeys.LABEL == CommonKeys.LABEL


def test_2d_sample_keys(tmp_path):
    root = png_pairs(tmp_path, n=1)
    item = {"image": str(root / "images" / "case0.png"), "label": str(root / "masks" / "case0.png")}
    (sample,) = load_samples([item], load_task("lung_xray"))
    assert set(sample) == {
        SampleKeys.IMAGE,
        SampleKeys.LABEL,
        SampleKeys.CASE,
        SampleKeys.SLICE,
        SampleKeys.SPACING,
        SampleKeys.SPACING_KNOWN,
        SampleKeys.IMAGE_PATH,
    }
    assert sample[SampleKeys.CASE] == "case0" and sample[SampleKeys.SLICE] is None
    pair = load_pair(item["image"], item["label"], task=load_task("lung_xray"))
    assert set(pair) == {PairKeys.IMAGE, PairKeys.LABEL, PairKeys.IMAGE_PATH, PairKeys.LABEL_PATH, PairKeys.KIND}


def test_volume_slice_keys_and_source(tmp_path):
    volume = np.zeros((6, 5, 4), np.int16)
    image = write_nifti(tmp_path / "ct.nii.gz", volume, np.diag([0.8, 0.9, 2.5, 1.0]))
    samples = load_samples([{"image": str(image)}], load_task("lung_ct"), foreground_only=False)
    assert len(samples) == 4 and all(SampleKeys.LABEL not in s for s in samples)
    first = samples[0]
    assert set(first) == {
        SampleKeys.IMAGE,
        SampleKeys.CASE,
        SampleKeys.SLICE,
        SampleKeys.SPACING,
        SampleKeys.SPACING_KNOWN,
        SampleKeys.IMAGE_PATH,
        SampleKeys.SOURCE,
    }
    source = first[SampleKeys.SOURCE]
    assert set(source) == {
        SourceKeys.SHAPE,
        SourceKeys.AFFINE,
        SourceKeys.ORIGINAL_AFFINE,
        SourceKeys.AXIS,
        SourceKeys.AXIS_NAME,
    }
    assert source[SourceKeys.SHAPE] == (6, 5, 4) and source[SourceKeys.AXIS_NAME] == "axial"
