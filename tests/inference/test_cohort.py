"""Cohort runs in one process: per-case status files, a manifest, skip-finished reruns, failures that do not stop
the others, and outputs of no run of ours refused."""

from __future__ import annotations

import json
import os

import pytest
from synthetic import write_ct_cohort, write_tiny_adapter

from blosam_med.cli import main
from blosam_med.inference import run_inference
from blosam_med.inference.cohort import MANIFEST, STATUS_DIR, CaseLedger, shard_entries


def _mtimes(records):
    return {r["case"]: {k: os.stat(p).st_mtime_ns for k, p in r["outputs"].items()} for r in records}


def _statuses(out):
    manifest = json.loads((out / MANIFEST).read_text())
    return {c["case"]: c["status"] for c in manifest["cases"]}, manifest


def test_rerun_after_a_kill_finishes_only_the_missing_cases(tmp_path):
    cohort = write_ct_cohort(tmp_path / "ct", n=4, corrupt="broken")
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    out = tmp_path / "out"
    first = run_inference([adapter], cohort, out)
    statuses, manifest = _statuses(out)
    assert statuses == {"broken": "failed", "ct0": "done", "ct1": "done", "ct2": "done", "ct3": "done"}
    failed = next(c for c in manifest["cases"] if c["case"] == "broken")
    assert "broken.nii.gz" in failed["error"] and manifest["counts"] == {"done": 4, "skipped": 0, "failed": 1}
    assert all((out / STATUS_DIR / f"{c}.json").is_file() for c in statuses)
    before = _mtimes(first)

    # as if killed: ct2 never started; ct3 was writing (its status says running, one output is missing)
    done = {r["case"]: r for r in first}
    for path in done["ct2"]["outputs"].values():
        os.remove(path)
    (out / STATUS_DIR / "ct2.json").unlink()
    ledger = CaseLedger(out, "whatever")
    ledger.mark("ct3", "running", outputs=done["ct3"]["outputs"])
    os.remove(done["ct3"]["outputs"]["overlay"])

    second = run_inference([adapter], cohort, out)  # no overwrite needed
    statuses, manifest = _statuses(out)
    assert statuses == {"broken": "failed", "ct0": "skipped", "ct1": "skipped", "ct2": "done", "ct3": "done"}
    after = _mtimes(second)
    assert after["ct0"] == before["ct0"] and after["ct1"] == before["ct1"]  # finished cases untouched
    assert all(os.path.isfile(p) for r in second for p in r["outputs"].values())
    assert manifest["counts"] == {"done": 2, "skipped": 2, "failed": 1}

    # another adapter: earlier results do not count as finished, and their files (ours) are replaced
    other = write_tiny_adapter(tmp_path / "b.pt", seed=1)
    run_inference([other], cohort, out, labels=["lungs"])
    assert set(_statuses(out)[0].values()) == {"done", "failed"}


def test_outputs_no_run_wrote_are_refused_and_the_cli_reports_failures(tmp_path, capsys):
    cohort = write_ct_cohort(tmp_path / "ct", n=2)
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ct1.nii.gz").write_bytes(b"somebody else's file")
    code = main(["infer", "--adapter", str(adapter), "--input", str(cohort), "--out", str(out), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "case ct1" in err and f"{out / 'ct1.nii.gz'}: already exists" in err and "Traceback" not in err
    assert (out / "ct1.nii.gz").read_bytes() == b"somebody else's file"
    statuses, _ = _statuses(out)
    assert statuses == {"ct0": "done", "ct1": "failed"}
    assert (
        main(
            [
                "infer",
                "--adapter",
                str(adapter),
                "--input",
                str(cohort),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--overwrite",
            ]
        )
        == 0
    )
    assert _statuses(out)[0] == {"ct0": "done", "ct1": "done"}  # --overwrite recomputes finished cases too


def test_amp_is_refused_on_the_cpu_and_duplicate_cases_are_refused(tmp_path, capsys):
    cohort = write_ct_cohort(tmp_path / "ct", n=1)
    adapter = write_tiny_adapter(tmp_path / "a.pt")
    args = ["infer", "--adapter", str(adapter), "--input", str(cohort), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(args + ["--amp", "bf16"]) == 2
    assert "--amp bf16: mixed precision runs on a GPU only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    datalist = tmp_path / "list.json"
    image = str(cohort / "ct0.nii.gz")
    datalist.write_text(json.dumps({"training": [{"image": image}], "test": [{"image": image}]}))
    with pytest.raises(ValueError, match="both are case 'ct0'"):
        run_inference([adapter], datalist, tmp_path / "o")


def test_shards_cover_every_case_once():
    entries = [{"image": f"c{i}.png"} for i in range(7)]
    shards = [shard_entries(entries, r, 3) for r in range(3)]
    assert sorted(e["image"] for s in shards for e in s) == sorted(e["image"] for e in entries)
    assert [len(s) for s in shards] == [3, 2, 2]
