"""Unknown configuration keys: refused with the valid ones, close matches first."""

from __future__ import annotations

import pytest

from blosam_med.config_keys import bundle_ids, check_keys, suggest
from blosam_med.data import task_preset_path
from blosam_med.workflow import bundle_config


def test_suggest_puts_close_matches_first_and_hides_nested_ids_otherwise():
    valid = ["epoch_length", "iterations", "lr", "train#handlers", "train#handlers#0"]
    text = suggest("epoch_lenght", valid)
    assert text.startswith("valid keys: epoch_length, ")
    assert "train#handlers" not in text  # nested ids only as close matches
    assert "train#handlers" in suggest("train#handler", valid)


def test_check_keys_names_where_and_the_first_unknown_key():
    check_keys(["lr"], ["lr", "seed"], "study.yaml")
    with pytest.raises(ValueError, match=r"^study.yaml: unknown key 'lrr'; valid keys: lr, seed$"):
        check_keys(["lr", "lrr", "x"], ["lr", "seed"], "study.yaml")


def test_bundle_ids_are_the_merged_configs_ids():
    ids = bundle_ids([bundle_config("train.yaml"), task_preset_path("polyp")])
    assert {"lr", "views", "view_augmentation", "task#shots", "train#trainer", "fewshot#view_augmentation"} <= set(ids)
    assert "task#window" in ids  # from the preset
