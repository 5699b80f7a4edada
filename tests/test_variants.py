"""The variant registry: names are checked where they enter (CLI, bundle, study config), with the valid list."""

from __future__ import annotations

import pytest
import yaml

from blosam_med.cli import build_parser
from blosam_med.engine.hypergradient import HYPERGRADIENTS as FUNCTIONS
from blosam_med.study import load_study
from blosam_med.variants import (
    ENCODER_TAILS,
    FROZEN_ENCODER,
    HYPERGRADIENTS,
    METHODS,
    ROLES,
    TrainingVariant,
    check_name,
)


def test_every_registered_hypergradient_has_a_function():
    assert set(FUNCTIONS) == set(HYPERGRADIENTS)


@pytest.mark.parametrize(
    "option, name, valid", [("method", "blosan", "blosam, single"), ("roles", "swap", "fixed, alternate")]
)
def test_unknown_name_lists_the_valid_ones(option, name, valid):
    with pytest.raises(ValueError, match=f"{option} '{name}' is not one of: {valid}"):
        check_name(option, name)


def test_variant_tags_name_the_runs():
    assert TrainingVariant("blosam", "first_order", "fixed").tag == "blosam-first_order"
    assert TrainingVariant("blosam", "second_order", "alternate").tag == "blosam-second_order-alternate"
    single = TrainingVariant("single", "first_order", "fixed")
    assert single.tag == "single" and not single.bilevel
    with pytest.raises(ValueError, match="hypergradient 'third_order'"):
        TrainingVariant("blosam", "third_order", "fixed")


def test_cli_choices_come_from_the_registry(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--task", "polyp", "--data", "d", "--out", "o", "--method", "blosan"])
    err = capsys.readouterr().err
    assert all(f"'{m}'" in err for m in METHODS)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: list(a.choices) for a in train._actions if a.choices}
    from blosam_med.cli.train import AMP
    from blosam_med.model.encoder_engines import ENGINES

    assert choices == {
        "amp": list(AMP),
        "method": list(METHODS),
        "hypergradient": list(HYPERGRADIENTS),
        "roles": list(ROLES),
        "engine": list(ENGINES),
        "encoder_tail": [*ENCODER_TAILS, FROZEN_ENCODER],
    }


def test_cli_forwards_only_given_options():
    args = build_parser().parse_args(["train", "--task", "polyp", "--data", "d", "--out", "o", "--lr", "0.01"])
    assert args.lr == 0.01
    assert not any(hasattr(args, k) for k in ("seed", "method", "iterations", "batch_size", "resume"))


def _study(tmp_path, **study):
    path = tmp_path / "s.yaml"
    base = {"name": "x", "tasks": ["polyp"], "shots": [2], "seeds": [0], "methods": {"m": {"kind": "bundle"}}}
    path.write_text(yaml.safe_dump({"study": {**base, **study}}))
    return path


def test_study_set_typo_fails_at_load(tmp_path):
    path = _study(tmp_path, methods={"m": {"kind": "bundle", "set": {"method": "singel"}}})  # codespell:ignore singel
    with pytest.raises(
        ValueError, match=r"s.yaml: study.methods.m.set.method 'singel' is not one of: blosam, single"
    ):  # codespell:ignore singel
        load_study(path)
    with pytest.raises(ValueError, match=r"study.train.roles 'swap'"):
        load_study(_study(tmp_path, train={"roles": "swap"}))
    assert load_study(_study(tmp_path, train={"roles": "alternate"})).train == {"roles": "alternate"}
    with pytest.raises(ValueError, match=r"study.train.prompt_init 'points' is not one of: no_mask, box"):
        load_study(_study(tmp_path, train={"prompt_init": "points"}))
