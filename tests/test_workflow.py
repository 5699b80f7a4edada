"""Bundle launching: config files, merge order, one ConfigWorkflow with overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

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
