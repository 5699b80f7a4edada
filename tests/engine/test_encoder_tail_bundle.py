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
