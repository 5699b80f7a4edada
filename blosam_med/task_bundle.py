"""Task bundles: one trained adapter as a MONAI model-zoo bundle, made from the package's bundle template.

The template (``blosam_med/bundle``) holds the generic configs; a task bundle is that template plus the task's preset
(``configs/task.yaml``), its adapter as ``models/model.pt``, metadata naming the task and its figures, and a README.
``bundles/blosam_<task>`` in the repository are the shipped adapters' bundles, made by :func:`make_task_bundle`
(``blosam bundle``); a test checks that they are exactly what it makes, so no config is edited by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

import yaml

from blosam_med.data import TaskConfig, load_task, task_preset_path
from blosam_med.model import read_adapter
from blosam_med.model.encoder_tail import TailSettings
from blosam_med.variants import ENCODER_TAILS
from blosam_med.workflow import BUNDLE_DIR, preset_encoder_tail

__all__ = ["TEMPLATE_FILES", "TORCHSCRIPT_NOTE", "make_task_bundle", "task_metadata"]

#: Files copied unchanged from the template into every task bundle.
TEMPLATE_FILES = (
    "LICENSE",
    "configs/train.yaml",
    "configs/evaluate.yaml",
    "configs/inference.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/encoder_tail.yaml",
    "docs/data_license.txt",
    "eval/schema.json",
)

#: Why the bundles have no TorchScript model (metadata ``torchscript`` and the bundle README).
TORCHSCRIPT_NOTE = (
    "not scriptable: torch.jit.script fails on segment_anything's and peft's modules (keyword-only arguments, "
    "dynamic module wrappers), and TorchScript is deprecated in PyTorch 2.x; the model zoo's check skips the export "
    "for bundles on its exclusion list. Use the bundle's configs with blosam_med installed, or the encoder engines "
    "(OpenVINO, ONNX Runtime) for a compiled encoder."
)


def _preset(preset: str | Path | None, adapter: dict[str, Any], path: Path) -> tuple[TaskConfig, str]:
    """The task preset (parsed, and its YAML text for ``configs/task.yaml``)."""
    if preset is not None:  # load_task names the file when it has no valid task: section
        return load_task(preset), task_preset_path(preset).read_text()
    stored = adapter.get("extra", {}).get("task")
    if not stored:
        raise ValueError(f"{path}: the adapter stores no task preset; pass the preset it was trained with (--preset)")
    task = TaskConfig.from_dict(stored)
    return task, f"# Task preset stored in the adapter ({path.name}).\n" + yaml.safe_dump(
        {"task": stored}, sort_keys=False
    )


def task_metadata(task: TaskConfig, adapter_path: Path, test_dice: float | None) -> dict[str, Any]:
    """The template's ``metadata.json`` specialised to one task and its adapter."""
    meta = json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())
    grey = task.channels == 1
    meta["name"] = f"BLO-SAM {task.name} segmentation"
    meta["task"] = (
        f"Prompt-free segmentation of {task.label_name} ({task.modality}, {task.spatial_dims}D images or slices)"
    )
    meta["description"] = (
        f"{meta['description']} This bundle holds one trained model, models/model.pt (the adapter {adapter_path.name}), "
        f"for the task '{task.name}'; configs/task.yaml is the task preset it was trained with."
    )
    meta["eval_metrics"] = {} if test_dice is None else {f"{task.name}_test_dice": round(test_dice, 3)}
    meta["torchscript"] = TORCHSCRIPT_NOTE
    meta["network_data_format"] = {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": task.modality,
                "num_channels": task.channels,
                "spatial_shape": ["*", "*"],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": False,
                "channel_def": {"0": "grey"} if grey else {"0": "red", "1": "green", "2": "blue"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 1,
                "spatial_shape": ["*", "*"],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {"0": f"{task.label_name} logit"},
            }
        },
    }
    return meta


def _test_dice(adapter_path: Path) -> float | None:
    metrics = adapter_path.parent / "test_metrics.json"
    if not metrics.is_file():
        return None
    return float(json.loads(metrics.read_text())["mean"]["dice"]["mean"])


def _tail_note(tail: str | None, trained: dict | None) -> str:
    """What the README adds under the training command: the preset's encoder-tail variant, and how to train like the
    shipped model when its encoder was adapted otherwise (``trained``: the adapter's ``encoder_tail``)."""
    note = ""
    if tail:
        note = (
            f"\nThis task's preset trains with the encoder tail (`encoder_tail: {tail}` in `configs/task.yaml`, "
            "docs/encoder_tail.md of blosam_med), hence `configs/encoder_tail.yaml` in the list; without it the run "
            "stops before writing anything. For the frozen encoder, leave that file out and add `--encoder_tail '$None'` "
            "(an expression: `python -m monai.bundle run` ignores a plain None).\n"
        )
    if not trained:
        return note
    # what the training command trains: the preset's variant, or encoder_tail.yaml's defaults (the neck) once merged
    base = {k.removeprefix("tail_"): v for k, v in ENCODER_TAILS[tail or "neck"].items()}
    shipped = {k: trained.get(k) for k in base}
    if tail and shipped == base:
        return note
    overrides = [f"`--tail_{k} {v}`" for k, v in shipped.items() if base[k] != v]  # True: what fire parses as bool
    if tail:
        how = f"this task's preset trains `{tail}`. To train like the shipped model, add {' '.join(overrides)}"
    else:
        how = "this task's preset trains with the encoder frozen. To train like the shipped model, add "
        how += "`'configs/encoder_tail.yaml'` after `'configs/train.yaml'`" + "".join(f" and {o}" for o in overrides)
    described = TailSettings.from_dict(trained).describe()
    return (
        note
        + f"\nThe shipped `models/model.pt` has its encoder {described}; {how} (docs/encoder_tail.md of blosam_med).\n"
    )


def _readme(
    task: TaskConfig, meta: dict[str, Any], name: str, card: bool, tail: str | None, trained: dict | None
) -> str:
    """The bundle's README; ``tail``: the preset's encoder-tail variant, whose config the training command merges;
    ``trained``: the adapter's ``encoder_tail`` (what its training did to the encoder)."""
    template = string.Template((BUNDLE_DIR / "docs" / "task_bundle_README.md").read_text())
    train_files = ["train.yaml", "encoder_tail.yaml", "task.yaml"] if tail else ["train.yaml", "task.yaml"]
    dice = meta["eval_metrics"].get(f"{task.name}_test_dice")
    return template.substitute(
        name=name,
        task=task.name,
        label=task.label_name,
        modality=task.modality,
        channels=task.channels,
        version=meta["version"],
        test_dice="not measured" if dice is None else f"{dice:.3f} (Dice on the task's held-out test split)",
        card="See [MODEL_CARD.md](MODEL_CARD.md) for the training data, shots and figures." if card else "",
        torchscript=TORCHSCRIPT_NOTE,
        encoder=TailSettings.from_dict(trained).describe() if trained else "frozen",
        train_configs=",".join(f"'configs/{c}'" for c in train_files),
        tail_note=_tail_note(tail, trained),
    )


def make_task_bundle(
    out: str | Path,
    adapter: str | Path,
    *,
    preset: str | Path | None = None,
    link: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a model-zoo bundle of one trained adapter to ``out`` (its name is the folder's).

    Args:
        out: the bundle folder to write (e.g. ``bundles/blosam_polyp``).
        adapter: the adapter file (``adapter.pt`` of ``blosam train``, or a shipped one).
        preset: the task preset (a shipped name or a YAML path); default: the preset stored in the adapter.
        link: make ``models/model.pt`` a relative symbolic link to ``adapter`` instead of a copy (the repository's
            bundles link to the shipped adapters, so the weights are stored once).
        overwrite: replace an existing bundle folder.

    Returns:
        The bundle folder.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        FileNotFoundError: the adapter or preset is missing (named).
        ValueError: the adapter or preset is unreadable (named).
    """
    out, adapter = Path(out), Path(adapter)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: bundle folder exists; pass overwrite=True (--overwrite) to replace it")
    payload = read_adapter(adapter)
    task, preset_text = _preset(preset, payload, adapter)
    tail = preset_encoder_tail(preset) if preset is not None else None  # a stored preset keeps task: only
    meta = task_metadata(task, adapter, _test_dice(adapter))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle folder is as readable as any other
    try:
        for rel in TEMPLATE_FILES:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(BUNDLE_DIR / rel, tmp / rel)
        (tmp / "configs" / "task.yaml").write_text(preset_text)
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
        card = adapter.parent / "MODEL_CARD.md"
        if card.is_file():
            shutil.copyfile(card, tmp / "docs" / "MODEL_CARD.md")
        (tmp / "docs" / "README.md").write_text(
            _readme(task, meta, out.name, card.is_file(), tail, payload.get("encoder_tail"))
        )
        (tmp / "models").mkdir()
        if link:
            target = os.path.relpath(adapter.resolve(), (out / "models").resolve())
            (tmp / "models" / "model.pt").symlink_to(target)
        else:
            shutil.copyfile(adapter, tmp / "models" / "model.pt")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():  # left by an interrupted earlier replacement
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
