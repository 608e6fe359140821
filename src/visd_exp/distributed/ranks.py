"""Per-rank state for exact resume with several processes.

Every rank has its own RNG stream (its rollouts differ, and under ZeRO-3 a rank whose generation ended
early draws no samples while it keeps the others company), but a checkpoint's client state is written
by rank 0 only. So the RNG states of all ranks are gathered into the checkpoint, and each rank restores
its own. The data position (`batches_seen`) is the same on every rank; it only means the same thing
with the same number of ranks, which is checked.
"""

from __future__ import annotations


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def rank_states(own: dict) -> dict:
    """{"world_size", "rng_by_rank"} to add to the checkpoint (collective: every rank calls it)."""
    dist = _dist()
    if dist is None:
        return {"world_size": 1}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, own)
    return {"world_size": dist.get_world_size(), "rng_by_rank": gathered}


def own_rank_state(state: dict, default: dict) -> dict:
    """This rank's RNG states from a checkpoint's `visd_state` (`default` for one-process checkpoints)."""
    dist = _dist()
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist is not None else (1, 0)
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise RuntimeError(
            f"the checkpoint was written by {saved_world} processes and this run has {world}: the data "
            "position (batches per rank) and the per-rank RNG streams would not resume exactly; resume "
            f"with trainer.devices x trainer.num_nodes = {saved_world}"
        )
    by_rank = state.get("rng_by_rank")
    return by_rank[rank] if by_rank else default


def all_ranks(flag: bool, device=None) -> bool:
    """True only if `flag` is true on every rank (one MIN all-reduce; `flag` itself with one process).

    For decisions one rank cannot take alone: under ZeRO-3 a rank that skips a step (its batch's videos all
    failed to decode, or its loss was not finite) stops joining the collectives the others are in, and the
    run hangs instead of failing. Deciding together keeps every rank on the same path.
    """
    dist = _dist()
    if dist is None:
        return bool(flag)
    import torch

    value = torch.tensor(1 if flag else 0, dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def max_over_ranks(value: float) -> float:
    """The largest of every rank's `value` (collective; `value` itself with one process)."""
    dist = _dist()
    if dist is None:
        return float(value)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, float(value))
    return max(gathered)
