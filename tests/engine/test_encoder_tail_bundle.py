"""The encoder-tail variant through ``blosam train --encoder-tail`` (the bundle's encoder_tail.yaml), then
``blosam evaluate`` and ``blosam infer`` on its adapter, on the tiny random TinyViT (``tiny_vit``)."""

from __future__ import annotations

import json

import torch

from blosam_med.cli import main

TINY_VIT = ["--backbone", "tiny_vit", "--task", "lung_xray", "--device", "cpu", "--engine", "torch"]
#: 2 shots (one in A, one in B), no views, 2 iterations per fold: the tail's layers run on 64 x 64 x 320 features
SHORT = ["--shots", "2", "--views", "0", "--iterations", "2", "--set", "epoch_length=2"]


def test_tail_cross_fit_trains_merges_evaluates_and_infers(synthetic_2d, tmp_path, monkeypatch):
    from blosam_med.engine import parallel
    from blosam_med.model import AdapterEnsemble, load_adapter, read_adapter
    from blosam_med.model.encoder_tail import TailBloSam

    # the side-by-side path (the head features cached first, then one job per fold) run in this process: worker
    # processes would each import torch and build the backbone again (tests/test_workflow.py runs them for real)
    monkeypatch.setattr(parallel, "thread_budget", lambda: 2)
    monkeypatch.setenv(parallel.FOLD_WORKERS_ENV, "2")
    calls = []

    def in_process(fn, jobs, count, **_):
        calls.append(count)
        return [fn(*args, **kwargs) for args, kwargs in jobs]

    monkeypatch.setattr(parallel, "run_parallel", in_process)
    out = tmp_path / "run"
    argv = ["train", *TINY_VIT, *SHORT, "--data", str(synthetic_2d), "--out", str(out), "--encoder-tail", "neck"]
    assert main(argv) == 0
    assert calls == [2]
    model, extra = load_adapter(out / "adapter.pt")
    assert isinstance(model, AdapterEnsemble) and all(isinstance(m, TailBloSam) for m in model.members)
    assert model.members[0].settings.cut == "neck" and model.backbone.name == "tiny_vit@neck"
    assert read_adapter(out / "fold0" / "adapter.pt")["encoder_tail"]["neck"] == "full"
    folds = [load_adapter(out / f"fold{k}" / "adapter.pt", model.members[0].decoder.backbone)[0] for k in (0, 1)]
    for member, fold in zip(model.members, folds, strict=True):  # the ensemble holds the folds' trained tensors
        state = member.trainable_state_dict()
        assert any(n.startswith("tail.neck.") for n in state)
        assert all(torch.equal(state[n], t) for n, t in fold.trainable_state_dict().items())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["encoder_tail"]["cut"] == "neck" and extra["params"]["encoder_tail"]["neck"] == "full"
    assert metrics["params"]["run_name"].endswith("_tail-neck")
    cache = tmp_path / "cache"  # conftest's BLOSAM_CACHE: the views were encoded up to the cut only
    assert (cache / "tiny_vit@neck").is_dir() and not (cache / "tiny_vit").exists()

    result = tmp_path / "test.json"
    args = ["evaluate", "--adapter", str(out / "adapter.pt"), "--data", str(synthetic_2d), "--out", str(result)]
    assert main([*args, "--device", "cpu", "--engine", "torch"]) == 0
    assert json.loads(result.read_text())["mean"]["dice"]["n"] == 2
    image = sorted((synthetic_2d / "images").glob("*.png"))[0]
    args = ["infer", "--adapter", str(out / "adapter.pt"), "--input", str(image), "--out", str(tmp_path / "pred")]
    assert main([*args, "--device", "cpu", "--engine", "torch"]) == 0
    assert (tmp_path / "pred" / f"{image.stem}_mask.png").is_file()
    assert not (cache / "tiny_vit").exists()  # evaluation and inference ran the head too, once per image


def test_tail_training_refuses_an_encoder_that_is_not_tinyvit(synthetic_2d, tmp_path, capsys):
    argv = ["train", "--backbone", "tiny", "--task", "lung_xray", "--device", "cpu", *SHORT, "--cross-fit", "1"]
    argv += ["--data", str(synthetic_2d), "--out", str(tmp_path / "run"), "--encoder-tail", "stage"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "backbone 'tiny': encoder _TinyEncoder cannot be split (only TinyViT encoders" in err, err
    assert not (tmp_path / "run" / "adapter.pt").exists()


def _tail_preset(tmp_path, tail: str) -> str:
    """The lung_xray preset with a top-level ``encoder_tail`` (as the teeth preset has)."""
    from blosam_med.data import task_preset_path

    preset = tmp_path / "tail_preset.yaml"
    preset.write_text(task_preset_path("lung_xray").read_text() + f"\nencoder_tail: {tail}\n")
    return str(preset)


def test_a_preset_with_encoder_tail_trains_the_tail_unless_told_none(synthetic_2d, tmp_path):
    from blosam_med.model import read_adapter

    preset = _tail_preset(tmp_path, "neck")
    base = ["train", "--backbone", "tiny_vit", "--task", preset, "--device", "cpu", "--engine", "torch", *SHORT]
    base += ["--cross-fit", "1", "--data", str(synthetic_2d)]
    assert main([*base, "--out", str(tmp_path / "preset")]) == 0
    assert read_adapter(tmp_path / "preset" / "adapter.pt")["encoder_tail"]["cut"] == "neck"
    assert main([*base, "--out", str(tmp_path / "frozen"), "--encoder-tail", "none"]) == 0
    assert "encoder_tail" not in read_adapter(tmp_path / "frozen" / "adapter.pt")
    params = json.loads((tmp_path / "frozen" / "metrics.json").read_text())["params"]
    assert not params["run_name"].endswith("_tail-neck")


def test_a_bundle_run_of_a_tail_preset_without_encoder_tail_yaml_stops_before_writing(synthetic_2d, tmp_path):
    """``python -m monai.bundle run`` with train.yaml and a preset that asks for the tail, but not encoder_tail.yaml."""
    import pytest

    from blosam_med.workflow import run_training

    out = tmp_path / "run"
    override = {"dataset_dir": str(synthetic_2d), "output_dir": str(out), "backbone": "tiny_vit", "engine": "torch"}
    with pytest.raises(RuntimeError, match="check_tail_network") as err:  # MONAI wraps the expression's error
        run_training(_tail_preset(tmp_path, "neck"), {**override, "device": "$torch.device('cpu')"})
    cause = str(err.value.__cause__)
    assert "encoder_tail 'neck' (the task preset's)" in cause and "merge configs/encoder_tail.yaml" in cause, cause
    assert not out.exists()


def test_a_preset_naming_no_tail_variant_is_refused_naming_the_file(tmp_path):
    import pytest

    from blosam_med.workflow import encoder_tail_training

    preset = _tail_preset(tmp_path, "stem")
    with pytest.raises(ValueError, match=r"tail_preset.yaml: encoder_tail 'stem' is not one of: neck, stage"):
        encoder_tail_training(preset)
    extra, override = encoder_tail_training(_tail_preset(tmp_path, "stage"))
    assert [p.name for p in extra] == ["encoder_tail.yaml"] and override["tail_cut"] == "last_stage"
    assert encoder_tail_training(preset, "none") == ([], {"encoder_tail": None})  # asked for: the preset is not read
