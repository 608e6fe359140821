"""The resumable training order, sharded across ranks.

One seeded permutation per epoch (the same on every rank, `ResumableSampler`'s), cut into global
batches of `batch_size x world_size`; rank r takes every world_size-th index of each global batch.
With one rank it yields exactly `ResumableSampler`'s batches. The exact-resume position is the number
of local batches each rank has consumed (`batches_seen`, equal on all ranks since they step together):
`start(batches_seen)` skips that many global batches, so every rank resumes at its own next batch.

It subclasses `DistributedSampler` so that Lightning leaves it in place (Lightning would otherwise wrap
a custom sampler in its own DistributedSamplerWrapper and lose the resume position).
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from visd_exp.data.datamodule import ResumableSampler


class ShardedResumableSampler(ResumableSampler, DistributedSampler):
    def __init__(self, num_samples: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if num_samples < batch_size * num_replicas:
            raise ValueError(
                f"{num_samples} training records cannot fill one global batch of "
                f"{batch_size} x {num_replicas} ranks"
            )
        # no DistributedSampler.__init__: it needs a dataset and only sets what is set here
        ResumableSampler.__init__(self, num_samples, batch_size * num_replicas, seed)
        self.local_batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        offset, self.offset = self.offset, 0
        self.epoch += 1
        usable = self.batches_per_epoch * self.batch_size  # whole global batches only
        yield from order[offset:usable][self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return self.batches_per_epoch * self.local_batch_size

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch is advanced by iteration and set by `start` (exact resume)."""


def train_sampler(num_samples: int, batch_size: int, seed: int, trainer=None) -> ResumableSampler:
    """The training sampler: sharded over the trainer's ranks when there is more than one."""
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    if world <= 1:
        return ResumableSampler(num_samples, batch_size, seed)
    return ShardedResumableSampler(num_samples, batch_size, seed, world, int(trainer.global_rank))
