"""Launching the package's MONAI bundle (``bundles/blosam``): its config files and one ``ConfigWorkflow`` per run.

``blosam train`` and the study's bundle cells both train through :func:`run_training`, so a study cell runs exactly
what the command runs. MONAI and the data layer are imported on use, so the CLI's parser can find the bundle
cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai.bundle import ConfigWorkflow

__all__ = ["BUNDLE_DIR", "bundle_config", "bundle_workflow", "run_training", "training_configs"]

#: The bundle shipped with the package (a link to ``bundles/blosam`` in a source checkout).
BUNDLE_DIR = Path(__file__).resolve().parent / "bundle"


def bundle_config(name: str) -> Path:
    """A config file of the package's MONAI bundle (``bundles/blosam/configs/<name>``)."""
    return BUNDLE_DIR / "configs" / name


def bundle_workflow(
    config_files: Sequence[str | Path],
    *,
    run_id: str,
    workflow_type: str,
    overrides: Mapping[str, Any],
    tracking: str | None = None,
) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` over ``config_files`` (merged in order) with the bundle's metadata, MONAI's logging left
    alone, and ``overrides`` applied (bundle ids as keys)."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(c) for c in config_files],
        meta_file=str(bundle_config("metadata.json")),
        logging_file=False,
        run_id=run_id,
        workflow_type=workflow_type,
        tracking=tracking,
        **overrides,
    )


def training_configs(task: str | Path, *, distributed: bool = False) -> list[Path]:
    """The config files of a training run, in merge order: ``train.yaml``, ``multi_gpu_train.yaml`` (with
    ``distributed``), the task preset (name or YAML file)."""
    from blosam_med.data import task_preset_path

    configs = [bundle_config("train.yaml")]
    if distributed:
        configs.append(bundle_config("multi_gpu_train.yaml"))
    configs.append(task_preset_path(task))
    return configs


def run_training(
    task: str | Path, overrides: Mapping[str, Any], *, distributed: bool = False, tracking: str | None = None
) -> ConfigWorkflow:
    """Run the bundle's ``train.yaml`` for a task preset (name or YAML file) and return the finished workflow.

    Args:
        task: task preset merged after ``train.yaml`` (``configs/<task>.yaml``).
        overrides: bundle ids to override; ids not given keep the bundle's defaults.
        distributed: also merge ``multi_gpu_train.yaml`` (one of several ``torchrun`` processes).
        tracking: ``"mlflow"`` to track the run with MONAI's MLflow handler.
    """
    configs = training_configs(task, distributed=distributed)
    workflow = bundle_workflow(configs, run_id="run", workflow_type="train", overrides=overrides, tracking=tracking)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow
