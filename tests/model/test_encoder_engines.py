"""Encoder engines: exported runtimes agree with eager PyTorch; failures fall back to eager with one warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from blosam_med.model import EmbeddingCache
from blosam_med.model import encoder_engines as engines

INSTALLED = engines.installed_runtimes  # conftest makes ``auto`` eager elsewhere; these tests use the real list


@pytest.fixture(autouse=True)
def _real_runtimes(_eager_auto, monkeypatch):
    monkeypatch.setattr(engines, "installed_runtimes", INSTALLED)


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 48 + 4 * i, 60, generator=g) for i in range(n)]


def _need(runtime: str) -> None:
    if runtime not in engines.installed_runtimes():
        pytest.skip(f"{runtime} is not installed (pip install 'blosam_med[{runtime}]')")


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == engines.__name__]


@pytest.mark.parametrize("runtime", engines.RUNTIMES)
def test_runtime_agrees_with_eager_and_exports_once(runtime, tiny_backbone, tmp_path, caplog):
    _need(runtime)
    images = _images(3)
    eager = EmbeddingCache(tiny_backbone, None, progress=False).embed(images)
    caplog.set_level(logging.INFO, logger=engines.__name__)
    cache = EmbeddingCache(tiny_backbone, tmp_path, batch_size=2, progress=False, engine=runtime)
    fast = cache.embed(images)
    assert cache.engine.name == runtime and not _warnings(caplog)
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)
    assert sum("exporting" in r.getMessage() for r in caplog.records) == 1
    exported = list((tmp_path / "engines" / "tiny").glob(f"{runtime}-*/export.json"))
    assert len(exported) == 1

    caplog.clear()
    again = EmbeddingCache(tiny_backbone, tmp_path, progress=False, engine=runtime)
    assert torch.equal(again.embed(images), fast) and again.encoder_calls == 0  # entries of this engine are reused
    again.embed(_images(1, seed=5))  # a miss builds the engine from the stored export
    assert again.engine.name == runtime
    assert not any("exporting" in r.getMessage() for r in caplog.records)
    eager_run = EmbeddingCache(tiny_backbone, tmp_path, progress=False, engine="torch")
    eager_run.embed(images)
    assert eager_run.encoder_calls == 1  # a runtime's entries are not bitwise eager ones: kept apart


def test_export_is_redone_when_torch_changes(tiny_backbone, tmp_path, monkeypatch):
    found = engines.installed_runtimes()
    if not found:
        pytest.skip("no runtime installed (pip install 'blosam_med[openvino]')")
    runtime = found[-1]  # the quickest to export (the key does not depend on the runtime)
    first = engines.export_encoder(tiny_backbone, runtime, tmp_path)
    assert engines.export_encoder(tiny_backbone, runtime, tmp_path) == first
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    second = engines.export_encoder(tiny_backbone, runtime, tmp_path)
    assert second != first and (second / "export.json").is_file()
    assert not [p for p in second.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_failed_export_falls_back_to_eager_with_one_warning(tiny_backbone, tmp_path, monkeypatch, caplog):
    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(engines, "installed_runtimes", lambda: ["openvino"])
    monkeypatch.setattr(engines, "_version", lambda runtime: "9.9")
    monkeypatch.setattr(torch.onnx, "export", broken_export)
    images = _images(3)
    reference = EmbeddingCache(tiny_backbone, tmp_path / "eager", batch_size=1, progress=False).embed(images)
    cache = EmbeddingCache(tiny_backbone, tmp_path / "fast", batch_size=1, progress=False, engine="auto")
    assert cache.engine_name == "openvino"
    got = cache.embed(images)
    assert torch.equal(got, reference)
    assert cache.engine.name == "torch" and cache.encoder_calls == 3
    warned = _warnings(caplog)
    assert len(warned) == 1 and "exporter exploded" in warned[0].getMessage()
    eager = EmbeddingCache(tiny_backbone, tmp_path / "fast", batch_size=1, progress=False)
    assert torch.equal(eager.embed(images), reference) and eager.encoder_calls == 0  # stored under eager keys
    assert not list((tmp_path / "fast" / "engines" / "tiny").iterdir())  # nothing half-written


def test_cli_engine_choices_are_the_engines():
    from blosam_med import cli

    assert cli.ENGINE_CHOICES == engines.ENGINES


def test_resolve_engine(monkeypatch):
    monkeypatch.setattr(engines, "_version", lambda runtime: "1.0" if runtime == "onnxruntime" else None)
    assert engines.resolve_engine("auto", "cpu") == "onnxruntime"
    assert engines.resolve_engine("auto", "cuda") == "torch"
    assert engines.resolve_engine("auto", "cpu", torch.bfloat16) == "torch"
    assert engines.resolve_engine("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match=r"pip install 'blosam_med\[openvino\]'"):
        engines.resolve_engine("openvino", "cpu")
    with pytest.raises(ValueError, match="on the CPU"):
        engines.resolve_engine("onnxruntime", "cuda")
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        engines.resolve_engine("tensorrt")
    monkeypatch.setattr(engines, "_version", lambda runtime: None)
    assert engines.resolve_engine("auto", "cpu") == "torch"


def test_cli_infer_engine_gives_the_eager_masks(tmp_path, synthetic_2d, capsys):
    from PIL import Image

    from blosam_med.cli import main
    from blosam_med.data import load_task
    from blosam_med.model import BloSam, build_backbone, save_adapter

    found = INSTALLED()
    if not found:
        pytest.skip("no runtime installed (pip install 'blosam_med[openvino]')")
    model = BloSam(build_backbone("tiny"))
    with torch.no_grad():
        model.prompt.add_(torch.randn(model.prompt.shape, generator=torch.Generator().manual_seed(1)))
    adapter = save_adapter(model, tmp_path / "a.pt", extra={"task": load_task("lung_xray").to_dict()})
    masks = {}
    for engine in ("torch", found[-1]):
        args = ["infer", "--adapter", str(adapter), "--input", str(synthetic_2d / "images"), "--device", "cpu"]
        out = tmp_path / engine
        assert main([*args, "--out", str(out), "--engine", engine, "--cache-dir", str(tmp_path / "cache")]) == 0
        capsys.readouterr()
        masks[engine] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*_mask.png"))}
    assert masks["torch"] and masks["torch"].keys() == masks[found[-1]].keys()
    for name, mask in masks["torch"].items():
        assert np.array_equal(mask, masks[found[-1]][name]), name
    assert list((tmp_path / "cache" / "engines" / "tiny").glob(f"{found[-1]}-*/export.json"))


def test_openvino_throughput_mode_gives_the_latency_mode_embeddings(tiny_backbone, tmp_path, monkeypatch):
    """Several images at once (asynchronous requests, throughput hint) embed each image bit for bit as one at a time
    does; BLOSAM_OPENVINO_STREAMS=1 turns it off, and an engine without it runs a batch image by image."""
    _need("openvino")
    monkeypatch.delenv(engines.OPENVINO_STREAMS_ENV, raising=False)
    folder = engines.export_encoder(tiny_backbone, "openvino", tmp_path)
    run_many = engines._openvino_throughput(folder)
    assert run_many is not None
    one = engines.RuntimeEngine("openvino", engines._openvino_session(folder))
    many = engines.RuntimeEngine("openvino", engines._openvino_session(folder), run_many)
    size = tiny_backbone.preprocessing.input_size
    batch = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert torch.equal(many(batch), one(batch)) and one.batch_invariant
    assert torch.equal(many(batch[:1]), one(batch[:1]))
    monkeypatch.setenv(engines.OPENVINO_STREAMS_ENV, "1")
    assert engines._openvino_throughput(folder) is None


def test_a_runtime_gets_the_misses_in_one_call_eager_in_batches(tiny_backbone, tmp_path, monkeypatch):
    calls: list[int] = []
    eager = engines.TorchEngine(tiny_backbone.image_encoder)

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return eager(torch.from_numpy(x)).numpy()

    fake = engines.RuntimeEngine(
        "openvino", run, lambda images: (calls.append(-len(images)), [run(i) for i in images])[1]
    )
    monkeypatch.setattr(engines, "_version", lambda name: "0.test")
    cache = EmbeddingCache(tiny_backbone, tmp_path, batch_size=2, progress=False, engine="openvino")
    cache._engine = fake
    cache.embed(_images(5))
    assert calls[0] == -5 and cache.encoder_calls == 1  # one call of 5 images, run side by side
    calls.clear()
    plain = EmbeddingCache(tiny_backbone, None, batch_size=2, progress=False)
    plain.embed(_images(5, seed=1))
    assert plain.encoder_calls == 3  # eager PyTorch: batches of 2, 2, 1
