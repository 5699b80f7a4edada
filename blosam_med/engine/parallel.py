"""Independent training runs at the same time, one process each, with this process's threads shared out between them.

The folds of a cross-fit are independent until their adapters are merged, so on a CPU they can train side by side:
each in its own process (``spawn``, so no thread pool or OpenMP state is inherited) with ``torch.set_num_threads``
set to its share of this process's threads (on the 2-core development CPU: 2 processes of 1 thread). A run in a process with ``t`` threads computes exactly what it computes in the parent
with ``t`` threads (``tests/engine/test_parallel.py``); with another thread count PyTorch's reductions round
differently (about 5e-6 in a LiteMedSAM decoder gradient), as they do between machines. Log records of the processes
are passed to the parent's loggers, so handlers there (the CLI's, pytest's ``caplog``) see them as if the runs had
been in the parent.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

__all__ = ["thread_budget", "parallel_workers", "run_parallel", "FOLD_WORKERS_ENV", "ProcessesUnavailable"]

logger = logging.getLogger(__name__)

#: Environment variable that sets the number of processes for a cross-fit's folds (1: one after the other).
FOLD_WORKERS_ENV = "BLOSAM_FOLD_WORKERS"


class ProcessesUnavailable(RuntimeError):
    """Worker processes cannot be started on this system; raised before any job ran."""


def thread_budget() -> int:
    """The threads this process may use: torch's intra-op threads (the cores by default; fewer with
    ``OMP_NUM_THREADS`` or ``torch.set_num_threads``), shared out between the worker processes."""
    import torch

    return max(1, torch.get_num_threads())


def parallel_workers(runs: int, *, on_cpu: bool, requested: int | None = None) -> int:
    """How many of ``runs`` independent runs to train at once.

    ``requested`` (or else the :data:`FOLD_WORKERS_ENV` variable) is used as given, capped at ``runs``. Otherwise:
    one process per run up to :func:`thread_budget` on the CPU (so ``OMP_NUM_THREADS=1`` keeps one run at a time), one
    run at a time on a GPU (the runs would share it).

    Raises:
        ValueError: a requested number that is not a whole number of at least 1 (the variable's name is given).
    """
    if requested is None and os.environ.get(FOLD_WORKERS_ENV, "").strip():
        text = os.environ[FOLD_WORKERS_ENV].strip()
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{FOLD_WORKERS_ENV}={text!r}: give a whole number of processes, 1 or more")
        requested = int(text)
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"{requested!r} fold processes: give a whole number, 1 or more")
        return max(1, min(requested, runs))
    if not on_cpu or runs < 2:
        return 1
    return max(1, min(runs, thread_budget()))


def _levels() -> dict[str, int]:
    """The parent's logger levels (root under ``""``), so each process forwards what the parent would show."""
    levels = {"": logging.getLogger().level}
    for name, item in logging.root.manager.loggerDict.items():
        if isinstance(item, logging.Logger) and item.level != logging.NOTSET:
            levels[name] = item.level
    return levels


def _init_worker(threads: int, queue: Any, levels: dict[str, int]) -> None:
    """Process start-up: its share of the cores, and its log records sent to the parent."""
    import torch

    torch.set_num_threads(threads)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(queue))
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def _forward_records(queue: Any) -> None:
    """The parent's side: each record from the processes goes to the logger of its name (``None`` ends)."""
    while True:
        record = queue.get()
        if record is None:
            return
        logging.getLogger(record.name).handle(record)


def run_parallel(
    fn: Callable[..., Any], jobs: Sequence[tuple[tuple, dict[str, Any]]], workers: int, threads: int | None = None
) -> list[Any]:
    """``fn(*args, **kwargs)`` for every job, ``workers`` processes at a time (``spawn``), each with ``threads`` torch
    threads (default: :func:`thread_budget` shared out evenly, at least one).

    ``fn`` and the arguments must be picklable (``fn`` a module-level function). Every job runs to its end even when
    another fails; then the first failure is raised again in the parent (its type and message kept).

    Returns:
        the results, in job order.

    Raises:
        ProcessesUnavailable: the system cannot start worker processes (before any job ran; run them in this process).
    """
    threads = threads or max(1, thread_budget() // max(1, workers))
    context = multiprocessing.get_context("spawn")
    try:
        queue = context.Queue()
    except (OSError, ImportError) as err:  # no POSIX semaphores (some sandboxes): nothing has run yet
        raise ProcessesUnavailable(f"cannot start worker processes here ({type(err).__name__}: {err})") from err
    listener = threading.Thread(target=_forward_records, args=(queue,), daemon=True)
    listener.start()
    logger.info("%d runs in %d processes, %d torch thread(s) each", len(jobs), workers, threads)
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads, queue, _levels())
        ) as pool:
            futures: list[Future] = [pool.submit(fn, *args, **kwargs) for args, kwargs in jobs]
            errors = [f.exception() for f in futures]
    finally:
        queue.put(None)
        listener.join()
        queue.close()
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        raise failed
    return [f.result() for f in futures]
