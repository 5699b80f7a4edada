"""io: atomic writes, refusal to overwrite, the one JSON writer; write faults (disk full, a torch writer failing)
are named errors and leave nothing partial."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple

import pytest
import torch
from synthetic import snapshot

from blosam_med.cli import main
from blosam_med.io import (
    OutputExistsError,
    OutputWriteError,
    atomic_path,
    atomic_write,
    check_output_folder,
    check_writable,
    write_json,
)

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
    monkeypatch.setenv("BLOSAM_FOLD_WORKERS", "1")  # the patched torch.save lives in this process, not in fold workers
    out = tmp_path / "run"
    argv = ["train", "--backbone", "tiny", "--task", "lung_xray", "--device", "cpu", "--shots", "4"]
    assert main([*argv, "--data", str(synthetic_2d), "--out", str(out), "--iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert f"blosam train: error: {out}: a file in this folder could not be written (No space left" in err, err
    assert "Traceback" not in err and not (out / "adapter.pt").exists()
    assert "adapter.pt" not in snapshot(out)


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(OutputExistsError, match=r"out\.json: already exists"):
        write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    write_json(path, {"a": 2}, overwrite=True)
    assert json.loads(path.read_text()) == {"a": 2}
    assert check_writable(tmp_path / "new.json") == tmp_path / "new.json"


def test_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "mask.nii.gz"

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_temporary_keeps_the_suffix_and_output_gets_umask_permissions(tmp_path):
    with atomic_path(tmp_path / "mask.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "mask.nii.gz").stat().st_mode & 0o777 == 0o666 & ~mask


def test_json_writer_stringifies_what_json_cannot_hold(tmp_path):
    path = write_json(tmp_path / "r.json", {"path": tmp_path, "n": 1})
    assert json.loads(path.read_text()) == {"path": str(tmp_path), "n": 1}
    assert path.read_text().endswith("\n")
