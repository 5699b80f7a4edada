"""The bundle in model-zoo form: metadata valid and tied to reproducible numbers, sections, licences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from monai.bundle import ConfigParser, verify_metadata

from blosam_med.data import task_preset_path
from blosam_med.workflow import BUNDLE_DIR, bundle_config

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ROOT / "blosam_med" / "assets" / "adapters"


def test_metadata_validates_against_the_local_schema():
    verify_metadata(meta_file=str(bundle_config("metadata.json")), filepath=str(BUNDLE_DIR / "eval" / "schema.json"))


def test_eval_metrics_are_the_shipped_adapters_test_dice():
    meta = json.loads(bundle_config("metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    expected = {}
    for folder in sorted(ADAPTERS.iterdir()):
        result = json.loads((folder / "test_metrics.json").read_text())
        expected[f"{folder.name}_test_dice"] = round(result["mean"]["dice"]["mean"], 3)
    assert meta["eval_metrics"] == expected
    assert all(isinstance(v, float) for v in meta["eval_metrics"].values())


def test_licences_are_present():
    for path in (ROOT / "LICENSE", BUNDLE_DIR / "LICENSE"):
        assert "Apache License" in path.read_text() and "Version 2.0" in path.read_text()
    assert "Kvasir-SEG" in (BUNDLE_DIR / "docs" / "data_license.txt").read_text()


@pytest.mark.parametrize(
    "configs, alias",
    [
        (["train.yaml"], "training"),
        (["train.yaml", "evaluate.yaml"], "evaluating"),
        (["inference.yaml"], "inference"),
    ],
)
def test_model_zoo_sections_with_the_old_run_ids_as_aliases(configs, alias):
    files = [str(bundle_config(c)) for c in configs]
    if configs[0] == "train.yaml":
        files.insert(1, str(task_preset_path("polyp")))
    parser = ConfigParser()
    parser.read_config(files)
    parser.parse()  # resolves the "%run" macros
    assert isinstance(parser.get("run"), list) and parser.get("run")
    assert parser.get(alias) == parser.get("run")


def test_no_config_compares_variant_names_as_strings():
    for path in sorted((BUNDLE_DIR / "configs").glob("*.yaml")):
        text = path.read_text()
        assert "@method ==" not in text and "== 'blosam'" not in text, path
        yaml.safe_load(text)  # every config is plain YAML
