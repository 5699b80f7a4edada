"""Cell records: each finished cell's ``result.json`` mirrored into a folder meant to be committed
(``study.records``), so that a study's figures outlive its output folder (a new machine, a cleaned ``runs/``).

A record is the cell's result as written; a cell whose folder has no result but whose record exists is finished:
its ``result.json`` is restored from the record (``restored_from`` names it) and the cell is not run again. Delete
both to run a cell again. Adapters and masks stay in the output folder only (``--rescore`` needs them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from blosam_med.io import write_json
from blosam_med.study.config import Cell, StudyConfig

__all__ = ["record_path", "save_record", "sync_records", "RESULT_FILE"]

logger = logging.getLogger(__name__)

#: A cell is done when this file exists in its folder (written last, atomically).
RESULT_FILE = "result.json"


def record_path(config: StudyConfig, cell: Cell) -> Path | None:
    """``<records>/<cell id>.json``, or ``None`` when the study keeps no records."""
    return config.records / f"{cell.id}.json" if config.records else None


def save_record(config: StudyConfig, cell: Cell, result: dict[str, Any]) -> Path | None:
    """Write (or replace) ``cell``'s record from its result."""
    path = record_path(config, cell)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, {k: v for k, v in result.items() if k != "restored_from"}, overwrite=True)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable cell record ({err})") from err
    if not isinstance(data, dict) or "mean" not in data:
        raise ValueError(f"{path}: not a cell record (no 'mean' scores)")
    return data


def sync_records(config: StudyConfig, cells: Iterable[Cell] | None = None) -> dict[str, list[str]]:
    """Restore the results of recorded cells whose folder has none, and record finished cells that have no record
    yet (cells finished before the study kept records). Returns ``{"restored": [...], "saved": [...]}``.

    Raises:
        ValueError: a record that cannot be read (the message names the file).
    """
    done: dict[str, list[str]] = {"restored": [], "saved": []}
    if config.records is None:
        return done
    for cell in config.cells() if cells is None else cells:
        path = record_path(config, cell)
        result = config.output_dir / "cells" / cell.id / RESULT_FILE
        assert path is not None
        if result.is_file() and not path.is_file():
            save_record(config, cell, json.loads(result.read_text()))
            done["saved"].append(cell.id)
        elif path.is_file() and not result.is_file():
            result.parent.mkdir(parents=True, exist_ok=True)
            write_json(result, {**_read(path), "restored_from": str(path)})
            done["restored"].append(cell.id)
    if any(done.values()):
        logger.info(
            "study %s: %d cells restored from %s, %d recorded",
            config.name,
            len(done["restored"]),
            config.records,
            len(done["saved"]),
        )
    return done
