from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import snapshot, write_png, write_tiny_adapter

from blosam_med.cli import main


def test_info_tiny_backbone(capsys):
    assert main(["info", "--backbone", "tiny", "--lora-rank", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lora_modules"] == 14 and info["upper_params"] == 32 and info["lora_rank"] == 2
    assert info["trainable_params"] == info["lower_params"] + info["upper_params"]


def test_info_missing_checkpoint_is_one_line_error(capsys, tmp_path):
    assert main(["info", "--backbone", "sam_vit_b", "--checkpoint", str(tmp_path / "sam.pth")]) == 2
    err = capsys.readouterr().err
    assert "sam.pth" in err and "not found" in err and "Traceback" not in err


def test_info_list(capsys):
    assert main(["info", "--list"]) == 0
    assert {"litemedsam", "sam_vit_b", "sam_vit_h", "medsam_vit_b"} <= set(capsys.readouterr().out.split())


# ------------------------------------------------------------------------------ bad inputs, I/O faults
def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err  # one line, never a traceback
    return err


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta", "mps"])
def test_device_names_torch_rejects(capsys, tmp_path, synthetic_2d, device):
    out = tmp_path / "run"
    argv = ["train", "--backbone", "tiny", "--task", "lung_xray", "--data", str(synthetic_2d), "--out", str(out)]
    assert main([*argv, "--device", device]) == 2
    err = _err(capsys)
    assert f"--device {device}:" in err and "cpu" in err, err
    assert not out.exists()


def test_unknown_set_key_lists_close_matches_first(capsys, tmp_path, synthetic_2d):
    out = tmp_path / "run"
    argv = ["train", "--backbone", "tiny", "--task", "lung_xray", "--data", str(synthetic_2d), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--set", "epoch_lenght=5"]) == 2
    err = _err(capsys)
    assert "--set epoch_lenght: no such key in train.yaml, lung_xray.yaml; valid keys: epoch_length, " in err, err
    assert "lora_rank" in err  # the other valid keys follow
    assert not out.exists()


def test_malformed_datalist_names_file_line_and_column(capsys, tmp_path, synthetic_2d):
    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"training": [\n  {"image": "a.png", "label": "b.png"}\n  {"image": "c.png"}\n]}\n')
    adapter = write_tiny_adapter(tmp_path / "a.pt", task="lung_xray")
    runs = {
        "train": ["train", "--backbone", "tiny", "--task", "lung_xray", "--out", str(tmp_path / "run")],
        "evaluate": ["evaluate", "--adapter", str(adapter), "--out", str(tmp_path / "run" / "m.json")],
        "infer": ["infer", "--adapter", str(adapter), "--out", str(tmp_path / "run")],
    }
    for command, argv in runs.items():
        data = ["--input" if command == "infer" else "--data", str(datalist)]
        assert main([*argv, *data, "--device", "cpu"]) == 2, command
        err = _err(capsys)
        assert f"{datalist}: not valid JSON: Expecting ',' delimiter at line 3, column 3" in err, (command, err)
        assert not (tmp_path / "run").exists(), command


def test_unwritable_output_checked_before_any_work(capsys, tmp_path, synthetic_2d, monkeypatch):
    """A file where the output folder should be: every command stops at once, naming the output."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    adapter = write_tiny_adapter(tmp_path / "a.pt", task="lung_xray")
    import blosam_med.inference as inference

    monkeypatch.setattr(inference, "evaluate_adapter", lambda *a, **k: pytest.fail("evaluate computed before checking"))
    runs = {
        "prepare": ["prepare", "--images", str(synthetic_2d), "--out", str(blocker / "sub" / "datalist.json")],
        "train": ["train", "--backbone", "tiny", "--task", "lung_xray", "--data", str(synthetic_2d)]
        + ["--out", str(blocker / "sub"), "--device", "cpu"],
        "evaluate": ["evaluate", "--adapter", str(adapter), "--data", str(synthetic_2d)]
        + ["--out", str(blocker / "sub" / "m.json"), "--device", "cpu"],
        "infer": ["infer", "--adapter", str(adapter), "--input", str(synthetic_2d / "images")]
        + ["--out", str(blocker / "sub"), "--device", "cpu"],
    }
    for command, argv in runs.items():
        assert main(argv) == 2, command
        err = _err(capsys)
        assert f"blosam {command}: error: {blocker / 'sub'}" in err and "is a file, not a folder" in err, err
    assert blocker.read_text() == "x"


def test_disk_full_on_prepare_keeps_the_old_datalist(capsys, tmp_path, synthetic_2d, monkeypatch):
    import errno
    from pathlib import Path

    out = tmp_path / "datalist.json"
    out.write_text('{"old": true}')
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".datalist.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    before = snapshot(tmp_path)
    assert main(["prepare", "--images", str(synthetic_2d), "--out", str(out), "--overwrite"]) == 2
    err = _err(capsys)
    assert f"{out}: could not be written (No space left on device); free some space" in err, err
    assert snapshot(tmp_path) == before and out.read_text() == '{"old": true}'


def test_malicious_adapter_message_gives_no_unsafe_advice(capsys, tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    import torch

    bad = tmp_path / "adapter.pt"
    torch.save({"format": "blosam_med.adapter/1", "x": Payload()}, bad)
    image = write_png(tmp_path / "img.png", np.zeros((16, 16)))
    assert main(["infer", "--adapter", str(bad), "--input", str(image), "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert f"{bad}: not a readable adapter checkpoint" in err and "Python objects" in err, err
    assert "weights_only=False" not in err and "trusted source" not in err, err
    assert not (tmp_path / "o").exists()
