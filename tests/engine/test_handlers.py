"""Resumable checkpoints through ``blosam train``: bad checkpoints are refused by name, stale ones removed, and a
fresh run in a folder with checkpoints says so."""

from __future__ import annotations

import logging

from synthetic import snapshot

from blosam_med.cli import main

TINY = ["--backbone", "tiny", "--task", "lung_xray", "--device", "cpu", "--shots", "4", "--cross-fit", "1"]
CUT = ["--iterations", "4", "--set", "epoch_length=2", "train#trainer#max_epochs=1"]  # stops after epoch 1 of 2


def _train(data, out, *extra):
    return main(["train", *TINY, "--data", str(data), "--out", str(out), *extra])


def _checkpoints(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_truncated_or_foreign_checkpoint_on_resume(synthetic_2d, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(synthetic_2d, out, *CUT) == 0
    (out / "adapter.pt").unlink()  # as if killed before the end
    ckpt = out / "checkpoints" / "checkpoint_epoch=1.pt"
    data = ckpt.read_bytes()
    for name, bad in (("truncated", data[: len(data) // 2]), ("not a checkpoint", b"this is a text file\n" * 20)):
        ckpt.write_bytes(bad)
        before = snapshot(out)
        capsys.readouterr()
        assert _train(synthetic_2d, out, "--iterations", "4", "--set", "epoch_length=2", "--resume") == 2, name
        err = capsys.readouterr().err
        assert f"{ckpt}: not a readable training checkpoint" in err and "start without --resume" in err, err
        # one error line (a progress bar of the views' encoding may come before it), no traceback
        assert "Traceback" not in err and sum("blosam train: error" in x for x in err.splitlines()) == 1, err
        assert snapshot(out) == before, name


def test_stale_checkpoints_are_removed_and_fresh_start_is_announced(synthetic_2d, tmp_path, caplog):
    out = tmp_path / "run"
    assert _train(synthetic_2d, out, *CUT) == 0
    assert _checkpoints(out) == ["checkpoint_epoch=1.pt"]
    (out / "adapter.pt").unlink()
    assert _train(synthetic_2d, out, "--iterations", "4", "--set", "epoch_length=2", "--resume") == 0
    assert _checkpoints(out) == ["checkpoint_epoch=2.pt"]  # epoch 1's file is gone once epoch 2's is written

    fresh = tmp_path / "fresh"
    assert _train(synthetic_2d, fresh, *CUT) == 0
    (fresh / "adapter.pt").unlink()
    (fresh / "checkpoints" / "checkpoint_epoch=1.pt").rename(fresh / "checkpoints" / "checkpoint_epoch=5.pt")
    with caplog.at_level(logging.WARNING):
        assert _train(synthetic_2d, fresh, *CUT) == 0
    said = [r.getMessage() for r in caplog.records if "checkpoints of an earlier run" in r.getMessage()]
    assert len(said) == 1 and "checkpoint_epoch=5.pt" in said[0], said
    assert "starts fresh" in said[0] and "--resume" in said[0]
    assert _checkpoints(fresh) == ["checkpoint_epoch=1.pt"]  # the earlier run's file is replaced, not mixed in


def test_train_refuses_a_mask_with_more_labels_than_the_task(synthetic_2d, tmp_path, capsys):
    """Masks with values {0, 1, 2} for lung_xray (one label, ``label_values: nonzero``): refused, as prepare does."""
    import numpy as np
    from PIL import Image

    for mask in (synthetic_2d / "masks").iterdir():
        m = np.asarray(Image.open(mask)) // 255
        m[:4] = 2 * m[:4] + 2 * (m[:4] == 0)  # a second structure along the top rows
        Image.fromarray(m.astype(np.uint8)).save(mask)
    out = tmp_path / "run"
    assert _train(synthetic_2d, out, "--iterations", "2") == 2
    err = capsys.readouterr().err
    assert "masks/case" in err and "not a binary mask: values [1, 2] besides 0" in err, err
    assert "task 'lung_xray' has one label" in err and "Traceback" not in err
    assert snapshot(out) == {}  # nothing written
