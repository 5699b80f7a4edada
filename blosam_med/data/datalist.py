"""Datalists in MONAI's decathlon JSON format: pairing a data folder, checking every pair, a seeded case-level
``training``/``test`` split, atomic writing, and reading back.

Supported layouts (auto-detected):

- ``images/`` + ``masks/`` (or ``labels/``) folders with files paired by stem (``a.png`` + ``a.png``,
  ``a.nii.gz`` + ``a.nii.gz``); pass the parent folder, or the two folders;
- DICOM series folders ``<case>/dicom/`` with a label map ``<case>/label.nii.gz`` on the series grid.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import load_decathlon_datalist

from blosam_med.data.dicom import is_dicom_file
from blosam_med.data.files import IMAGE_EXT, case_id
from blosam_med.data.loading import mask_values
from blosam_med.data.reading import read_image
from blosam_med.io import check_writable, write_json

__all__ = [
    "DatalistError",
    "find_pairs",
    "validate_pairs",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "open_datalist",
    "prepare_datalist",
]

logger = logging.getLogger(__name__)

_MASK_DIRS = ("masks", "labels")
_SERIES_LABELS = ("label.nii.gz", "label.nii")


class DatalistError(ValueError):
    """Problems found in a data folder, one per entry in :attr:`problems`, each naming its file."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s):\n  " + "\n  ".join(self.problems))


def _stems(folder: Path, problems: list[str]) -> dict[str, Path | None]:
    """Files (and non-empty folders) by stem; a duplicated stem is reported and maps to ``None``."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        is_image = p.is_file() and (p.name.lower().endswith(IMAGE_EXT) or is_dicom_file(p))
        if is_image or (p.is_dir() and any(p.iterdir())):
            found.setdefault(case_id(p), []).append(p)
    for stem, paths in found.items():
        if len(paths) > 1:
            problems.append(
                f"{paths[0]}: duplicate stem '{stem}' ({', '.join(p.name for p in paths)}); keep one file per case"
            )
    return {k: v[0] if len(v) == 1 else None for k, v in found.items()}


def _pair(images: Path, masks: Path | None) -> tuple[list[dict[str, str]], list[str]]:
    """Pairs (absolute paths, with ``case``) and the pairing problems."""
    problems: list[str] = []
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: image folder not found")
    if masks is None:
        for name in _MASK_DIRS:
            if (images / "images").is_dir() and (images / name).is_dir():
                images, masks = images / "images", images / name
                break
            if images.name == "images" and (images.parent / name).is_dir():
                masks = images.parent / name
                break
    if masks is None:
        cases = sorted(d for d in images.iterdir() if (d / "dicom").is_dir())
        if not cases:
            raise FileNotFoundError(
                f"{images}: no known layout (images/ + masks/, images/ + labels/, or "
                "<case>/dicom/ + <case>/label.nii.gz); pass --masks"
            )
        pairs = []
        for c in cases:
            label = next((c / n for n in _SERIES_LABELS if (c / n).is_file()), None)
            if label is None:
                problems.append(f"{c / 'dicom'}: missing mask: no {c / _SERIES_LABELS[0]} beside the series")
            else:
                pairs.append({"image": str((c / "dicom").resolve()), "label": str(label.resolve()), "case": c.name})
        return pairs, problems
    if not masks.is_dir():
        raise FileNotFoundError(f"{masks}: mask folder not found")
    imgs, msks = _stems(images, problems), _stems(masks, problems)
    problems += [
        f"{imgs[s] or images / s}: missing mask: no file with stem '{s}' in {masks}"
        for s in sorted(set(imgs) - set(msks))
    ]
    problems += [
        f"{msks[s] or masks / s}: mask without image: no file with stem '{s}' in {images}"
        for s in sorted(set(msks) - set(imgs))
    ]
    if not imgs and not problems:
        raise FileNotFoundError(f"{images}: no images found ({', '.join(IMAGE_EXT)} or DICOM series folders)")
    pairs = [
        {"image": str(img.resolve()), "label": str(msk.resolve()), "case": s}
        for s in sorted(set(imgs) & set(msks))
        if (img := imgs[s]) is not None and (msk := msks[s]) is not None
    ]
    return pairs, problems


def find_pairs(images_dir: str | Path, masks_dir: str | Path | None = None) -> list[dict[str, str]]:
    """Image/mask pairs ``{"image", "label", "case"}`` (absolute paths) of a data folder (see the module docs).

    Raises:
        FileNotFoundError: a folder is missing, or no layout is recognised.
        DatalistError: every duplicate stem, image without mask and mask without image.
    """
    pairs, problems = _pair(Path(images_dir), None if masks_dir is None else Path(masks_dir))
    if problems:
        raise DatalistError(problems)
    return pairs


def _check_pair(pair: dict, label_values: Sequence[int] | None, require_foreground: bool) -> list[str]:
    image_path, label_path = pair["image"], pair["label"]
    try:
        image = read_image(image_path)
    except (ValueError, FileNotFoundError, OSError) as err:
        return [str(err)]
    problems = []
    bad = int((~torch.isfinite(image.float())).sum())
    if bad:
        problems.append(f"{image_path}: {bad} NaN or infinite values")
    try:
        label = read_image(label_path, mask=True)
        lab = mask_values(label, label_path)
    except (ValueError, FileNotFoundError, OSError) as err:
        return problems + [str(err)]
    if tuple(lab.shape[1:]) != tuple(image.shape[1:]):
        return problems + [
            f"{label_path}: mask size {tuple(lab.shape[1:])} differs from image "
            f"{Path(image_path).name} size {tuple(image.shape[1:])}"
        ]
    values = torch.unique(lab)
    if not torch.equal(values, values.round()):
        problems.append(
            f"{label_path}: non-integer mask values (e.g. {values[values != values.round()][0]:.3g}); "
            "expected a label mask"
        )
        return problems
    present = sorted(int(v) for v in values.tolist() if v != 0)
    if label_values:
        unknown = [v for v in present if v not in label_values]
        if unknown:
            problems.append(
                f"{label_path}: mask values {unknown[:8]} are not in the declared label set {list(label_values)}"
            )
        foreground = [v for v in present if v in label_values]
    else:
        if len(present) > 1:
            problems.append(
                f"{label_path}: not a binary mask: values {present[:8]} besides 0; declare the label set "
                "(--label-values) or save 0/1 or 0/255 masks"
            )
        foreground = present
    if require_foreground and not foreground and not problems:
        problems.append(f"{label_path}: empty mask (no foreground); training needs foreground (or --allow-empty)")
    return problems


def validate_pairs(
    pairs: Sequence[dict], *, label_values: Sequence[int] | None = None, require_foreground: bool = True
) -> list[str]:
    """Check every pair and return all problems, each naming its file (empty list: all good).

    Checks: both readable; no NaN/inf; same spatial size (volumes compared after reorientation to RAS); the mask
    single-channel, integer, binary (one non-zero value) or within ``label_values``; foreground present
    (``require_foreground``); no duplicate ``case`` names.
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    for pair in pairs:
        case = pair.get("case") or case_id(pair["image"])
        if case in seen:
            problems.append(f"{pair['image']}: duplicate stem '{case}' (also {seen[case]})")
        seen[case] = pair["image"]
        problems += _check_pair(pair, label_values, require_foreground)
    return problems


def _split(pairs: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    cases = sorted({p["case"] for p in pairs})
    n_test = round(test_fraction * len(cases))
    if test_fraction > 0 and len(cases) > 1:
        n_test = min(max(n_test, 1), len(cases) - 1)
    elif len(cases) <= 1:
        n_test = 0
        if test_fraction > 0:
            logger.warning("only %d case: everything goes to training, the test split is empty", len(cases))
    random.Random(seed).shuffle(cases)
    test = set(cases[:n_test])
    return [p for p in pairs if p["case"] not in test], [p for p in pairs if p["case"] in test]


def build_datalist(
    images_dir: str | Path,
    masks_dir: str | Path | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    label_values: Sequence[int] | None = None,
    require_foreground: bool = True,
    validate: bool = True,
) -> dict[str, Any]:
    """Pair a data folder, check every pair, and split the cases into ``training`` and ``test``.

    Args:
        images_dir: an images folder, a task folder (``images/`` + ``masks/``/``labels/``), or a folder of
            ``<case>/dicom/`` series.
        masks_dir: the masks folder (default: found beside the images).
        test_fraction: share of cases (images, volumes) in ``test``; a case is never split.
        seed: seed of the split.
        label_values: mask values that are foreground; default: masks must be binary.
        require_foreground: an empty mask is a problem.
        validate: load and check every pair (pairing problems are always reported).

    Returns:
        a decathlon datalist dict with absolute paths (:func:`write_datalist` makes them relative).

    Raises:
        DatalistError: all problems found, each naming its file.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    pairs, problems = _pair(Path(images_dir), None if masks_dir is None else Path(masks_dir))
    if validate:
        problems += validate_pairs(pairs, label_values=label_values, require_foreground=require_foreground)
    if problems:
        raise DatalistError(problems)
    training, test = _split(pairs, test_fraction, seed)
    return {
        "name": Path(images_dir).resolve().name,
        "description": f"blosam prepare: seeded case-level split (test fraction {test_fraction}, seed {seed})",
        "labels": {"0": "background", "1": "foreground"},
        "blosam": {
            "label_values": list(label_values) if label_values else "binary",
            "seed": seed,
            "test_fraction": test_fraction,
        },
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }


def _is_section(value: Any) -> bool:
    """A datalist section: a list of entries (dicts)."""
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def write_datalist(datalist: dict[str, Any], out: str | Path, overwrite: bool = False) -> Path:
    """Write ``datalist`` as JSON atomically, with ``image``/``label`` paths relative to the file's folder.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
    """
    out = Path(out)
    check_writable(out, overwrite)
    folder = out.resolve().parent

    def rel(v: Any) -> Any:
        return os.path.relpath(Path(v).resolve(), folder) if isinstance(v, str) else v

    data = {
        k: [{kk: rel(vv) if kk in ("image", "label") else vv for kk, vv in it.items()} for it in v]
        if _is_section(v)
        else v
        for k, v in datalist.items()
    }
    return write_json(out, data, overwrite=overwrite)


def _read_json(path: Path) -> dict[str, Any]:
    """A datalist's JSON object; malformed JSON is refused naming the file, line and column."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; fix the file or write it "
            "again with blosam prepare"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a JSON text file ({err.reason} at byte {err.start})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a datalist is a JSON object with list sections, found a {type(raw).__name__}")
    return raw


def load_datalist(path: str | Path, split: str = "training") -> list[dict]:
    """One section of a datalist JSON with paths made absolute (MONAI ``load_decathlon_datalist``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the section is missing (the message lists the ones present).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found")
    raw = _read_json(path)
    sections = [k for k, v in raw.items() if _is_section(v)]
    if split not in sections:
        raise ValueError(f"{path}: no '{split}' section; found {', '.join(sections) or 'none'}")
    if not raw[split]:
        return []  # MONAI's reader fails on an empty list
    return load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split, base_dir=str(path.parent))


def open_datalist(
    data: str | Path | None, datalist_file: str | Path | None = None, seed: int = 0, test_fraction: float = 0.2
) -> dict[str, list[dict]]:
    """Every list section of a datalist, absolute paths: from ``datalist_file``, a JSON ``data``, ``data``'s
    ``datalist.json``, or else the pairs of the folder ``data`` with a seeded split (unvalidated)."""
    if not datalist_file and not data:
        raise ValueError("no data: give a data folder (dataset_dir) or a datalist JSON (datalist_file)")
    path = Path(datalist_file or data)  # type: ignore[arg-type]  # one of them is set (checked above)
    if path.is_dir() and (path / "datalist.json").is_file():
        path = path / "datalist.json"
    if path.is_file():
        raw = _read_json(path)
        sections = [k for k, v in raw.items() if _is_section(v)]
        return {k: load_datalist(path, k) for k in sections}
    if not path.exists():
        raise FileNotFoundError(f"{path}: datalist or data folder not found")
    logger.info("%s: no datalist.json; pairing the folder with a seeded split (seed %d)", path, seed)
    dl = build_datalist(path, test_fraction=test_fraction, seed=seed, validate=False)
    return {k: v for k, v in dl.items() if _is_section(v)}


def prepare_datalist(
    images_dir: str | Path,
    masks_dir: str | Path | None = None,
    *,
    out: str | Path,
    test_fraction: float = 0.2,
    seed: int = 0,
    label_values: Sequence[int] | None = None,
    require_foreground: bool = True,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """What ``blosam prepare`` does: check ``out`` is writable, build and check the datalist, write it.

    Nothing is written when any problem is found.

    Returns:
        the written path and the datalist (absolute paths).

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
        FileNotFoundError: a folder is missing.
        DatalistError: all problems found in the pairs, at once.
    """
    check_writable(out, overwrite)
    datalist = build_datalist(
        images_dir,
        masks_dir,
        test_fraction=test_fraction,
        seed=seed,
        label_values=label_values,
        require_foreground=require_foreground,
    )
    return write_datalist(datalist, out, overwrite=overwrite), datalist
