"""Task bundles: the repository's bundles are exactly what make_task_bundle makes; a user's bundle of a new adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from monai.bundle import verify_metadata, verify_net_in_out
from synthetic import write_tiny_adapter

from blosam_med.cli import main
from blosam_med.model.shipped import shipped_adapters
from blosam_med.task_bundle import TEMPLATE_FILES, make_task_bundle
from blosam_med.workflow import BUNDLE_DIR

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, bytes | str]:
    """Every file of a bundle: its bytes, or the target of a symbolic link."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@pytest.mark.parametrize("task", sorted(shipped_adapters()))
def test_committed_bundles_are_what_make_task_bundle_makes(task, tmp_path):
    """Regenerate with: blosam bundle --task TASK --out bundles/blosam_TASK --link --overwrite."""
    made = make_task_bundle(tmp_path / "bundles" / f"blosam_{task}", shipped_adapters()[task], preset=task, link=True)
    committed = _files(ROOT / "bundles" / f"blosam_{task}")
    generated = _files(made)
    assert sorted(committed) == sorted(generated)
    for rel, content in generated.items():
        if rel == "models/model.pt":  # relative links from different folders: compare what they point at
            target = (ROOT / "bundles" / f"blosam_{task}" / "models" / str(committed[rel])).resolve()
            assert target == shipped_adapters()[task].resolve()
        else:
            assert committed[rel] == content, rel
    for rel in TEMPLATE_FILES:
        assert generated[rel] == (BUNDLE_DIR / rel).read_bytes()


def test_a_bundle_of_a_new_adapter_through_the_cli(tmp_path, capsys):
    adapter = write_tiny_adapter(tmp_path / "run" / "adapter.pt", task="teeth")
    out = tmp_path / "blosam_mine"
    assert main(["bundle", "--adapter", str(adapter), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["bundle"] == str(out)
    assert (out / "models" / "model.pt").read_bytes() == adapter.read_bytes() and not (
        out / "models" / "model.pt"
    ).is_symlink()
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == {}  # no test_metrics.json beside the adapter: nothing claimed
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert "name: teeth" in (out / "configs" / "task.yaml").read_text()  # the preset the adapter stores
    verify_metadata(meta_file=str(out / "configs" / "metadata.json"), filepath=str(out / "eval" / "schema.json"))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(out / "configs" / "metadata.json"),
        config_file=str(out / "configs" / "inference.yaml"),
        bundle_root=str(out),
        any=24,
    )
    # an existing bundle is never replaced silently
    assert main(["bundle", "--adapter", str(adapter), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["bundle", "--adapter", str(adapter), "--out", str(out), "--overwrite"]) == 0
    assert not list(tmp_path.glob(".blosam_mine*"))  # no temporary folder left behind


def test_a_missing_adapter_is_named(tmp_path, capsys):
    assert main(["bundle", "--adapter", str(tmp_path / "none.pt"), "--out", str(tmp_path / "b")]) == 2
    assert "none.pt" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_a_preset_without_a_task_section_is_named(tmp_path, capsys):
    adapter = write_tiny_adapter(tmp_path / "adapter.pt", task="teeth")
    bad = tmp_path / "bad.yaml"
    bad.write_text("views: 4\n")
    args = ["bundle", "--adapter", str(adapter), "--preset", str(bad), "--out", str(tmp_path / "b")]
    assert main(args) == 2
    assert "bad.yaml: a task preset needs a top-level 'task:' mapping" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_readme_says_when_the_shipped_model_adapted_an_encoder_the_preset_keeps_frozen():
    from blosam_med.data import load_task
    from blosam_med.task_bundle import _readme

    task, meta = load_task("polyp"), {"version": "0.0.0", "eval_metrics": {}}
    neck = {"cut": "neck", "neck": "full", "stage_lora": False, "lora": {"rank": 8, "alpha": 8.0, "dropout": 0.0}}
    mismatch = _readme(task, meta, "blosam_polyp", False, None, neck)
    assert "`models/model.pt` has its encoder frozen up to the neck (the neck fine-tuned)" in mismatch
    assert "add `'configs/encoder_tail.yaml'` after `'configs/train.yaml'`" in mismatch
    assert "has its encoder" not in _readme(task, meta, "blosam_polyp", False, None, None)  # frozen both ways
    assert "has its encoder" not in _readme(task, meta, "blosam_teeth", False, "neck", neck)  # the preset trains it too
    stage = {**neck, "cut": "last_stage", "stage_lora": True}
    other = _readme(task, meta, "blosam_teeth", False, "neck", stage)  # shipped with more than the preset trains
    assert "has its encoder frozen up to the last stage" in other and "preset trains `neck`" in other
    assert "add `--tail_cut last_stage` `--tail_stage_lora True`" in other
    assert "`--tail_cut last_stage` and `--tail_stage_lora True`" in _readme(task, meta, "b", False, None, stage)
