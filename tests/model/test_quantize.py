"""The opt-in int8 encoder: NNCF quantisation of the OpenVINO export, its engine, its cache keys and its mask gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blosam_med.model import EmbeddingCache
from blosam_med.model.quantize import INT8_ENGINE, int8_engine, quantize_encoder, read_int8
from tests.synthetic import write_tiny_adapter

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'blosam_med[openvino]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'blosam_med[openvino]')")


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 40 + 4 * i, 52, generator=g) for i in range(n)]


@pytest.fixture
def int8_folder(tiny_backbone, tmp_path):
    images = _images(6)
    return quantize_encoder(tiny_backbone, images, [f"im{i}" for i in range(6)], tmp_path / "int8", tmp_path / "c")


def test_int8_engine_is_close_to_float32_and_keyed_apart(tiny_backbone, int8_folder, tmp_path):
    described = read_int8(int8_folder, tiny_backbone)
    assert [c["image"] for c in described["calibration"]] == [f"im{i}" for i in range(6)]
    assert described["backbone"] == "tiny" and described["weights"] == tiny_backbone.fingerprint
    engine = int8_engine(int8_folder, tiny_backbone)
    assert engine.name == INT8_ENGINE and described["key"] in engine.id
    images = _images(3, seed=7)
    fp32 = EmbeddingCache(tiny_backbone, tmp_path / "c", progress=False, engine="openvino").embed(images)
    cache = EmbeddingCache(tiny_backbone, tmp_path / "c", progress=False, engine=engine)
    int8 = cache.embed(images)
    assert cache.encoder_calls == 1  # the float32 entries of the same images are not int8's
    error = float((int8 - fp32).abs().max() / fp32.abs().max())
    assert 0 < error < 0.25  # quantised: not float32's numbers, but close to them
    again = EmbeddingCache(
        tiny_backbone, tmp_path / "c", progress=False, engine=int8_engine(int8_folder, tiny_backbone)
    )
    assert torch.equal(again.embed(images), int8) and again.encoder_calls == 0


def test_int8_folder_is_refused_for_another_encoder_and_when_incomplete(tiny_backbone, int8_folder, tmp_path):
    import dataclasses

    other = dataclasses.replace(tiny_backbone, name="tiny@neck")
    with pytest.raises(ValueError, match="int8 encoder made for another encoder.*tiny@neck"):
        int8_engine(int8_folder, other)
    with pytest.raises(FileNotFoundError, match="not an int8 encoder folder"):
        read_int8(tmp_path / "nowhere")
    (int8_folder / "int8.json").write_text("{not json")
    with pytest.raises(ValueError, match="int8.json: unreadable int8 description"):
        read_int8(int8_folder)
    with pytest.raises(FileExistsError, match="already exists"):
        quantize_encoder(tiny_backbone, _images(2), ["a", "b"], int8_folder, tmp_path / "c")


def test_missing_runtime_is_one_line_with_the_install_command(tiny_backbone, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nncf(name, *args, **kwargs):
        if name == "nncf":
            raise ImportError("No module named 'nncf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nncf)
    with pytest.raises(ValueError, match=r"the int8 encoder needs nncf.*pip install 'blosam_med\[openvino\]'"):
        quantize_encoder(tiny_backbone, _images(2), ["a", "b"], tmp_path / "q", tmp_path / "c")
    assert not (tmp_path / "q").exists()


def test_cli_quantize_keeps_the_encoder_only_above_the_gate_and_infer_uses_it(tmp_path, synthetic_2d, capsys):
    from blosam_med.cli import main

    adapter = write_tiny_adapter(tmp_path / "a.pt", task="lung_xray", seed=3)
    base = ["quantize", "--adapter", str(adapter), "--data", str(synthetic_2d), "--cache-dir", str(tmp_path / "c")]
    # an impossible gate: refused in one line naming a case, nothing written
    assert main([*base, "--out", str(tmp_path / "refused"), "--min-dice", "1.01"]) == 2
    err = capsys.readouterr().err
    assert "blosam quantize: error:" in err and "case0" in err and "below 1.01" in err
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused.*"))

    assert main([*base, "--out", str(tmp_path / "q"), "--min-dice", "0"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    check = read_int8(tmp_path / "q")["check"]
    assert printed["smallest_dice"] == check["smallest_dice"] == min(c["dice"] for c in check["cases"])
    assert printed["calibration_images"] == 6 and len(check["cases"]) == 2  # the folder's seeded 6/2 split
    assert main([*base, "--out", str(tmp_path / "q"), "--min-dice", "0"]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err

    masks = {}
    for name, extra in (("fp32", ["--engine", "openvino"]), ("int8", ["--int8-encoder", str(tmp_path / "q")])):
        out = tmp_path / name
        args = ["infer", "--adapter", str(adapter), "--input", str(synthetic_2d / "images"), "--out", str(out)]
        assert main([*args, "--device", "cpu", "--cache-dir", str(tmp_path / "c"), *extra]) == 0
        capsys.readouterr()
        masks[name] = {p.name: np.asarray(Image.open(p)) > 0 for p in sorted(out.glob("*_mask.png"))}
    assert masks["fp32"].keys() == masks["int8"].keys() and len(masks["fp32"]) == 8
    # the gate's Dice is the one infer's masks give on the check cases
    for case in check["cases"]:
        name = f"{case['image'].rsplit('/', 1)[-1].removesuffix('.png')}_mask.png"
        a, b = masks["fp32"][name], masks["int8"][name]
        total = a.sum() + b.sum()
        assert case["dice"] == pytest.approx(1.0 if total == 0 else 2 * (a & b).sum() / total, abs=1e-6)

    assert list((tmp_path / "c" / "engines").rglob("export.json"))  # the float32 export it came from is kept
    args = ["infer", "--adapter", str(adapter), "--input", str(synthetic_2d / "images"), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "x"), "--int8-encoder", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not an int8 encoder folder" in capsys.readouterr().err


def test_quantize_keeps_its_float32_reference_export_in_the_cache_it_is_given(tmp_path, synthetic_2d):
    from blosam_med.inference.int8 import quantize_for_adapters

    adapter = write_tiny_adapter(tmp_path / "a.pt", task="lung_xray", seed=3)
    described = quantize_for_adapters(
        [adapter], synthetic_2d, tmp_path / "q", min_dice=0.0, cache_dir=tmp_path / "c", engine="openvino"
    )
    assert described["check"]["engine"] == "openvino"
    assert len(list((tmp_path / "c" / "engines").rglob("export.json"))) == 1  # shared by int8 and its reference
    assert not (tmp_path / "cache" / "engines").exists()  # nothing in the default cache ($BLOSAM_CACHE)


def test_cli_quantize_defaults_are_the_library_constants():
    """The parser spells its defaults out (it imports no torch); they must stay the library's."""
    from blosam_med.cli import build_parser
    from blosam_med.inference.int8 import CALIBRATION_IMAGES
    from blosam_med.model.quantize import MIN_DICE

    args = build_parser().parse_args(["quantize", "--task", "polyp", "--data", "d", "--out", "o"])
    assert (args.images, args.min_dice) == (CALIBRATION_IMAGES, MIN_DICE)
