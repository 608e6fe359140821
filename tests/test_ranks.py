"""Decisions the ranks take together (distributed/ranks.py), with 2 real processes over gloo."""

from __future__ import annotations

import os

import torch.distributed as dist
import torch.multiprocessing as mp

from visd_exp.distributed.ranks import all_ranks


def _worker(rank: int, init_file: str, flags: list[bool], out: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out[rank] = [all_ranks(f) for f in flags[rank::2]]  # rank 0 takes even, rank 1 odd entries
    finally:
        dist.destroy_process_group()


def test_all_ranks_is_true_only_when_every_rank_agrees(tmp_path):
    # pairs (rank 0's flag, rank 1's flag): (T, T) (T, F) (F, T) (F, F)
    flags = [True, True, True, False, False, True, False, False]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(str(tmp_path / "init"), flags, out), nprocs=2, join=True)
        assert out[0] == out[1] == [True, False, False, False]


def test_all_ranks_is_the_flag_itself_in_one_process():
    assert all_ranks(True) is True and all_ranks(False) is False
