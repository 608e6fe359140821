"""Teacher variants (the `teacher` config group):

- none:    no teacher (plain GRPO).
- current: the student's own weights with the privileged context; no copy.
- sync:    a frozen copy of the student, refreshed every `every_n_steps` optimizer steps.
- ema:     theta_bar <- (1 - rate) theta_bar + rate theta after every optimizer step (Eq. 8, tau = 1 - rate).

The copy is in eval mode and never receives gradients. It is a submodule of the LightningModule, so
checkpoints carry it and device moves apply to it.

The EMA accumulates in fp32: theta_bar + 0.01 (theta - theta_bar) computed in bf16 is below half a rounding
step for most elements, so a bf16 EMA would never move. When the copy is in a half dtype (the student was
loaded in bf16), an fp32 state of its floating parameters (`master`, also in checkpoints) takes the update
and the copy used for the forward is refreshed from it; an fp32 copy is its own fp32 state.

Under DeepSpeed ZeRO-3 the copy is partitioned like the student and the fp32 state is per rank: each
rank keeps and updates the state of its own partitions only, locally (teacher/sharded.py), and
`state_bytes()` is this rank's share (about 1 / N of the model's fp32 bytes).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from visd_exp.distributed.zero import check_full_weights, gathered_teacher_update, is_partitioned
from visd_exp.teacher.sharded import TeacherShards


class TeacherState(nn.Module):
    """Holds the teacher weights (when the variant needs a copy) and updates them."""

    def __init__(
        self,
        kind: str,
        student: nn.Module,
        rate: float = 0.01,
        every_n_steps: int = 10,
        copy_module: nn.Module | None = None,
    ):
        """copy_module: the teacher copy when the caller built it (ZeRO-3: partitioned under zero.Init and
        filled from the student's partitions); otherwise a deepcopy of the unpartitioned student."""
        super().__init__()
        if kind not in ("current", "sync", "ema"):
            raise ValueError(f"teacher.name must be none, current, sync or ema, got {kind!r}")
        self.kind, self.rate, self.every_n_steps = kind, float(rate), int(every_n_steps)
        self.copy = None
        self.master = None  # the EMA's fp32 state when the copy is not fp32 (one process, ZeRO-1/2)
        if kind in ("sync", "ema"):
            if copy_module is None:
                check_full_weights(student)  # hook (DeepSpeed ZeRO-3): never deepcopy partitioned shards
                copy_module = copy.deepcopy(student)
            self.copy = copy_module.eval()
            self.copy.requires_grad_(False)
        # hook (DeepSpeed ZeRO-3): this rank's fp32 state of its own partitions (teacher/sharded.py), not buffers
        self._shards = None
        if self.copy is not None and is_partitioned(self.copy):
            self._shards = TeacherShards(self.copy, keep_fp32=kind == "ema")
        if (
            kind == "ema"
            and self._shards is None
            and any(p.dtype in (torch.bfloat16, torch.float16) for p in self.copy.parameters())
        ):
            self.master = FP32State(self.copy)

    @property
    def shards(self) -> TeacherShards | None:
        """The per-rank state under ZeRO-3 (None otherwise); found when DeepSpeed has partitioned the copy."""
        if self._shards is None and self.copy is not None and is_partitioned(self.copy):
            self._shards = TeacherShards(self.copy, keep_fp32=self.kind == "ema")
            self.master = None  # a full fp32 copy per rank is exactly what the shards replace
        return self._shards

    def prepare(self) -> None:
        """Create the per-rank fp32 state once the engine exists (after a checkpoint load, which sets it)."""
        if self.shards is not None:
            self.shards.ensure()

    def state_bytes(self) -> int:
        """This rank's fp32 teacher state in bytes (`memory/teacher_state_bytes`): the EMA's fp32 state (its
        own partitions under ZeRO-3), or the copy itself when it is fp32; sync: the copy's fp32 part."""
        if self.copy is None:
            return 0
        if self.shards is not None:
            return self.shards.nbytes()
        tensors = self.master.tensors() if self.master is not None else list(self.copy.parameters())
        return sum(t.numel() * t.element_size() for t in tensors if t.dtype == torch.float32)

    def model(self, student: nn.Module) -> nn.Module:
        """The network that scores the replay: the copy, or the student itself for `current`."""
        return student if self.copy is None else self.copy

    @torch.no_grad()
    def after_optimizer_step(self, student: nn.Module, step: int) -> None:
        """Called with the number of optimizer steps done so far (>= 1)."""
        if self.shards is not None:  # hook (DeepSpeed ZeRO-3): each rank updates its own partitions, locally
            if self.kind == "ema":
                self.shards.update(student, self.rate)  # Eq. 8, in fp32
            elif self.kind == "sync" and step % self.every_n_steps == 0:
                self.shards.update(student, 1.0)
        elif self.kind == "ema":
            ema_update(self.copy, student, self.rate, self.master)  # Eq. 8, in fp32
        elif self.kind == "sync" and step % self.every_n_steps == 0:
            sync_copy(self.copy, student)

    def train(self, mode: bool = True):  # the copy stays in eval mode whatever Lightning asks
        super().train(mode)
        if self.copy is not None:
            self.copy.eval()
        return self


class FP32State(nn.Module):
    """fp32 copies of a module's parameters, as buffers p0, p1, ... in `parameters()` order."""

    def __init__(self, module: nn.Module):
        super().__init__()
        params = list(module.parameters())
        for i, p in enumerate(params):
            self.register_buffer(
                f"p{i}", p.detach().to(torch.float32 if p.is_floating_point() else p.dtype, copy=True)
            )
        self.n_params = len(params)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f"p{i}") for i in range(self.n_params)]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, rate: float, state: FP32State | None = None) -> None:
    """theta_bar <- theta_bar + rate (theta - theta_bar) = (1 - rate) theta_bar + rate theta (Eq. 8).

    With `state` the lerp runs on its fp32 tensors and the teacher's parameters are copied (rounded)
    from them; without, in the teacher's own dtype. Buffers are copied from the student.
    """
    if is_partitioned(teacher):  # hook (DeepSpeed ZeRO-3): gather layer by layer, write with modifier_rank
        return gathered_teacher_update(teacher, student, rate, state.tensors() if state is not None else None)
    targets = state.tensors() if state is not None else list(teacher.parameters())
    for t, s in zip(targets, student.parameters()):
        t.lerp_(s.detach().to(t.dtype), rate)
    if state is not None:
        for t, m in zip(teacher.parameters(), targets):
            t.copy_(m)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


@torch.no_grad()
def sync_copy(teacher: nn.Module, student: nn.Module) -> None:
    if is_partitioned(teacher):  # hook (DeepSpeed ZeRO-3): gather layer by layer, write with modifier_rank
        return gathered_teacher_update(teacher, student, 1.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.copy_(s.detach())
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def teacher_kind(cfg) -> str | None:
    """The `teacher` config node's name (current, sync, ema), or None for `none` / no node."""
    node = cfg.get("teacher") if cfg is not None else None
    name = node.get("name", "none") if node is not None else "none"
    return None if name in (None, "none") else str(name)


def build_teacher(cfg, student: nn.Module, copy_module: nn.Module | None = None) -> TeacherState | None:
    """TeacherState for the `teacher` config node, or None for `none` (copy_module: see TeacherState)."""
    name = cfg.get("name", "none") if cfg is not None else "none"
    if name in (None, "none"):
        return None
    return TeacherState(
        name,
        student,
        rate=cfg.get("rate", 0.01),
        every_n_steps=cfg.get("every_n_steps", 10),
        copy_module=copy_module,
    )
