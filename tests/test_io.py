"""Atomic writing: write faults (disk full, a torch writer failing) are named errors and leave nothing partial."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest
import torch
from synthetic import snapshot

from blosam_med.cli import main
from blosam_med.io import OutputWriteError, atomic_write, check_output_folder

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch.save on a full disk
Usage = namedtuple("Usage", "total used free")


def test_disk_full_in_torch_save_is_named(tmp_path, monkeypatch):
    target = tmp_path / "x.pt"
    target.write_bytes(b"old")

    def full_save(*args, **kwargs):
        raise RuntimeError(TORCH_FULL)

    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10, 10, 0))
    with pytest.raises(OutputWriteError, match=r"x\.pt: could not be written \(No space left on device\)") as info:
        atomic_write(target, lambda tmp: full_save({}, tmp), overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


def test_other_runtime_errors_are_not_hidden(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(tmp_path / "y.pt", lambda tmp: (_ for _ in ()).throw(RuntimeError("a bug")))
    assert list(tmp_path.iterdir()) == []


def test_output_folder_probe(tmp_path):
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing, creates no folder
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputWriteError, match=r"f/out: cannot be created: .*f is a file, not a folder"):
        check_output_folder(tmp_path / "f" / "out")


def test_checkpoint_write_failure_in_training_is_one_line(synthetic_2d, tmp_path, capsys, monkeypatch):
    """MONAI's CheckpointSaver calls torch.save itself: a full disk there is reported naming the run folder."""
    save = torch.save

    def full(obj, f, *args, **kwargs):
        if "checkpoint_epoch" in str(getattr(f, "name", f)):
            raise RuntimeError(TORCH_FULL)
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10, 10, 0))
    out = tmp_path / "run"
    argv = ["train", "--backbone", "tiny", "--task", "lung_xray", "--device", "cpu", "--shots", "4"]
    assert main([*argv, "--data", str(synthetic_2d), "--out", str(out), "--iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert f"blosam train: error: {out}: a file in this folder could not be written (No space left" in err, err
    assert "Traceback" not in err and not (out / "adapter.pt").exists()
    assert "adapter.pt" not in snapshot(out)
