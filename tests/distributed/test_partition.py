"""Sharded batches: the processes' shards of every global batch are exactly one process's batch."""

from __future__ import annotations

import pytest
import torch
from monai.data import Dataset
from torch.utils.data import DataLoader

from blosam_med.distributed import ShardSampler, average_, local_device, shard_loader
from blosam_med.engine.fewshot import EpochSampler


def test_shards_of_each_global_batch_are_the_single_process_batch():
    world, per_process = 3, 2
    loader = DataLoader(
        Dataset(list(range(10))),
        batch_size=world * per_process,
        sampler=EpochSampler(10, 4 * world * per_process, seed=7),
    )
    loader.sampler.set_epoch(3)
    single = [b.tolist() for b in loader]
    shards = [shard_loader(loader, rank=r, world_size=world) for r in range(world)]
    for s in shards:
        s.sampler.set_epoch(3)  # passed on to the EpochSampler: the same global draw on every process
    per_rank = [[b.tolist() for b in s] for s in shards]
    assert all(len(batches) == len(single) == 4 for batches in per_rank)
    for step, batch in enumerate(single):
        assert [i for r in range(world) for i in per_rank[r][step]] == batch
    loader.sampler.set_epoch(4)
    assert [b.tolist() for b in loader] != single  # epochs draw differently, so set_epoch must reach the sampler


def test_world_of_one_keeps_the_loader_and_bad_splits_are_refused():
    loader = DataLoader(Dataset(list(range(4))), batch_size=4, sampler=EpochSampler(4, 8))
    assert shard_loader(loader) is loader
    with pytest.raises(ValueError, match="does not split into 3 equal shards"):
        ShardSampler(loader.sampler, 4, rank=0, world_size=3)
    with pytest.raises(ValueError, match="not whole global batches"):
        ShardSampler(EpochSampler(4, 6), 4, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank 2 outside"):
        ShardSampler(loader.sampler, 4, rank=2, world_size=2)


def test_without_a_process_group_nothing_is_averaged_and_cuda_is_checked():
    grads = [torch.ones(2), None]
    assert average_(grads)[0].tolist() == [1.0, 1.0]
    assert local_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert local_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            local_device("cuda")
