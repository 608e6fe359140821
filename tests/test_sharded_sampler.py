"""Rank-sharded resumable data order (visd_exp.distributed.sampler): disjoint shards that together are
the one-rank order's global batches, and an exact resume position per rank."""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import DistributedSampler

from visd_exp.data.datamodule import ResumableSampler
from visd_exp.distributed.sampler import ShardedResumableSampler, train_sampler


def batches(sampler, batch_size: int, count: int) -> list[list[int]]:
    it = iter(sampler)
    return [list(itertools.islice(it, batch_size)) for _ in range(count)]


def test_one_rank_is_the_resumable_sampler():
    one = ShardedResumableSampler(23, 3, seed=5, num_replicas=1, rank=0)
    assert batches(one, 3, 7) == batches(ResumableSampler(23, 3, seed=5), 3, 7)
    assert isinstance(train_sampler(23, 3, 5, None), ResumableSampler)


def test_ranks_split_each_global_batch():
    n, b, world = 26, 2, 3  # global batch 6: 4 per epoch, 2 records left out
    shards = [ShardedResumableSampler(n, b, seed=1, num_replicas=world, rank=r) for r in range(world)]
    assert all(isinstance(s, DistributedSampler) for s in shards)  # Lightning leaves it in place
    per_rank = [batches(s, b, 4) for s in shards]
    assert all(len(s) == 4 * b for s in shards)
    reference = batches(ResumableSampler(n, b * world, seed=1), b * world, 4)
    for j in range(4):  # global batch j is exactly the ranks' j-th batches together
        together = sorted(i for r in range(world) for i in per_rank[r][j])
        assert together == sorted(reference[j])
    flat = [i for r in range(world) for batch in per_rank[r] for i in batch]
    assert len(flat) == len(set(flat)) == 24


@pytest.mark.parametrize("seen", [1, 3, 4, 6])
def test_resume_continues_each_rank_where_it_stopped(seen):
    n, b, world = 20, 2, 2  # 5 batches per epoch per rank
    for rank in range(world):
        full = ShardedResumableSampler(n, b, seed=3, num_replicas=world, rank=rank)
        reference = [batch for _ in range(3) for batch in batches(full, b, 5)]  # three epochs
        resumed = ShardedResumableSampler(n, b, seed=3, num_replicas=world, rank=rank)
        resumed.start(seen)
        epoch_rest = 5 - seen % 5
        got = batches(resumed, b, epoch_rest) + batches(resumed, b, 5)
        assert got == reference[seen : seen + epoch_rest + 5]


def test_too_few_records_for_one_global_batch():
    with pytest.raises(ValueError, match="global batch"):
        ShardedResumableSampler(3, 2, seed=0, num_replicas=2, rank=1)
