"""Two CPU processes under torchrun (gloo): sharded cohort inference equals one process byte for byte, a rerun only
does the missing cases, and distributed training equals one process with the global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from synthetic import write_ct_cohort, write_synthetic_2d, write_tiny_adapter

from blosam_med.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    """``python -m blosam_med ARGS`` in one process, or under torchrun with ``processes`` CPU workers."""
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(processes),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            f"127.0.0.1:{_free_port()}",
        ]
        if processes > 1
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    extra = ["--distributed"] if processes > 1 else []
    return subprocess.run(
        [*launcher, "-m", "blosam_med", *args, *extra], capture_output=True, text=True, env=env, timeout=300
    )


def _manifest(out: Path) -> dict[str, dict]:
    return {c["case"]: c for c in json.loads((out / "manifest.json").read_text())["cases"]}


def test_sharded_inference_equals_one_process_and_reruns_do_only_missing_cases(tmp_path):
    cohort = write_ct_cohort(tmp_path / "ct", n=5, corrupt="broken")
    shutil.copy(cohort / "ct0.nii.gz", cohort / "dup.nii.gz")  # ct0's image on the other rank: two writers of one key
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    common = ["infer", "--adapter", str(adapter), "--input", str(cohort), "--device", "cpu"]
    one = _run([*common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache1")])
    two = _run([*common, "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache2")], processes=2)
    assert one.returncode == 2 and "broken.nii.gz" in one.stderr  # the corrupt case fails, the others are done
    assert "case broken" in two.stdout + two.stderr and "broken.nii.gz" in two.stdout + two.stderr

    single, sharded = _manifest(tmp_path / "one"), _manifest(tmp_path / "two")
    assert set(single) == set(sharded) == {"broken", "ct0", "ct1", "ct2", "ct3", "ct4", "dup"}
    assert {c: r["status"] for c, r in sharded.items()} == {c: r["status"] for c, r in single.items()}
    assert sharded["broken"]["status"] == "failed" and "broken.nii.gz" in sharded["broken"]["error"]
    assert {r["rank"] for r in sharded.values()} == {0, 1} and {r["rank"] for r in single.values()} == {0}
    for case in ("ct0", "ct1", "ct2", "ct3", "ct4", "dup"):
        a, b = nib.load(single[case]["outputs"]["nifti"]), nib.load(sharded[case]["outputs"]["nifti"])
        assert np.asarray(a.dataobj).tobytes() == np.asarray(b.dataobj).tobytes()
        assert np.array_equal(a.affine, b.affine) and np.asarray(a.dataobj).any()
        montage = [Path(r[case]["outputs"]["overlay"]).read_bytes() for r in (single, sharded)]
        assert montage[0] == montage[1]
    entries = lambda root: sorted(p.name for p in root.rglob("*") if p.is_file())
    assert entries(tmp_path / "cache2") == entries(tmp_path / "cache1")  # same entries, no temporary files left

    # a run killed halfway: two cases have neither outputs nor a status file; the rerun does only those
    out = tmp_path / "two"
    for case in ("ct1", "ct4"):
        for path in sharded[case]["outputs"].values():
            os.remove(path)
        (out / ".blosam_status" / f"{case}.json").unlink()
    kept = {c: os.stat(sharded[c]["outputs"]["nifti"]).st_mtime_ns for c in ("ct0", "ct2", "ct3", "dup")}
    again = _run([*common, "--out", str(out), "--cache-dir", str(tmp_path / "cache2")], processes=2)
    assert again.returncode != 0  # the corrupt file still fails
    rerun = _manifest(out)
    assert {c: r["status"] for c, r in rerun.items()} == {
        "broken": "failed",
        "ct0": "skipped",
        "ct1": "done",
        "ct2": "skipped",
        "ct3": "skipped",
        "ct4": "done",
        "dup": "skipped",
    }
    assert {c: os.stat(sharded[c]["outputs"]["nifti"]).st_mtime_ns for c in kept} == kept
    for case in ("ct1", "ct4"):
        a, b = nib.load(single[case]["outputs"]["nifti"]), nib.load(rerun[case]["outputs"]["nifti"])
        assert np.asarray(a.dataobj).tobytes() == np.asarray(b.dataobj).tobytes()


@pytest.mark.parametrize("hypergradient", ["first_order", "second_order"])
def test_distributed_training_equals_one_process_with_the_global_batch(tmp_path, monkeypatch, hypergradient):
    data = write_synthetic_2d(tmp_path / "data", n=12)
    monkeypatch.setenv("BLOSAM_CACHE", str(tmp_path / "cache"))
    common = [
        "train",
        "--backbone",
        "tiny",
        "--task",
        "lung_xray",
        "--device",
        "cpu",
        "--data",
        str(data),
        "--shots",
        "8",
        "--iterations",
        "4",
        "--method",
        "blosam",
        "--cross-fit",
        "1",
        "--hypergradient",
        hypergradient,
    ]
    two = _run([*common, "--out", str(tmp_path / "two"), "--batch-size", "2"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*common, "--out", str(tmp_path / "one"), "--batch-size", "4"]) == 0  # the global batch: 2 x 2

    def trained(run: str) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / run / "adapter.pt", weights_only=True)["state_dict"]

    one, distributed = trained("one"), trained("two")
    assert set(one) == set(distributed)
    assert max((one[k] - distributed[k]).abs().max().item() for k in one) < 1e-5
    if hypergradient == "first_order":  # the batch matters (one process's shard alone trains differently)
        assert main([*common, "--out", str(tmp_path / "small"), "--batch-size", "2"]) == 0
        small = trained("small")
        assert max((one[k] - small[k]).abs().max().item() for k in one) > 1e-3
    metrics = {r: json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two")}
    assert metrics["two"]["draw"] == metrics["one"]["draw"] and metrics["two"]["iterations"] == 4
    for key, value in metrics["one"]["final_loss"].items():  # losses are averaged over the processes
        assert abs(metrics["two"]["final_loss"][key] - value) < 1e-5
    assert len(list((tmp_path / "two" / "checkpoints").glob("*.pt"))) == 1  # rank 0 alone checkpoints
    printed = two.stdout.splitlines()
    assert printed.count(str(tmp_path / "two" / "adapter.pt")) == 1  # and prints the result
    assert sum("Epoch[1] Metrics -- val_dice" in line for line in printed) == 1  # and logs


def test_distributed_without_torchrun_is_one_clear_error(tmp_path, capsys, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    assert (
        main(
            [
                "infer",
                "--adapter",
                str(adapter),
                "--input",
                str(adapter),
                "--out",
                str(tmp_path / "o"),
                "--device",
                "cpu",
                "--distributed",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--distributed" in err and "torchrun --nproc_per_node" in err and "RANK" in err
