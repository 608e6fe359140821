"""A callback for the memory tests: this rank's `rank_memory` at train start and after the first optimizer
step, written to <dirpath>/memory_rank<r>.json. Used with `+callbacks.memory_probe._target_=memory_probe.MemoryProbe`
and tests/ on PYTHONPATH."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from visd_exp.distributed.memory import rank_memory
from visd_exp.distributed.zero import deepspeed_engine


class MemoryProbe(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.records: dict[str, dict] = {}

    def record(self, name: str, trainer, pl_module) -> None:
        engine = deepspeed_engine(trainer)
        self.records[name] = {
            "memory": rank_memory(pl_module, engine),
            "global_step": trainer.global_step,
        }
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"memory_rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world_size": trainer.world_size, **self.records}, indent=1))

    def on_train_start(self, trainer, pl_module) -> None:
        self.record("start", trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "after_step" not in self.records and trainer.global_step >= 1:
            self.record("after_step", trainer, pl_module)
