"""Cohort runs: cases split across processes, a status file per case, skip-finished reruns and a manifest.

Layout of an output folder::

    <out>/<case>...                 the case's outputs (NIfTI, PNG, DICOM-SEG), each written atomically
    <out>/.blosam_status/<case>.json  the case's status, written atomically by the process that ran it
    <out>/manifest.json               this run: every case with status done/skipped/failed, outputs, rank, error

A case's status file says ``running`` (with the planned outputs) before its outputs are written and ``done`` after,
or ``failed`` with the error. A rerun skips the cases whose status is ``done`` for the same adapters and options and
whose outputs all exist; it replaces the outputs a ``running`` or ``failed`` case left behind (they are listed in
its status file, so they are ours); an existing file that no status file lists is refused unless ``overwrite``.
A run killed halfway is therefore finished by running the same command again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from monai.data import partition_dataset

from blosam_med import distributed
from blosam_med.data import case_id
from blosam_med.io import OutputExistsError, write_json

__all__ = ["CaseLedger", "check_manifest", "run_signature", "shard_entries", "run_cohort", "STATUS_DIR", "MANIFEST"]

logger = logging.getLogger(__name__)

STATUS_DIR = ".blosam_status"
MANIFEST = "manifest.json"
#: Marks a manifest written by :func:`run_cohort`, which a rerun may replace.
MANIFEST_FORMAT = "blosam_med.manifest/1"

#: ``claim(paths)``: refuse outputs that are not ours, then record them as this case's planned outputs.
Claim = Callable[[dict[str, Path]], None]


def run_signature(adapters: Sequence[str | Path], **options: Any) -> str:
    """SHA-256 of the adapters' bytes and the options that change a case's outputs (formats, axis, labels...)."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for path in adapters:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


class CaseLedger:
    """The per-case status files of one output folder.

    Args:
        out_dir: the output folder.
        signature: :func:`run_signature` of this run; a ``done`` case of another signature is not finished.
    """

    def __init__(self, out_dir: str | Path, signature: str) -> None:
        self.out_dir, self.signature = Path(out_dir), signature
        self.folder = self.out_dir / STATUS_DIR

    def path(self, case: str) -> Path:
        return self.folder / f"{case}.json"

    def read(self, case: str) -> dict[str, Any] | None:
        """The case's status, or ``None`` (absent, or unreadable: then logged and treated as absent)."""
        path = self.path(case)
        if not path.is_file():
            return None
        try:
            status = json.loads(path.read_text())
            if not isinstance(status, dict) or status.get("case") != case:
                raise ValueError("not a status record of this case")
            return status
        except (OSError, ValueError) as err:
            logger.warning("%s: unreadable status file (%s); the case runs again", path, err)
            return None

    def finished(self, case: str) -> dict[str, Any] | None:
        """The ``done`` status of ``case`` when it was made with this signature and its outputs all exist."""
        status = self.read(case)
        if status is None or status.get("status") != "done" or status.get("signature") != self.signature:
            return None
        if not all(Path(p).is_file() for p in status.get("outputs", {}).values()):
            return None
        return status

    def mark(self, case: str, status: str, **fields: Any) -> dict[str, Any]:
        """Write the case's status file atomically; returns the record."""
        record = {"case": case, "status": status, "signature": self.signature, "time": time.time(), **fields}
        write_json(self.path(case), record, overwrite=True)
        return record

    def claim(self, case: str, outputs: dict[str, Path], overwrite: bool, **fields: Any) -> None:
        """Check ``outputs`` before a case writes them, then record them as the case's (status ``running``).

        Raises:
            OutputExistsError: an output exists that no status file of this case lists (not written by a run of
                ours), and ``overwrite`` is false.
        """
        previous = self.read(case) or {}
        ours = {str(p) for p in previous.get("outputs", {}).values()}
        for path in outputs.values():
            if Path(path).exists() and not overwrite and str(path) not in ours:
                raise OutputExistsError(
                    f"{path}: already exists and no earlier run of this folder wrote it; pass --overwrite to replace it"
                )
        self.mark(case, "running", outputs={k: str(v) for k, v in outputs.items()}, **fields)


def check_manifest(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse an existing ``<out_dir>/manifest.json`` that no cohort run wrote, unless ``overwrite``.

    Raises:
        OutputExistsError: naming the file.
    """
    path = Path(out_dir) / MANIFEST
    if overwrite or not path.exists():
        return
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = None
    ours = isinstance(found, dict) and (
        found.get("format") == MANIFEST_FORMAT or {"cases", "counts", "world_size"} <= set(found)  # older runs
    )
    if not ours:
        raise OutputExistsError(
            f"{path}: already exists and no blosam run wrote it; pass --overwrite to replace it, or choose another --out"
        )


def shard_entries(entries: Sequence[dict], rank: int, world_size: int) -> list[dict]:
    """The cases of process ``rank``: every ``world_size``-th entry (``monai.data.partition_dataset``, in order)."""
    if world_size == 1:
        return list(entries)
    return list(partition_dataset(list(entries), num_partitions=world_size, shuffle=False, even_divisible=False)[rank])


def _with_cases(entries: Iterable[dict]) -> list[dict]:
    """Entries with their ``case`` set; two inputs of one case name would write the same files, so they are refused."""
    out = [dict(e, case=e.get("case") or case_id(e["image"])) for e in entries]
    seen: dict[str, str] = {}
    for e in out:
        if e["case"] in seen:
            raise ValueError(
                f"{seen[e['case']]} and {e['image']}: both are case '{e['case']}' and would write the "
                "same outputs; rename one or run them into different folders"
            )
        seen[e["case"]] = str(e["image"])
    return out


def run_cohort(
    entries: Sequence[dict],
    run_case: Callable[[dict, Claim], dict[str, Any]],
    out_dir: str | Path,
    signature: str,
    *,
    overwrite: bool = False,
    description: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run this process's share of ``entries`` and, on rank 0, write ``<out_dir>/manifest.json`` for all of them.

    A case that raises is recorded as ``failed`` (status file, manifest, an error in the log naming the input) and
    the others go on. With a process group every process must call this; the manifest is written after all have
    finished their cases.

    Args:
        entries: datalist-style entries (``image``, optional ``case``).
        run_case: ``run_case(entry, claim) -> record`` predicts and writes one case; it calls ``claim(outputs)``
            with its output paths before writing any (record keys: ``kind``, ``slices``, ``outputs``).
        out_dir: the output folder.
        signature: :func:`run_signature` of the adapters and options.
        overwrite: recompute finished cases and replace any existing output.
        description: run facts stored in the manifest (input, adapters, formats...).

    Returns:
        every case's record of this run (all processes' cases, in input order): ``case``, ``image``, ``status``
        (``done``, ``skipped`` or ``failed``), ``rank``, ``outputs``, ``error``, ``seconds``, the ``run_case``
        record's ``kind`` and ``slices``, and the entry's ``partial`` when it has one (an animated GIF or multi-page
        TIFF of which the first frame was read).
    """
    rank, world = distributed.get_rank(), distributed.get_world_size()
    entries = _with_cases(entries)
    check_manifest(out_dir, overwrite)
    ledger = CaseLedger(out_dir, signature)
    started = time.time()
    mine = []
    for entry in shard_entries(entries, rank, world):
        mine.append(_run_one(entry, run_case, ledger, rank, overwrite))
    gathered = [r for records in distributed.gather_objects(mine) for r in records]
    order = {e["case"]: i for i, e in enumerate(entries)}
    records = sorted(gathered, key=lambda r: order[r["case"]])
    if rank == 0:
        counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")}
        manifest = {
            "format": MANIFEST_FORMAT,
            **(description or {}),
            "out": str(out_dir),
            "world_size": world,
            "started": started,
            "finished": time.time(),
            "counts": counts,
            "cases": records,
        }
        write_json(Path(out_dir) / MANIFEST, manifest, overwrite=True)
        logger.info(
            "%s: %d done, %d skipped (finished earlier), %d failed",
            Path(out_dir) / MANIFEST,
            counts["done"],
            counts["skipped"],
            counts["failed"],
        )
    return records


def _run_one(
    entry: dict, run_case: Callable[[dict, Claim], dict[str, Any]], ledger: CaseLedger, rank: int, overwrite: bool
) -> dict[str, Any]:
    case, image = entry["case"], str(entry["image"])
    base = {"case": case, "image": image, "rank": rank}
    if entry.get("partial"):  # an image of several frames (pages) whose first is read
        base["partial"] = entry["partial"]
    finished = None if overwrite else ledger.finished(case)
    if finished is not None:
        logger.info("%s: finished earlier (%s); skipped", case, ledger.path(case))
        return {
            **base,
            "status": "skipped",
            "outputs": finished.get("outputs", {}),
            "error": None,
            "seconds": 0.0,
            "kind": finished.get("kind"),
            "slices": finished.get("slices"),
        }
    start = time.perf_counter()
    try:
        result = run_case(entry, lambda outputs: ledger.claim(case, outputs, overwrite, image=image, rank=rank))
    except Exception as err:  # one bad case (corrupt file, refused output) must not stop the cohort
        message = f"{type(err).__name__}: {err}" if not isinstance(err, (ValueError, OSError)) else str(err)
        planned = (ledger.read(case) or {}).get("outputs", {})
        ledger.mark(case, "failed", image=image, rank=rank, error=message, outputs=planned)
        logger.error("case %s (%s) failed: %s", case, image, message)
        logger.debug("case %s traceback", case, exc_info=True)
        return {
            **base,
            "status": "failed",
            "outputs": {},
            "error": message,
            "seconds": round(time.perf_counter() - start, 3),
            "kind": None,
            "slices": None,
        }
    seconds = round(time.perf_counter() - start, 3)
    outputs = {k: str(v) for k, v in result.get("outputs", {}).items()}
    ledger.mark(
        case,
        "done",
        image=image,
        rank=rank,
        outputs=outputs,
        kind=result.get("kind"),
        slices=result.get("slices"),
        seconds=seconds,
    )
    return {
        **base,
        "status": "done",
        "outputs": outputs,
        "error": None,
        "seconds": seconds,
        "kind": result.get("kind"),
        "slices": result.get("slices"),
    }
