"""Predictor: one encoder pass shared by several adapters, logits at each image's size, masks and post-processing."""

from __future__ import annotations

import pytest
import torch

from blosam_med.inference.predictor import Predictor, binary_masks, default_batch_size
from blosam_med.model import BloSam, EmbeddingCache, build_backbone


def _model(backbone, seed: int) -> BloSam:
    model = BloSam(backbone)
    with torch.no_grad():
        model.prompt.add_(torch.randn(model.prompt.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 30, 50, generator=g), torch.rand(3, 64, 40, generator=g), torch.rand(1, 20, 20, generator=g)]


def test_default_batch_size_by_device():
    assert default_batch_size("cpu") == 1 and default_batch_size(torch.device("cuda")) == 8


def test_logits_per_image_at_its_size_for_every_model(tiny_backbone):
    models = [_model(tiny_backbone, 1), _model(tiny_backbone, 2)]
    predictor = Predictor(models, batch_size=2)
    images = _images()
    logits = predictor.logits(images)
    assert [tuple(lg.shape) for lg in logits] == [(2, 30, 50), (2, 64, 40), (2, 20, 20)]
    assert all(lg.dtype == torch.float32 and lg.device.type == "cpu" for lg in logits)
    assert not torch.equal(logits[0][0], logits[0][1])  # two prompts, two answers
    for model, k in zip(models, range(2), strict=True):  # each row equals that model alone
        alone = Predictor([model], batch_size=1).logits(images)
        assert all(torch.allclose(a[0], lg[k], atol=1e-5) for a, lg in zip(alone, logits, strict=True))


def test_the_encoder_runs_once_per_image_for_all_models(tiny_backbone, tmp_path):
    cache = EmbeddingCache(tiny_backbone, tmp_path / "cache", progress=False)
    predictor = Predictor([_model(tiny_backbone, 1), _model(tiny_backbone, 2), _model(tiny_backbone, 3)], cache)
    images = _images()
    predictor.logits(images)
    assert cache.encoder_calls == 1  # three images in one chunk, one encoder call shared by the three models
    predictor.logits(images)
    assert cache.encoder_calls == 1  # the second pass reads the cache


def test_masks_are_thresholded_logits_then_postprocessed(tiny_backbone):
    drop_all = lambda m: torch.zeros_like(m)
    predictor = Predictor([_model(tiny_backbone, 1), _model(tiny_backbone, 1)], postprocess=[None, drop_all])
    image = _images()[:1]
    logits = predictor.logits(image)[0]
    masks = predictor.masks(image)[0]
    assert masks.dtype == torch.uint8 and masks.shape == logits.shape
    assert torch.equal(masks[0], (logits[0] > 0).to(torch.uint8))
    assert masks[0].any() or not (logits[0] > 0).any()
    assert not masks[1].any()  # post-processed to nothing


def test_binary_masks_skip_postprocessing_of_empty_masks():
    calls = []
    post = lambda m: calls.append(m) or m
    out = binary_masks(torch.stack([torch.full((4, 4), -1.0), torch.full((4, 4), 2.0)]), [post, post])
    assert out.tolist() == [[[0] * 4] * 4, [[1] * 4] * 4]
    assert len(calls) == 1  # only the non-empty mask is post-processed


def test_wrong_construction_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="at least one adapter"):
        Predictor([])
    with pytest.raises(ValueError, match="different backbones"):
        Predictor([BloSam(tiny_backbone), BloSam(build_backbone("tiny")), _other_backbone_model()])
    with pytest.raises(ValueError, match="1 post-processing entries for 2 models"):
        Predictor([BloSam(tiny_backbone), BloSam(tiny_backbone)], postprocess=[None])


def _other_backbone_model() -> BloSam:
    backbone = build_backbone("tiny")
    backbone.name = "other"
    return BloSam(backbone)


def test_a_lower_threshold_keeps_the_pixels_above_it(tiny_backbone):
    """thresholds=[t] shifts the logits by logit(t): the mask is then the probability above t, as the preset asks."""
    model = _model(tiny_backbone, 1)
    images = _images()
    plain = Predictor([model]).logits(images)
    for t in (0.3, 0.7):
        shifted = Predictor([model], thresholds=[t]).logits(images)
        for a, b in zip(plain, shifted, strict=True):
            assert torch.allclose(b, a - torch.logit(torch.tensor(t)), atol=1e-5)
            assert torch.equal(b > 0, torch.sigmoid(a) > t)
    with pytest.raises(ValueError, match=r"thresholds must give, per model \(1\), a probability in \(0, 1\)"):
        Predictor([model], thresholds=[1.0])


def test_encoding_ahead_gives_the_logits_of_encoding_batch_by_batch(tiny_backbone, tmp_path):
    """A thread encoding the next window while the decoders work: same embeddings, same decoder batches, so the
    same logits bit for bit, with flips and box refinement, for windows that do and do not divide the images."""
    models = [_model(tiny_backbone, 1), _model(tiny_backbone, 2)]
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(1, 24 + 2 * i, 30, generator=g) for i in range(7)]
    options = {"flips": [("h",), ("h", "v")], "refine": [(1, 0.5), (0, 0.5)]}
    for batch in (1, 2):
        plain = Predictor(models, batch_size=batch, encode_ahead=0, **options)
        assert plain._window() == batch
        expected = plain.logits(images)
        for ahead in (3, 4, 16):
            cache = EmbeddingCache(tiny_backbone, tmp_path / f"c{batch}{ahead}", batch_size=batch, progress=False)
            predictor = Predictor(models, cache, batch_size=batch, encode_ahead=ahead, **options)
            assert predictor._window() == -(-ahead // batch) * batch
            got = predictor.logits(images)
            assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True)), (batch, ahead)
            assert cache.encoder_calls >= 1 and len(list((tmp_path / f"c{batch}{ahead}").rglob("*.pt"))) == 7 * 3
    with pytest.raises(ValueError, match="encode_ahead -1"):
        Predictor(models, encode_ahead=-1)


def test_encoding_ahead_by_default_only_on_the_cpu_with_a_runtime(tiny_backbone, monkeypatch):
    from blosam_med.inference.predictor import ENCODE_AHEAD, ENCODE_AHEAD_ENV

    monkeypatch.delenv(ENCODE_AHEAD_ENV, raising=False)
    predictor = Predictor([_model(tiny_backbone, 1)], batch_size=1)
    assert predictor.cache.engine_name == "torch" and predictor._window() == 1  # eager: batch by batch as before
    predictor.cache.engine_name = "openvino"
    assert predictor._window() == ENCODE_AHEAD
    monkeypatch.setenv(ENCODE_AHEAD_ENV, "0")
    assert predictor._window() == 1
