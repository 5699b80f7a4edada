"""Encoder tail: the split reproduces the encoder, LoRA on the tail starts at identity, the feature cache is verified."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from blosam_med.model import BloSam, build_backbone
from blosam_med.model.backbones import Backbone
from blosam_med.model.encoder_tail import (
    FeatureCache,
    TailBloSam,
    TailSettings,
    neck_features,
    split_encoder,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is as fast and does not stall on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_vit_backbone() -> Backbone:
    """A random TinyViT with LiteMedSAM's layout (256 px input, last stage 64 x 64 x 320, neck to 256) but narrow
    early stages, one block per stage and a small decoder; random BatchNorm statistics."""
    return build_backbone("tiny_vit")


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def encoded(tiny_vit_backbone, inputs) -> dict[str, torch.Tensor]:
    """The full encoder's embedding, the head features at each cut, and the untrained decoder's logits."""
    with torch.no_grad():
        out = {cut: split_encoder(tiny_vit_backbone, cut).head(inputs) for cut in ("neck", "last_stage")}
        out["embedding"] = tiny_vit_backbone.image_encoder(inputs)
        out["logits"] = BloSam(tiny_vit_backbone).forward_embeddings(out["embedding"])
    return out


@pytest.mark.parametrize("cut", ["neck", "last_stage"])
def test_untrained_split_reproduces_the_encoder_exactly(tiny_vit_backbone, encoded, cut):
    split = split_encoder(tiny_vit_backbone, cut)
    features = encoded[cut]  # split.head(inputs), computed once for the module
    assert tuple(features.shape[1:]) == split.feature_shape == (320, 64, 64)
    with torch.no_grad():
        assert torch.equal(split.tail(features), encoded["embedding"])
        assert torch.equal(split.tail(features.contiguous().clone()), encoded["embedding"])  # as read back from a file


def test_neck_features_from_last_stage_features_equal_the_neck_head(tiny_vit_backbone, encoded):
    last = split_encoder(tiny_vit_backbone, "last_stage")
    features = neck_features(last, encoded["last_stage"])
    assert torch.equal(features, encoded["neck"])
    last.tail.requires_grad_(True)  # as TailBloSam trains it: the frozen neck features still keep no graph
    assert not neck_features(last, encoded["last_stage"]).requires_grad
    with pytest.raises(ValueError, match="last_stage"):
        neck_features(split_encoder(tiny_vit_backbone, "neck"), encoded["neck"])


def test_split_refuses_unknown_cuts_and_other_encoders(tiny_vit_backbone):
    with pytest.raises(ValueError, match="unknown encoder cut 'stem'"):
        split_encoder(tiny_vit_backbone, "stem")
    with pytest.raises(ValueError, match="backbone 'tiny'.*TinyViT"):
        split_encoder(build_backbone("tiny"), "neck")
    with pytest.raises(ValueError, match="needs cut='last_stage'"):
        TailSettings(cut="neck", stage_lora=True)
    with pytest.raises(ValueError, match="unknown neck mode"):
        TailSettings(neck="half")
    with pytest.raises(ValueError, match="stage_lora must be True or False, got 'false'"):
        TailSettings(cut="last_stage", stage_lora="false")  # a bundle run's string would otherwise count as True


@pytest.mark.parametrize(
    ("settings", "lora_layers"),
    [
        (TailSettings(cut="last_stage", neck="full", stage_lora=True), 4),  # qkv, proj, fc1, fc2 of one block
        (TailSettings(cut="neck", neck="lora"), 2),  # the neck's two convolutions
        (TailSettings(cut="last_stage", neck="lora", stage_lora=True), 6),
    ],
)
def test_lora_tail_starts_at_identity_and_trains(tiny_vit_backbone, encoded, settings, lora_layers):
    from peft.tuners.lora import LoraLayer

    encoder_before = {k: v.clone() for k, v in tiny_vit_backbone.image_encoder.state_dict().items()}
    model = TailBloSam(tiny_vit_backbone, settings)
    assert sum(isinstance(m, LoraLayer) for m in model.tail.modules()) == lora_layers
    features = encoded[settings.cut]
    with torch.no_grad():
        assert torch.equal(model.forward_features(features), encoded["logits"])
    tail_names = {n for n, p in model.tail.named_parameters() if p.requires_grad}
    assert tail_names and all(("lora_" in n) or (settings.neck == "full" and n.startswith("neck.")) for n in tail_names)
    assert model.trainable_counts()["tail"] == sum(p.numel() for p in model.tail_parameters()) > 0

    model.train()
    assert not model.tail.training  # BatchNorm statistics stay frozen
    optimizer = torch.optim.SGD(model.lower_parameters() + model.upper_parameters(), lr=0.5)
    model.forward_features(features).mean().backward()
    optimizer.step()
    with torch.no_grad():
        assert not torch.equal(model.tail(features), encoded["embedding"])
    for k, v in tiny_vit_backbone.image_encoder.state_dict().items():  # the tail is a copy: the backbone is intact
        assert torch.equal(v, encoder_before[k]), k


def test_forward_features_checks_the_shape(tiny_vit_backbone):
    model = TailBloSam(tiny_vit_backbone, TailSettings(cut="neck"))
    with pytest.raises(ValueError, match=r"expected features \(B, 320, 64, 64\)"):
        model.forward_features(torch.zeros(1, 256, 64, 64))


def _images(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(1, 48, 64, generator=g) for _ in range(n)]


def test_feature_cache_round_trips_without_the_encoder(tiny_vit_backbone, tmp_path):
    split = split_encoder(tiny_vit_backbone, "last_stage")
    first = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False)
    images = _images(2)
    features = first.embed(images)
    assert first.encoder_calls == 1 and tuple(features.shape) == (2, *split.feature_shape)
    assert torch.equal(features, split.head(torch.stack([first_input(tiny_vit_backbone, im) for im in images])))
    files = sorted((tmp_path / "tiny_vit@last_stage").rglob("*.pt"))
    assert len(files) == 2
    again = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False)
    assert torch.equal(again.embed(images), features) and again.encoder_calls == 0
    other = FeatureCache(tiny_vit_backbone, split_encoder(tiny_vit_backbone, "neck"), tmp_path, progress=False)
    assert other.key(torch.zeros(3, 256, 256)) != again.key(torch.zeros(3, 256, 256))  # the cut is in the key


def first_input(backbone: Backbone, image: torch.Tensor) -> torch.Tensor:
    from blosam_med.model import preprocess_image

    return preprocess_image(image, backbone.preprocessing)


def test_feature_cache_detects_changed_and_truncated_entries(tiny_vit_backbone, tmp_path, caplog):
    split = split_encoder(tiny_vit_backbone, "last_stage")
    images = _images(2)
    expected = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False).embed(images)
    files = sorted((tmp_path / "tiny_vit@last_stage").rglob("*.pt"))
    entry = torch.load(files[0], weights_only=True)
    entry["embedding"][0, 0, 0] += 1.0  # changed in place, checksum kept: the file itself loads without complaint
    torch.save(entry, files[0])
    files[1].write_bytes(files[1].read_bytes()[:100])  # truncated
    cache = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False)
    with caplog.at_level(logging.WARNING):
        got = cache.embed(images)
    assert torch.equal(got, expected)
    assert cache.encoder_calls == 1  # both entries recomputed, in one batch
    assert "checksum mismatch" in caplog.text and caplog.text.count("unusable cache entry") == 2


# --- adapter files, inference and engines: a tail adapter runs the head once per image, then the tail and decoder


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every trained tensor moved a little (as training would), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


STAGE = TailSettings(cut="last_stage", neck="full", stage_lora=True)


@pytest.mark.parametrize("settings", [TailSettings(cut="neck"), STAGE], ids=["neck", "stage"])
def test_tail_adapter_file_round_trips_and_loads_as_a_tail_model(tiny_vit_backbone, encoded, settings, tmp_path):
    from blosam_med.model import load_adapter, read_adapter, save_adapter

    model = _perturbed(TailBloSam(tiny_vit_backbone, settings), seed=1).eval()
    path = save_adapter(model, tmp_path / "adapter.pt", extra={"note": "x"})
    payload = read_adapter(path)
    assert payload["encoder_tail"] == settings.to_dict() and payload["backbone"] == "tiny_vit"
    assert payload["embedding_shape"] == [256, 64, 64]  # the backbone's embeddings; the features are the model's
    loaded, extra = load_adapter(path, tiny_vit_backbone)
    assert isinstance(loaded, TailBloSam) and loaded.settings == settings and extra == {"note": "x"}
    assert loaded.backbone_name == f"tiny_vit@{settings.cut}" and loaded.embedding_shape == (320, 64, 64)
    features = encoded[settings.cut]
    with torch.no_grad():
        assert torch.equal(loaded.forward_embeddings(features), model.forward_embeddings(features))
    plain = save_adapter(BloSam(tiny_vit_backbone), tmp_path / "plain.pt")
    assert "encoder_tail" not in read_adapter(plain)  # a plain adapter's file is the one it always was


def test_untrained_tail_adapter_predicts_the_plain_adapters_masks_bit_for_bit(tiny_vit_backbone, tmp_path):
    """The Predictor (one encoder pass: the head, flips, box refinement at a low threshold so it runs) and the
    bundle's PromptFreeNetwork give an untrained tail adapter's logits equal to the plain adapter's."""
    from blosam_med.inference import Predictor
    from blosam_med.model import PromptFreeNetwork, load_adapter, save_adapter

    images = _images(1)
    options = {"flips": [("h",)], "refine": [(1, 0.0)], "thresholds": [0.001]}
    plain = BloSam(tiny_vit_backbone).eval()
    expected = Predictor([plain], device="cpu", batch_size=2, **options).logits(images)
    before = Predictor([plain], device="cpu", batch_size=2, flips=[("h",)], thresholds=[0.001]).logits(images)
    assert any(not torch.equal(a, b) for a, b in zip(expected, before, strict=True))  # refinement changed them
    with torch.no_grad():
        network = PromptFreeNetwork(plain)(images[0][None])
    for settings in (TailSettings(cut="neck"), STAGE):
        path = save_adapter(TailBloSam(tiny_vit_backbone, settings), tmp_path / f"{settings.cut}.pt")
        tail, _ = load_adapter(path, tiny_vit_backbone)
        predictor = Predictor([tail], device="cpu", batch_size=2, **options)
        assert predictor.cache.backbone.name == f"tiny_vit@{settings.cut}"  # the head, not the whole encoder
        got = predictor.logits(images)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), settings
        with torch.no_grad():
            assert torch.equal(PromptFreeNetwork(tail)(images[0][None]), network)


def test_box_refinement_of_a_trained_tail_decodes_the_frozen_embedding(tiny_vit_backbone, encoded):
    """Refinement prompts LiteMedSAM's own decoder on the unadapted embedding, whatever the tail learned."""
    from blosam_med.inference.refine import BoxRefiner

    model = _perturbed(TailBloSam(tiny_vit_backbone, STAGE), seed=2).eval()
    assert torch.equal(model.frozen_embeddings(encoded["last_stage"]), encoded["embedding"])
    logits = torch.full((48, 64), -1.0)
    logits[10:30, 20:40] = 1.0
    tail = BoxRefiner(model.backbone, 1, 0.0, model.frozen_embeddings).refine(encoded["last_stage"], logits)
    plain = BoxRefiner(tiny_vit_backbone, 1, 0.0).refine(encoded["embedding"], logits)
    assert torch.equal(tail[0], plain[0]) and tail[1] == plain[1]


def test_tail_adapters_merge_into_an_ensemble_that_averages(tiny_vit_backbone, encoded, tmp_path):
    from blosam_med.model import (
        AdapterEnsemble,
        load_adapter,
        mean_probability_logit,
        merge_adapters,
        save_adapter,
    )

    folds = [_perturbed(TailBloSam(tiny_vit_backbone, STAGE), seed=s).eval() for s in (3, 4)]
    paths = [save_adapter(m, tmp_path / f"fold{k}.pt") for k, m in enumerate(folds)]
    merged, _ = load_adapter(merge_adapters(paths, tmp_path / "adapter.pt"), tiny_vit_backbone)
    assert isinstance(merged, AdapterEnsemble) and all(isinstance(m, TailBloSam) for m in merged.members)
    assert merged.backbone.name == "tiny_vit@last_stage"
    features = encoded["last_stage"]
    with torch.no_grad():
        expected = mean_probability_logit([m.forward_embeddings(features) for m in folds])
        assert torch.equal(merged.forward_embeddings(features), expected)
    neck = save_adapter(TailBloSam(tiny_vit_backbone, TailSettings(cut="neck")), tmp_path / "neck.pt")
    plain = save_adapter(BloSam(tiny_vit_backbone), tmp_path / "plain.pt")
    for other in (neck, plain):
        with pytest.raises(ValueError, match=f"{other.name}: cannot be averaged with .*fold0.pt.*encoder_tail"):
            merge_adapters([paths[0], other], tmp_path / "bad.pt")


def test_tail_adapter_refuses_an_encoder_that_is_not_tinyvit_and_bad_settings(tiny_vit_backbone, tmp_path):
    from blosam_med.model import BackboneMismatchError, load_adapter, save_adapter

    path = save_adapter(TailBloSam(tiny_vit_backbone, TailSettings(cut="neck")), tmp_path / "adapter.pt")
    payload = torch.load(path, weights_only=True)
    tiny = build_backbone("tiny")  # a plain conv encoder: no last stage, no neck
    moved = {
        **payload,
        "backbone": "tiny",
        "backbone_fingerprint": tiny.fingerprint,
        "embedding_shape": list(tiny.embedding_shape),
        "preprocessing": tiny.preprocessing.to_dict(),
    }
    torch.save(moved, tmp_path / "tiny.pt")
    with pytest.raises(BackboneMismatchError, match=r"tiny.pt: adapter adapts the encoder's tail.*needs a TinyViT"):
        load_adapter(tmp_path / "tiny.pt", tiny)
    torch.save({**payload, "encoder_tail": {"cut": "stem"}}, tmp_path / "stem.pt")
    with pytest.raises(ValueError, match=r"stem.pt: encoder_tail .*unknown encoder cut 'stem'"):
        load_adapter(tmp_path / "stem.pt", tiny_vit_backbone)
    torch.save({**payload, "encoder_tail": {"cut": "neck", "depth": 2}}, tmp_path / "key.pt")
    with pytest.raises(ValueError, match=r"key.pt: encoder_tail must map .*\['depth'\]"):
        load_adapter(tmp_path / "key.pt", tiny_vit_backbone)


def test_openvino_exports_the_head_whose_features_match_eager(tiny_vit_backbone, tmp_path, monkeypatch):
    """An accelerated engine exports the head only (``<cache>/engines/tiny_vit@last_stage``); its features agree with
    eager PyTorch within the tolerance of the other engine tests."""
    from blosam_med.model import encoder_engines

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'blosam_med[openvino]')")
    monkeypatch.setattr(encoder_engines, "installed_runtimes", lambda: ["openvino"])  # conftest hides it
    split = split_encoder(tiny_vit_backbone, "last_stage")
    images = _images(2)
    eager = FeatureCache(tiny_vit_backbone, split, None, progress=False).embed(images)
    cache = FeatureCache(tiny_vit_backbone, split, tmp_path, progress=False, engine="openvino")
    fast = cache.embed(images)
    assert cache.engine.name == "openvino"  # not the eager fallback
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)
    assert [p.parent.parent.name for p in (tmp_path / "engines").glob("*/*/export.json")] == ["tiny_vit@last_stage"]
