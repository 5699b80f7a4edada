"""io: atomic writes, refusal to overwrite, the one JSON writer."""

from __future__ import annotations

import json
import os

import pytest

from blosam_med.io import OutputExistsError, atomic_path, atomic_write, check_writable, write_json


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
