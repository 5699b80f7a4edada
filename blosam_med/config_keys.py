"""Unknown configuration keys are errors: each is refused with the valid keys, close matches first."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["suggest", "check_keys", "bundle_ids"]


def suggest(key: str, valid: Iterable[str]) -> str:
    """``"valid keys: <close matches first>, <the others>"`` for an unknown ``key`` (``difflib`` close matches).

    Nested bundle IDs (``a#b``) are offered as close matches only, so the list stays readable.
    """
    valid = sorted(set(valid))
    close = difflib.get_close_matches(key, valid, n=5, cutoff=0.6)
    others = [v for v in valid if "#" not in v and v not in close]
    return "valid keys: " + ", ".join([*close, *others])


def check_keys(found: Iterable[str], valid: Iterable[str], where: str) -> None:
    """Refuse keys of ``found`` that are not in ``valid``.

    Raises:
        ValueError: ``"<where>: unknown key 'epoch_lenght'; valid keys: epoch_length, ..."`` (the first unknown key).
    """
    valid = set(valid)
    for key in found:
        if key not in valid:
            raise ValueError(f"{where}: unknown key '{key}'; {suggest(str(key), valid)}")


def bundle_ids(files: Sequence[str | Path]) -> list[str]:
    """Every ID of the merged bundle config ``files`` (``lr``, ``task#shots``, ``train#handlers``...), as MONAI's
    ``ConfigParser`` names them; these are the keys ``--set`` and a study's ``train``/``set`` may override."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    ids: list[str] = []

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                ids.append(f"{prefix}{k}")
                walk(v, f"{prefix}{k}#")

    walk(parser.get(), "")
    return ids
