"""Bundle launching: config files, merge order, one ConfigWorkflow with overrides."""

from __future__ import annotations

from blosam_med.data import task_preset_path
from blosam_med.workflow import BUNDLE_DIR, bundle_config, bundle_workflow, training_configs


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
