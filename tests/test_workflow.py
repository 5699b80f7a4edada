"""Bundle launching: config files, merge order, one ConfigWorkflow with overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blosam_med.data import task_preset_path
from blosam_med.workflow import (
    BUNDLE_DIR,
    CROSS_FIT_FOLDS,
    bundle_config,
    bundle_value,
    bundle_workflow,
    cross_fit_folds,
    training_configs,
)


def test_bundle_config_is_inside_the_packaged_bundle():
    assert bundle_config("train.yaml") == BUNDLE_DIR / "configs" / "train.yaml"
    assert bundle_config("train.yaml").is_file() and bundle_config("metadata.json").is_file()


def test_training_configs_merge_order():
    assert training_configs("polyp") == [bundle_config("train.yaml"), task_preset_path("polyp")]
    assert training_configs("polyp", distributed=True) == [
        bundle_config("train.yaml"),
        bundle_config("multi_gpu_train.yaml"),
        task_preset_path("polyp"),
    ]
    copy = Path("pinned/train-0123.yaml")  # a study's pinned copy replaces the package's train.yaml
    assert training_configs("polyp", train_config=copy) == [copy, task_preset_path("polyp")]


def test_bundle_workflow_applies_overrides_over_the_task_preset(tmp_path):
    workflow = bundle_workflow(
        training_configs("polyp"),
        run_id="run",
        workflow_type="train",
        overrides={"shots": 3, "output_dir": str(tmp_path / "out")},
    )
    assert workflow.parser.get("shots") == 3  # the override beats the preset's "$@task#shots"
    assert workflow.parser.get("output_dir") == str(tmp_path / "out")
    assert workflow.parser.get("task#name") == "polyp"
    assert not (tmp_path / "out").exists()  # building a workflow runs nothing


def test_bundle_value_reads_the_merged_configs_then_the_overrides(tmp_path):
    preset = tmp_path / "my_task.yaml"
    preset.write_text(task_preset_path("polyp").read_text() + "\nmethod: single\n")
    assert bundle_value(training_configs("polyp"), "method", {}) == "blosam"  # train.yaml's default
    assert bundle_value(training_configs(preset), "method", {}) == "single"  # a preset merged after it wins
    assert bundle_value(training_configs(preset), "method", {"method": "blosam"}) == "blosam"
    assert bundle_value(training_configs("polyp"), "keep_best", {}) == "$@variant.bilevel"  # unevaluated


def test_cross_fit_folds_default_by_method_and_refusals():
    assert cross_fit_folds("blosam") == CROSS_FIT_FOLDS == 2 and cross_fit_folds("single") == 1
    assert cross_fit_folds("blosam", 1) == 1 and cross_fit_folds("blosam", 3) == 3 and cross_fit_folds("single", 1) == 1
    assert cross_fit_folds("single", 2) == 2  # a seed ensemble
    for method, folds in (("single", 0), ("blosam", 0), ("blosam", True), ("blosam", "2")):
        with pytest.raises(ValueError, match=r"folds: give a whole number, 1 \(one run\) or more"):
            cross_fit_folds(method, folds)


def _fold_states(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    names = ("fold0/adapter.pt", "fold1/adapter.pt")
    return {n: torch.load(out / n, weights_only=True)["state_dict"] for n in names}


def test_parallel_folds_train_the_adapters_of_sequential_folds(synthetic_2d, tmp_path, monkeypatch):
    """Two folds in two processes (one thread each) give bit for bit the adapters of the folds trained one after
    the other in this process with one thread, and the same ensemble."""
    from blosam_med.cli import main
    from blosam_med.engine import parallel

    monkeypatch.setattr(parallel, "thread_budget", lambda: 2)  # 2 processes x 1 thread on any machine
    args = ["train", "--backbone", "tiny", "--task", "lung_xray", "--device", "cpu", "--data", str(synthetic_2d)]
    args += ["--shots", "4", "--iterations", "6", "--set", "epoch_length=3"]
    calls = []
    run_parallel = parallel.run_parallel
    monkeypatch.setattr(parallel, "run_parallel", lambda *a, **k: calls.append(a[2]) or run_parallel(*a, **k))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setenv(parallel.FOLD_WORKERS_ENV, "1")
        assert main([*args, "--out", str(tmp_path / "sequential")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert calls == []  # one process: the folds one after the other, no worker process
    monkeypatch.setenv(parallel.FOLD_WORKERS_ENV, "2")
    assert main([*args, "--out", str(tmp_path / "parallel")]) == 0
    assert calls == [2]  # the folds did run in 2 processes
    sequential, side_by_side = _fold_states(tmp_path / "sequential"), _fold_states(tmp_path / "parallel")
    for name, state in sequential.items():
        assert state.keys() == side_by_side[name].keys()
        assert all(torch.equal(t, side_by_side[name][k]) for k, t in state.items()), name
    merged = [torch.load(tmp_path / d / "adapter.pt", weights_only=True)["members"] for d in ("sequential", "parallel")]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(*merged, strict=True) for k in a)


def test_parallel_workers_per_device_cores_and_variable(monkeypatch):
    from blosam_med.engine import parallel
    from blosam_med.engine.parallel import FOLD_WORKERS_ENV, parallel_workers

    monkeypatch.delenv(FOLD_WORKERS_ENV, raising=False)
    monkeypatch.setattr(parallel, "thread_budget", lambda: 2)
    assert parallel_workers(2, on_cpu=True) == 2 and parallel_workers(3, on_cpu=True) == 2
    assert parallel_workers(2, on_cpu=False) == 1  # folds share a GPU one at a time
    monkeypatch.setattr(parallel, "thread_budget", lambda: 1)
    assert parallel_workers(2, on_cpu=True) == 1  # one thread (OMP_NUM_THREADS=1): the folds one after the other
    assert parallel_workers(2, on_cpu=True, requested=5) == 2  # capped at the folds
    monkeypatch.setenv(FOLD_WORKERS_ENV, "1")
    monkeypatch.setattr(parallel, "thread_budget", lambda: 8)
    assert parallel_workers(2, on_cpu=True) == 1
    monkeypatch.setenv(FOLD_WORKERS_ENV, "two")
    with pytest.raises(ValueError, match=f"{FOLD_WORKERS_ENV}='two'"):
        parallel_workers(2, on_cpu=True)
    with pytest.raises(ValueError, match="fold processes"):
        parallel_workers(2, on_cpu=True, requested=0)


def test_run_parallel_keeps_job_order_and_raises_a_failure(tmp_path):
    from blosam_med.engine.parallel import run_parallel

    assert run_parallel(divmod, [((7, 2), {}), ((9, 4), {})], 2, threads=1) == [(3, 1), (2, 1)]
    with pytest.raises(ZeroDivisionError):
        run_parallel(divmod, [((1, 1), {}), ((1, 0), {})], 2, threads=1)


def test_folds_train_in_this_process_where_processes_cannot_start(synthetic_2d, tmp_path, monkeypatch, caplog):
    from blosam_med.cli import main
    from blosam_med.engine import parallel

    def no_semaphores(*_args, **_kwargs):
        raise parallel.ProcessesUnavailable("cannot start worker processes here (OSError: no sem_open)")

    monkeypatch.setattr(parallel, "run_parallel", no_semaphores)
    monkeypatch.setenv(parallel.FOLD_WORKERS_ENV, "2")
    args = ["train", "--backbone", "tiny", "--task", "lung_xray", "--device", "cpu", "--data", str(synthetic_2d)]
    with caplog.at_level("WARNING", logger="blosam_med.workflow"):
        assert main([*args, "--shots", "4", "--iterations", "2", "--out", str(tmp_path / "cf")]) == 0
    assert any("training the folds one after the other" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "cf/fold1/adapter.pt").is_file() and (tmp_path / "cf/adapter.pt").is_file()
