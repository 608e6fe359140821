"""The teacher's state under DeepSpeed ZeRO-3: each rank keeps and updates its own shard only.

ZeRO-3 partitions every parameter of the wrapped module, the teacher copy included: parameter p of n
elements is stored on each of the N ranks as `p.ds_tensor`, a flat partition of ceil(n / N) elements
(the last rank's tail is padding). The student's fp32 master weights are partitioned the same way by
the optimizer (`safe_get_local_fp32_param`), element for element. So Eq. 8's EMA and the Sync-N copy
are local: rank r lerps (or copies) its fp32 partition of the student into its fp32 partition of the
teacher state and writes that into the teacher's own partition. No gather, no broadcast, and no rank
holds more than 1 / N of the state (`memory/teacher_state_bytes`).

The fp32 state: when the teacher's partitions are fp32 (trainer.precision=32-true) they are their own
fp32 state; when they are half precision (DeepSpeed's bf16 mode casts the module) a list of fp32
partitions (`TeacherShards.state`) takes the update and the teacher's partitions are rounded from it.
It starts from the teacher's partitions when the engine exists (DeepSpeed's bf16 masters start from the
bf16 weights too, so teacher state and student master start equal) and travels in every checkpoint,
rank by rank (each ZeRO-3 rank writes and reads its own checkpoint file), with the teacher's partitions.

Persistent parameters (`ds_persist`: ZeRO-3 keeps small parameters, below
`stage3_param_persistence_threshold` elements, whole on every rank) also hold the full value in
`p.data`: after the local update it is rebuilt from the ranks' partitions by one all-gather per such
parameter (small by definition).
"""

from __future__ import annotations

import torch
from torch import nn


def local_partition(param: nn.Parameter) -> torch.Tensor:
    """This rank's flat partition of a ZeRO-3 parameter (ceil(n / N) elements, padding included)."""
    return param.ds_tensor.data


def student_local_fp32(param: nn.Parameter) -> torch.Tensor:
    """The student's fp32 value on this rank's partition: the optimizer's fp32 master partition when the
    parameter is trained by a ZeRO-3 optimizer, else its own partition upcast."""
    if param.requires_grad and getattr(param, "_z3_optimizer", None) is not None:
        from deepspeed.utils import safe_get_local_fp32_param

        value = safe_get_local_fp32_param(param)
        if value is not None:
            return value.view(-1)
    return local_partition(param).float().view(-1)


def _refresh_persistent(param: nn.Parameter) -> None:
    """Rebuild the full `p.data` of a persistent (always gathered) parameter from every rank's partition.
    Collective; a persistent parameter not gathered yet (before its first forward) is left to its first fetch."""
    import torch.distributed as dist
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if param.ds_status != ZeroParamStatus.AVAILABLE:
        return
    part = local_partition(param).contiguous()
    pieces = [torch.empty_like(part) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, part)
    full = torch.cat(pieces)[: param.ds_numel].view(param.ds_shape)
    param.data.copy_(full.to(param.data.dtype))


class TeacherShards:
    """The fp32 teacher state of this rank's partitions, and the local EMA / sync updates."""

    def __init__(self, teacher: nn.Module, keep_fp32: bool = True):
        """keep_fp32: keep an fp32 state of half-precision partitions (the EMA); the Sync-N copy needs none."""
        self.teacher, self.keep_fp32 = teacher, keep_fp32
        self.state: list[torch.Tensor] | None = None  # None until `ensure`; [] when the partitions are fp32

    def params(self) -> list[nn.Parameter]:
        return list(self.teacher.parameters())

    def ensure(self) -> None:
        """Create the fp32 state from the teacher's partitions (once; a checkpoint load sets it instead)."""
        if self.state is not None:
            return
        parts = [local_partition(p) for p in self.params()]
        fp32 = all(t.dtype == torch.float32 for t in parts)
        self.state = [] if fp32 or not self.keep_fp32 else [t.float().clone() for t in parts]

    def fp32_tensors(self) -> list[torch.Tensor]:
        """The tensors the update writes: the separate fp32 partitions, else the partitions themselves."""
        self.ensure()
        return self.state if self.state else [local_partition(p) for p in self.params()]

    def nbytes(self) -> int:
        """Bytes of this rank's fp32 teacher state (`memory/teacher_state_bytes`)."""
        return sum(t.numel() * 4 for t in self.fp32_tensors() if t.dtype == torch.float32)

    @torch.no_grad()
    def update(self, student: nn.Module, rate: float) -> None:
        """theta_bar <- theta_bar + rate (theta - theta_bar) on this rank's partitions (Eq. 8); rate 1: a copy."""
        self.ensure()
        t_params, s_params = self.params(), list(student.parameters())
        if len(t_params) != len(s_params):
            raise ValueError("teacher and student differ in structure: cannot pair their partitions")
        targets = self.fp32_tensors()
        for t, s, target in zip(t_params, s_params, targets):
            if t.ds_numel != s.ds_numel:
                raise ValueError(f"teacher/student shape mismatch {tuple(t.ds_shape)} vs {tuple(s.ds_shape)}")
            value = student_local_fp32(s)
            if rate >= 1.0:
                target.view(-1).copy_(value)
            else:
                target.view(-1).lerp_(value.to(target.dtype), rate)
            if target is not local_partition(t):
                local_partition(t).copy_(target.view_as(local_partition(t)))
            if getattr(t, "ds_persist", False):
                _refresh_persistent(t)
        for t, s in zip(self.teacher.buffers(), student.buffers()):  # buffers are never partitioned
            t.copy_(s)

    def state_dict(self) -> dict:
        """This rank's teacher partitions and fp32 state, for this rank's checkpoint file."""
        import torch.distributed as dist

        self.ensure()
        return {
            "rank": dist.get_rank() if dist.is_initialized() else 0,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "partitions": [local_partition(p).detach().cpu().clone() for p in self.params()],
            "fp32_state": [t.detach().cpu().clone() for t in self.state],
        }

    @torch.no_grad()
    def load_state_dict(self, saved: dict) -> None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        if (saved["rank"], saved["world_size"]) != (rank, world):
            raise RuntimeError(
                f"the checkpoint's teacher shard was written by rank {saved['rank']} of {saved['world_size']}, "
                f"read by rank {rank} of {world}: resume a ZeRO-3 run with the same number of processes"
            )
        params = self.params()
        if len(saved["partitions"]) != len(params):
            raise RuntimeError("the checkpoint's teacher shard does not match this model's parameters")
        for p, part in zip(params, saved["partitions"]):
            local_partition(p).copy_(part.to(local_partition(p).device))
            if getattr(p, "ds_persist", False):
                _refresh_persistent(p)
        device = local_partition(params[0]).device if params else "cpu"
        self.state = [t.to(device) for t in saved["fp32_state"]]
