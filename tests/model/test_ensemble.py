"""Cross-fitted ensembles: the mean-probability average, one adapter file holding every member."""

from __future__ import annotations

import pytest
import torch

from blosam_med.model import (
    AdapterEnsemble,
    BloSam,
    LoraSettings,
    load_adapter,
    mean_probability_logit,
    merge_adapters,
    save_adapter,
)


def _perturbed(backbone, rank=3, scale=0.1):
    model = BloSam(backbone, LoraSettings(rank=rank, alpha=float(rank)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return model.eval()


def test_mean_probability_logit():
    a, b = torch.tensor([2.0, -1.0]), torch.tensor([-2.0, 3.0])
    expected = torch.logit((a.sigmoid() + b.sigmoid()) / 2)
    assert torch.allclose(mean_probability_logit([a, b]), expected, atol=1e-6)
    assert mean_probability_logit([a]) is a


def test_ensemble_predicts_the_mean_probability_of_its_members(tiny_backbone):
    members = [_perturbed(tiny_backbone), _perturbed(tiny_backbone)]
    ensemble = AdapterEnsemble(members).eval()
    emb = torch.randn(2, *tiny_backbone.embedding_shape)
    with torch.no_grad():
        probs = [m.forward_embeddings(emb).sigmoid() for m in members]
        got = ensemble.forward_embeddings(emb)
    assert not torch.allclose(probs[0], probs[1])  # the members differ, so the average is a real one
    assert torch.allclose(got.sigmoid(), (probs[0] + probs[1]) / 2, atol=1e-5)
    assert ensemble.members[1] is members[1] and len(ensemble) == 2
    # the members keep their own decoders and share the frozen encoder
    assert members[0].mask_decoder is not members[1].mask_decoder
    assert members[0].image_encoder is members[1].image_encoder


def test_ensemble_needs_two_members(tiny_backbone):
    with pytest.raises(ValueError, match="at least two members"):
        AdapterEnsemble([_perturbed(tiny_backbone)])


def test_ensemble_round_trip_is_one_file(tiny_backbone, tmp_path):
    ensemble = AdapterEnsemble([_perturbed(tiny_backbone), _perturbed(tiny_backbone)])
    path = save_adapter(ensemble, tmp_path / "adapter.pt", extra={"task": "polyp"})
    payload = torch.load(path, weights_only=True)
    assert "state_dict" not in payload and len(payload["members"]) == 2
    loaded, extra = load_adapter(path, tiny_backbone)
    assert isinstance(loaded, AdapterEnsemble) and extra == {"task": "polyp"}
    emb = torch.randn(1, *tiny_backbone.embedding_shape)
    with torch.no_grad():
        assert torch.allclose(loaded.forward_embeddings(emb), ensemble.forward_embeddings(emb), atol=1e-6)


def test_merge_adapters_averages_separately_trained_files(tiny_backbone, tmp_path):
    members = [_perturbed(tiny_backbone), _perturbed(tiny_backbone)]
    paths = [save_adapter(m, tmp_path / f"fold{k}.pt", extra={"fold": k}) for k, m in enumerate(members)]
    merged = merge_adapters(paths, tmp_path / "adapter.pt")
    loaded, extra = load_adapter(merged, tiny_backbone)
    assert extra == {"fold": 0}  # the first file's metadata unless given
    emb = torch.randn(1, *tiny_backbone.embedding_shape)
    with torch.no_grad():
        expected = AdapterEnsemble(members).forward_embeddings(emb)
        assert torch.allclose(loaded.forward_embeddings(emb), expected, atol=1e-6)
    # an ensemble file merges on as its members
    three = merge_adapters([merged, save_adapter(_perturbed(tiny_backbone), tmp_path / "x.pt")], tmp_path / "3.pt")
    assert len(torch.load(three, weights_only=True)["members"]) == 3
    with pytest.raises(Exception, match="already exists"):
        merge_adapters(paths, merged)  # an existing output is never replaced silently


def test_merge_refuses_different_adapters_naming_the_file(tiny_backbone, tmp_path):
    a = save_adapter(_perturbed(tiny_backbone, rank=3), tmp_path / "a.pt")
    b = save_adapter(_perturbed(tiny_backbone, rank=2), tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"b\.pt: cannot be averaged with .*a\.pt: they differ in lora"):
        merge_adapters([a, b], tmp_path / "out.pt")
    with pytest.raises(ValueError, match="at least two members"):
        merge_adapters([a], tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_ensemble_file_with_one_member_is_refused_naming_it(tiny_backbone, tmp_path):
    path = save_adapter(AdapterEnsemble([_perturbed(tiny_backbone), _perturbed(tiny_backbone)]), tmp_path / "e.pt")
    payload = torch.load(path, weights_only=True)
    payload["members"] = payload["members"][:1]
    torch.save(payload, tmp_path / "one.pt")
    with pytest.raises(ValueError, match=r"one\.pt: an ensemble adapter needs at least two members, it holds 1"):
        load_adapter(tmp_path / "one.pt", tiny_backbone)
