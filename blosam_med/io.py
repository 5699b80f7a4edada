"""Atomic file writing: every output appears whole or not at all, and is never overwritten silently."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "OutputExistsError",
    "OutputWriteError",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "check_output_folder",
    "torch_write_error",
    "write_json",
]


class OutputExistsError(FileExistsError):
    """An output file exists and overwriting was not requested."""


class OutputWriteError(OSError):
    """An output cannot be written (folder not writable, disk full, I/O error); the message names the path."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


#: errno values of a failed write that are reported as :class:`OutputWriteError` naming the output.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EFBIG})


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Raise :class:`OutputExistsError` naming ``path`` when it exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite to replace it")
    return path


def check_output_folder(folder: str | Path) -> Path:
    """Check, before any work, that files can be created in ``folder`` (or in the folder that will hold it).

    The nearest existing folder on the way is probed with a temporary file (permission bits alone say nothing
    for root or on read-only mounts); nothing is created when it fails.

    Raises:
        OutputWriteError: naming the folder: a file is in the way, or files cannot be created there.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputWriteError(errno.ENOTDIR, f"{folder}: cannot be created: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".blosam_probe.")
    except OSError as err:
        raise OutputWriteError(
            err.errno, f"{folder}: output folder is not writable ({existing}: {err.strerror or err})"
        ) from err
    os.close(fd)
    os.unlink(probe)
    return folder


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Example::

        with atomic_path("out/mask.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    path = check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes[-2:]))
    except OSError as err:
        raise OutputWriteError(err.errno, _write_failed(path, err)) from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, OutputWriteError) or err.errno not in WRITE_ERRNOS:
            raise
        raise OutputWriteError(err.errno, _write_failed(path, err)) from err
    except RuntimeError as err:  # torch.save reports a failed write (disk full) as a RuntimeError of its writer
        failed = torch_write_error(err, path)
        if failed is None:
            raise
        raise failed from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        write(tmp)
    return Path(path)


def torch_write_error(err: BaseException, path: str | Path) -> OutputWriteError | None:
    """An :class:`OutputWriteError` naming ``path`` when ``err`` is torch's report of a failed ``torch.save`` (a
    ``RuntimeError`` of its zip writer: disk full, I/O error), else ``None``."""
    if not isinstance(err, RuntimeError):
        return None
    if not any(s in str(err) for s in ("inline_container", "PytorchStreamWriter", "file write failed")):
        return None
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    full = folder.is_dir() and shutil.disk_usage(folder).free < 1 << 20
    reason = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if full else err
    message = _write_failed(path, reason)
    if path.is_dir():  # a writer of a library (MONAI's CheckpointSaver): the file is not known, and may be partial
        message = message.replace(": could not be written", ": a file in this folder could not be written", 1)
        message = message.replace("; nothing was replaced", "")
    return OutputWriteError(errno.ENOSPC if full else errno.EIO, message)


def _write_failed(path: Path, err: BaseException) -> str:
    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err).strip().splitlines()[-1]
    hint = "; free some space" if isinstance(err, OSError) and err.errno == errno.ENOSPC else ""
    return f"{path}: could not be written ({reason}){hint}; nothing was replaced"


def write_json(path: str | Path, data: Any, *, overwrite: bool = False) -> Path:
    """``data`` as indented JSON at ``path``, written atomically; values JSON cannot hold are written as ``str()``."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str) + "\n"), overwrite)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
