"""Full (gathered) student and teacher states after every optimizer step, for tests and debugging.

`callbacks.state_dump` (not in the defaults): at the start of training and at the start of every batch
(k optimizer steps done, the teacher already updated for step k) and at the end of training, rank 0
writes <dirpath>/state_<k>.pt = {"step": k, "student": ..., "teacher": ... or None, and "teacher_fp32" when
the EMA keeps an fp32 state} on the CPU. Under
ZeRO-3 the states are gathered one module at a time (every rank takes part).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from visd_exp.distributed.zero import gathered_state_dict


class GatheredStateDump(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def dump(self, trainer, pl_module) -> None:
        student = gathered_state_dict(pl_module.model)
        teacher = pl_module.teacher.copy if pl_module.teacher is not None else None
        teacher_state = gathered_state_dict(teacher) if teacher is not None else None
        master = getattr(pl_module.teacher, "master", None) if pl_module.teacher is not None else None
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            step = trainer.global_step
            state = {
                "step": step,
                "student": student,
                "teacher": teacher_state,
                "stepped": bool(pl_module.stepped),
            }
            if master is not None:  # the EMA's fp32 state (never partitioned), by teacher parameter name
                names = [name for name, _ in teacher.named_parameters()]
                state["teacher_fp32"] = {n: t.detach().cpu().clone() for n, t in zip(names, master.tensors())}
            torch.save(state, self.dirpath / f"state_{step:06d}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self.dump(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx > 0:
            self.dump(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.dump(trainer, pl_module)
