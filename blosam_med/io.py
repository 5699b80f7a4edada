"""Atomic file writing: every output appears whole or not at all, and is never overwritten silently."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["OutputExistsError", "atomic_path", "atomic_write", "check_writable", "write_json"]


class OutputExistsError(FileExistsError):
    """An output file exists and overwriting was not requested."""


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Raise :class:`OutputExistsError` naming ``path`` when it exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite (overwrite=True) to replace it")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Example::

        with atomic_path("out/mask.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes[-2:]))
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | Path, data: Any, *, overwrite: bool = False) -> Path:
    """``data`` as indented JSON at ``path``, written atomically; values JSON cannot hold are written as ``str()``."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str) + "\n"), overwrite)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
