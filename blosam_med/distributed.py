"""Several processes (GPUs, CPU processes, nodes) under ``torchrun``: the process group, sharded batches and averaged
gradients.

``torchrun`` starts one process per GPU (or per CPU worker) and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_process_group` joins them with ``init_method="env://"``, so one
machine and several nodes (``--nnodes``, ``--rdzv_backend c10d --rdzv_endpoint HOST:PORT``) need nothing more here.
The backend follows the device: ``nccl`` for CUDA, ``gloo`` for the CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

__all__ = [
    "ShardSampler",
    "average_",
    "backend_for",
    "barrier",
    "broadcast_",
    "gather_objects",
    "get_rank",
    "get_world_size",
    "destroy_process_group",
    "init_process_group",
    "is_distributed",
    "local_device",
    "shard_loader",
]

logger = logging.getLogger(__name__)

#: Variables ``torchrun`` sets for every process; :func:`init_process_group` needs them.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Whether a process group is initialised (in this process)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the group; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def local_device(device: str | torch.device = "auto") -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for ``auto`` (when CUDA is available) or a bare ``cuda``,
    the CPU otherwise. An explicit ``cuda:N`` is kept.

    Raises:
        ValueError: ``cuda`` requested on a machine without CUDA.
    """
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available on this machine; use cpu (gloo) or auto")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def backend_for(device: str | torch.device) -> str:
    """``nccl`` for a CUDA device, ``gloo`` for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(device: str | torch.device) -> tuple[int, int]:
    """Join the ``torchrun`` process group (``env://``) with the backend of ``device``; a no-op when already joined.

    Returns:
        (rank, world size).

    Raises:
        RuntimeError: not started by ``torchrun`` (its environment variables are missing), with the command to use.
    """
    if not is_distributed():
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"distributed run without torchrun: {', '.join(missing)} not set; start it with "
                "`torchrun --nproc_per_node N -m blosam_med ...` (one process per GPU or CPU worker)"
            )
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend_for(device), init_method="env://")
        logger.info(
            "rank %d of %d joined (%s, %s)", dist.get_rank(), dist.get_world_size(), backend_for(device), device
        )
    return get_rank(), get_world_size()


def barrier() -> None:
    """Wait for every process; nothing without a process group."""
    if is_distributed():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_(tensors: Sequence[torch.Tensor | None]) -> Sequence[torch.Tensor | None]:
    """All-reduce ``tensors`` in place to their mean over the processes (``None`` entries are skipped: a gradient that
    is unused on one process is unused on all, as they run the same graph). Returns ``tensors``."""
    if is_distributed() and dist.get_world_size() > 1:
        present = [t for t in tensors if t is not None]
        if present:
            flat = torch.cat([t.reshape(-1) for t in present])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for t in present:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
    return tensors


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with process ``src``'s values (e.g. parameters before training)."""
    if is_distributed() and dist.get_world_size() > 1:
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=src)


class ShardSampler(Sampler[int]):
    """This process's share of another sampler's global batches.

    The wrapped sampler yields the indices of global batches of ``global_batch_size`` in order; process ``rank`` gets
    the ``rank``-th contiguous slice of ``global_batch_size // world_size`` indices of each. So ``world_size``
    processes with per-process batches together see exactly the batches of one process with batch size
    ``global_batch_size``, and gradients averaged over the processes equal that process's gradient.
    ``set_epoch`` is passed on, so seeded per-epoch samplers (:class:`blosam_med.engine.fewshot.EpochSampler`) draw
    the same global sequence on every process.

    Args:
        sampler: the global sampler (every process builds the same one, with the same seed).
        global_batch_size: indices per global batch; divisible by ``world_size``.
        rank: this process's rank.
        world_size: number of processes.

    Raises:
        ValueError: the global batch or the number of samples does not divide into ``world_size`` equal shards.
    """

    def __init__(
        self, sampler: Sampler[int] | Sequence[int], global_batch_size: int, rank: int, world_size: int
    ) -> None:
        if not isinstance(sampler, Sized):
            raise ValueError("ShardSampler needs a sampler with a length (a fixed number of samples per epoch)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        if global_batch_size % world_size:
            raise ValueError(
                f"a global batch of {global_batch_size} does not split into {world_size} equal shards; "
                f"use a batch size per process and let the global batch be its multiple"
            )
        if len(sampler) % global_batch_size:
            raise ValueError(f"{len(sampler)} samples are not whole global batches of {global_batch_size}")
        self.sampler, self.global_batch_size = sampler, global_batch_size
        self.rank, self.world_size = rank, world_size
        self.shard = global_batch_size // world_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.world_size

    def __iter__(self) -> Iterator[int]:
        indices = list(self.sampler)
        start = self.rank * self.shard
        for batch in range(0, len(indices), self.global_batch_size):
            yield from indices[batch + start : batch + start + self.shard]


def shard_loader(loader: DataLoader, rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """A loader over ``loader``'s dataset giving this process its :class:`ShardSampler` share of every batch.

    ``loader`` must use a sampler and a batch size (its batch is the global batch); the shard loader keeps its
    dataset, collate function and workers. Without a process group (world size 1) ``loader`` is returned as is.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size == 1:
        return loader
    if loader.batch_size is None:
        raise ValueError("shard_loader needs a loader with a batch_size (not a batch_sampler)")
    if not isinstance(loader.sampler, Sampler):
        raise ValueError("shard_loader needs a loader with a sampler")
    sampler = ShardSampler(loader.sampler, loader.batch_size, rank, world_size)
    return DataLoader(
        loader.dataset,
        batch_size=sampler.shard,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def destroy_process_group() -> None:
    """Leave the process group; nothing without one."""
    if is_distributed():
        dist.destroy_process_group()
