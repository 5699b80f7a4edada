"""PromptFreeNetwork: the bundles' ``network_def``, image in and logits out, on the tiny random backbone."""

from __future__ import annotations

import pytest
import torch
from synthetic import write_tiny_adapter

from blosam_med.inference import Predictor
from blosam_med.model import AdapterEnsemble, PromptFreeNetwork, load_adapter, merge_adapters


@pytest.fixture
def adapter(tmp_path):
    return write_tiny_adapter(tmp_path / "a.pt", seed=3)


def test_logits_equal_the_predictors_without_preset_options(adapter):
    net = PromptFreeNetwork(adapter)
    model, _ = load_adapter(adapter)
    images = torch.rand(2, 1, 40, 52)
    expected = torch.stack(Predictor([model]).logits(list(images)))  # (2, 1, 40, 52): one model per image
    got = net(images)
    assert got.shape == (2, 1, 40, 52) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_an_ensemble_file_averages_its_members_as_probabilities(tmp_path):
    a, b = write_tiny_adapter(tmp_path / "a.pt", seed=1), write_tiny_adapter(tmp_path / "b.pt", seed=2)
    merged = merge_adapters([a, b], tmp_path / "ab.pt")
    net = PromptFreeNetwork(merged)
    assert isinstance(net.model, AdapterEnsemble) and net.members == 2
    x = torch.rand(1, 3, 32, 32)
    pa, pb = PromptFreeNetwork(a)(x).sigmoid(), PromptFreeNetwork(b)(x).sigmoid()
    torch.testing.assert_close(net(x).sigmoid(), (pa + pb) / 2, atol=1e-5, rtol=1e-4)


def test_grey_equals_grey_repeated_to_rgb(adapter):
    net = PromptFreeNetwork(adapter)
    grey = torch.rand(1, 1, 30, 20)
    torch.testing.assert_close(net(grey), net(grey.expand(1, 3, 30, 20)))


def test_state_dict_round_trip_as_monai_checkpoint_loader_does(adapter):
    """The state dict is the whole network, so a checkpoint of it loads into an untrained network of that backbone."""
    trained = PromptFreeNetwork(adapter)
    fresh = PromptFreeNetwork(None, backbone="tiny")
    x = torch.rand(1, 1, 24, 24)
    assert not torch.allclose(fresh(x), trained(x))
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh(x), trained(x))


@pytest.mark.parametrize("shape", [(1, 2, 16, 16), (3, 16, 16), (1, 4, 16, 16)])
def test_wrong_input_shapes_are_refused(adapter, shape):
    with pytest.raises(ValueError, match="expected images"):
        PromptFreeNetwork(adapter)(torch.rand(*shape))


def test_a_missing_adapter_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        PromptFreeNetwork(tmp_path / "nowhere.pt")
