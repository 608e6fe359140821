"""Data-parallel evaluation: each rank decodes a shard of whole batches, rank 0 merges and reports once.

    torchrun --standalone --nproc_per_node 8 -m visd_exp.evaluate model_dir=... data_file=...
    python -m visd_exp.evaluate num_processes=2 ...      # spawns the ranks itself (one machine)

Batch k of the 1-process run (batch_size records, in the file's order) is decoded by rank k % world, with
the same records, so padding and hence greedy outputs are those of the 1-process run. Each rank writes
its rows as it goes to <out>/shards/predictions.rank<r>.jsonl (kept: nothing decoded is lost on a crash),
then rank 0 gathers them, checks that every batch came back exactly once, and writes the one
predictions.jsonl (in the file's order), report.json and report.md; benchmark scorers and the V-STaR
answer judge run on rank 0 only. gloo on the CPU, nccl on GPUs. A rank that fails stops the run with
its error; no merged report is written then.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch

from visd_exp.evaluate_runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def start(device_spec) -> Ranks:
    """This process's rank (torchrun's RANK / WORLD_SIZE / LOCAL_RANK; one process without them), its
    device, and the process group (gloo on the CPU, nccl on GPUs) when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, world, local)
    ranks = Ranks(rank, world, local, device)
    if ranks.parallel:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=60))
        log.info(
            "rank %d of %d on %s (%s, %d CPU threads)",
            rank,
            world,
            device,
            dist.get_backend(),
            torch.get_num_threads(),
        )
    return ranks


def shared_output_dir(ranks: Ranks, out_dir: Path) -> Path:
    """Rank 0's output directory on every rank (each rank's Hydra may have stamped its own time)."""
    if not ranks.parallel:
        return out_dir
    import torch.distributed as dist

    chosen = [str(out_dir)]
    dist.broadcast_object_list(chosen, src=0)
    if chosen[0] != str(out_dir):
        log.warning("rank %d: writing into rank 0's %s, not %s", ranks.rank, chosen[0], out_dir)
    return Path(chosen[0])


def rank0_first(ranks: Ranks, fn):
    """fn() on rank 0, then on the others: caches (the tiny model's build, synthetic videos) are written
    once, never by two ranks at a time."""
    if not ranks.parallel:
        return fn()
    import torch.distributed as dist

    if ranks.main:
        out = fn()
        dist.barrier()
        return out
    dist.barrier()
    return fn()


def finish(ranks: Ranks) -> None:
    if ranks.parallel:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shard(dataset, batch_size: int, ranks: Ranks) -> list[int]:
    """Keep this rank's whole batches (k % world == rank) in `dataset`; returns their numbers k."""
    n = len(dataset.records)
    total = math.ceil(n / batch_size)
    mine = list(range(ranks.rank, total, ranks.world_size))
    keep = [i for k in mine for i in range(k * batch_size, min(n, (k + 1) * batch_size))]
    dataset.records = [dataset.records[i] for i in keep]
    dataset.plans = [dataset.plans[i] for i in keep]
    if not mine:
        log.warning(
            "rank %d: %d batches for %d ranks, none for this rank", ranks.rank, total, ranks.world_size
        )
    return mine


class ShardWriter:
    """The rows of one rank, each with its (batch, position) in the 1-process order, written as they come."""

    def __init__(self, out_dir: Path, ranks: Ranks, batch_numbers: list[int]):
        self.ranks, self.batch_numbers = ranks, batch_numbers
        self.seen: list[int] = []  # the global number of each batch drawn from the loader
        self.keys: list[tuple[int, int]] = []  # (batch, position) of each sample, in predict's order
        self.rows: list[tuple[int, int, dict]] = []
        self.path = out_dir / "shards" / f"predictions.rank{ranks.rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")

    def tap(self, batches):
        """The loader's batches, each noted with its global number."""
        for j, batch in enumerate(batches):
            k = self.batch_numbers[j]
            self.seen.append(k)
            self.keys.extend((k, p) for p in range(len(batch["samples"])))
            yield batch

    def add(self, row: dict) -> None:
        k, p = self.keys[len(self.rows)]
        self.rows.append((k, p, row))
        self.handle.write(json.dumps({"batch": k, "position": p, **row}) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def merge(writer: ShardWriter, total_batches: int) -> list[dict] | None:
    """Every rank's rows gathered on rank 0 in the 1-process order (None on the other ranks).

    Loud when a batch is missing or came twice, or a rank's rows do not match its batches."""
    import torch.distributed as dist

    writer.close()
    ranks = writer.ranks
    if writer.seen != writer.batch_numbers:
        raise RuntimeError(
            f"rank {ranks.rank}: decoded batches {writer.seen}, but was given {writer.batch_numbers}"
        )
    payload = {"rank": ranks.rank, "batches": writer.seen, "rows": writer.rows}
    gathered = [None] * ranks.world_size if ranks.main else None
    dist.gather_object(payload, gathered, dst=0)
    if not ranks.main:
        return None
    batches = sorted(k for part in gathered for k in part["batches"])
    if batches != list(range(total_batches)):
        missing = sorted(set(range(total_batches)) - set(batches))
        raise RuntimeError(
            f"data-parallel merge: batches {missing} missing (or some came twice: {len(batches)} for "
            f"{total_batches}); no merged report written. Each rank's rows: {writer.path.parent}"
        )
    keyed = sorted(((k, p), row) for part in gathered for k, p, row in part["rows"])
    if len({key for key, _ in keyed}) != len(keyed):
        raise RuntimeError("data-parallel merge: two rows for one sample; no merged report written")
    log.info(
        "merged %d rows of %d batches from %d ranks (%s)",
        len(keyed),
        total_batches,
        ranks.world_size,
        ", ".join(f"rank {part['rank']}: {len(part['rows'])}" for part in gathered),
    )
    return [row for _, row in keyed]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(index: int, config: dict, world: int, port: int) -> None:
    os.environ.update(
        {
            "RANK": str(index),
            "LOCAL_RANK": str(index),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun: one thread per process unless told otherwise
        torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format=f"[rank {index}] %(name)s %(levelname)s %(message)s")
    from omegaconf import OmegaConf

    from visd_exp.evaluate import evaluate

    evaluate(OmegaConf.create(config))


def spawn(cfg, num_processes: int) -> dict:
    """`num_processes=N`: N ranks on this machine (torch.multiprocessing, spawn), then rank 0's report."""
    import torch.multiprocessing as mp
    from omegaconf import OmegaConf

    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ValueError(
            "num_processes>1 under torchrun: torchrun already started the ranks; drop num_processes"
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    config["num_processes"] = 1
    out_dir = Path(config["paths"]["output_dir"])
    log.info("evaluating on %d processes into %s", num_processes, out_dir)
    # A failing rank raises here (the others are terminated): no merged report is read then.
    mp.start_processes(
        _rank_main, args=(config, num_processes, free_port()), nprocs=num_processes, start_method="spawn"
    )
    return json.loads((out_dir / "report.json").read_text())
