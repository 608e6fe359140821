"""This rank's memory by item, read from the real tensors (issue 23, item 7; what `visd_exp.plan` predicts).

`rank_memory(module, engine)` returns bytes (ints) under these keys:

- `memory/model_fp32_bytes`: the whole student in fp32, 4 x its total number of elements, whatever the
  sharding (a ZeRO-3 parameter's `ds_numel`, else `numel()`).
- `memory/student_weight_bytes`: this rank's storage of the student's parameters: under ZeRO-3 each
  parameter's shard `p.ds_tensor` plus `p.data` when the whole parameter is resident (a persistent
  parameter after its first forward, or one gathered right now); otherwise `p.data`.
- `memory/teacher_weight_bytes`: the same for the teacher's copy (0 for `teacher=current` or none).
- `memory/teacher_state_bytes`: the teacher's fp32 state on this rank (the EMA's fp32 tensors):
  `TeacherState.state_bytes()` when the teacher has it, else its `master` tensors; 0 when there is none.
- `memory/optimizer_state_bytes`: every tensor in the optimizer's state (AdamW: `exp_avg`, `exp_avg_sq`
  and the scalar `step`, one set per parameter the torch optimizer steps; they appear at the first
  step), plus, under DeepSpeed, the fp32 master partitions the torch optimizer steps when they are
  storage of their own (bf16 mode; in fp32 mode ZeRO-3 steps the parameter shards themselves, counted
  in `student_weight_bytes`).
- `memory/grad_bytes`: this rank's gradients: ZeRO-3's gradient partition buffer
  (`grad_partitions_flat_buffer`, in the gradient-accumulation dtype) and any fp32 gradient attached to
  the master partitions (only inside the optimizer step); without DeepSpeed the student's `p.grad`.
- `memory/grad_bucket_bytes`: DeepSpeed's reduce buckets (ZeRO-3: one `reduce_bucket_size` buffer per
  communication dtype, allocated at start; ZeRO-1/2: its ipg buffers); 0 without DeepSpeed.

Every item counts each storage once (views of one flat buffer are summed by their elements, a tensor
seen under two items is counted under the first). The values are exact integers: log them as
float64 (a float32 metric rounds above 2**24 bytes).
"""

from __future__ import annotations

import torch
from torch import nn

KEYS = (
    "memory/model_fp32_bytes",
    "memory/student_weight_bytes",
    "memory/teacher_weight_bytes",
    "memory/teacher_state_bytes",
    "memory/optimizer_state_bytes",
    "memory/grad_bytes",
    "memory/grad_bucket_bytes",
)


class _Ledger:
    """Sums tensor bytes, each region of memory once (keyed by address, element count and dtype)."""

    def __init__(self):
        self.seen: set[tuple] = set()

    def add(self, tensor) -> int:
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0 or tensor.device.type == "meta":
            return 0
        key = (tensor.device.type, tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key in self.seen:
            return 0
        self.seen.add(key)
        return tensor.numel() * tensor.element_size()

    def add_all(self, tensors) -> int:
        return sum(self.add(t) for t in tensors)


def _unique_params(module: nn.Module | None) -> list[nn.Parameter]:
    return list(module.parameters()) if module is not None else []  # parameters() skips shared ones


def _param_storage(param: nn.Parameter) -> list[torch.Tensor]:
    """The tensors a parameter occupies on this rank: its ZeRO-3 shard and its resident full data."""
    return [t for t in (getattr(param, "ds_tensor", None), param.data) if t is not None]


def _teacher_parts(module) -> tuple[nn.Module | None, object]:
    teacher = getattr(module, "teacher", None)
    return (getattr(teacher, "copy", None) if teacher is not None else None), teacher


def teacher_state_bytes(teacher) -> int:
    """The teacher's fp32 state on this rank: `state_bytes()` when it has one, else its `master` tensors."""
    if teacher is None:
        return 0
    if hasattr(teacher, "state_bytes"):
        return int(teacher.state_bytes())
    master = getattr(teacher, "master", None)
    if master is None:
        return 0
    tensors = master.tensors() if hasattr(master, "tensors") else list(master)
    ledger = _Ledger()
    return sum(ledger.add_all(_param_storage(t) if isinstance(t, nn.Parameter) else [t]) for t in tensors)


def _optimizers(module, engine) -> list:
    if engine is not None:
        return [engine.optimizer] if engine.optimizer is not None else []
    trainer = getattr(module, "_trainer", None)
    return list(trainer.optimizers) if trainer is not None else []


def _torch_optimizer(optimizer):
    """The torch optimizer inside a DeepSpeed ZeRO wrapper (or the optimizer itself)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def _state_tensors(optimizer) -> list[torch.Tensor]:
    base = _torch_optimizer(optimizer)
    state = getattr(base, "state", {}) or {}
    return [v for per_param in state.values() for v in per_param.values() if isinstance(v, torch.Tensor)]


def _master_partitions(optimizer) -> list[torch.Tensor]:
    """DeepSpeed's fp32 master partitions (ZeRO-3 `fp32_partitioned_groups_flat`, ZeRO-1/2
    `single_partition_of_fp32_groups`); empty for a plain torch optimizer."""
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):
        groups = getattr(optimizer, name, None)
        if groups:
            return [t for t in groups if isinstance(t, torch.Tensor)]
    return []


def _grad_tensors(optimizer, student_params) -> list[torch.Tensor]:
    tensors = [p.grad for p in student_params if p.grad is not None]
    flat = getattr(optimizer, "grad_partitions_flat_buffer", None)  # ZeRO-3
    if isinstance(flat, torch.Tensor):
        tensors.append(flat)
    tensors += [m.grad for m in _master_partitions(optimizer) if m.grad is not None]
    averaged = getattr(optimizer, "averaged_gradients", None)  # ZeRO-1/2: {group: [partition grads]}
    if isinstance(averaged, dict):
        tensors += [g for grads in averaged.values() if grads for g in grads if isinstance(g, torch.Tensor)]
    return tensors


def _bucket_tensors(optimizer) -> list[torch.Tensor]:
    tensors = []
    buckets = getattr(optimizer, "ipg_buckets", None)  # ZeRO-3: {dtype: IPGBucketZ3}
    if isinstance(buckets, dict):
        tensors += [getattr(b, "buffer", None) for b in buckets.values()]
    for name in ("ipg_buffer",):  # ZeRO-1/2 with contiguous gradients: a list of buffers
        buffers = getattr(optimizer, name, None)
        if buffers:
            tensors += list(buffers)
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def rank_memory(module, engine=None) -> dict[str, int]:
    """This rank's bytes by item (the module docstring says what each key counts).

    module: the LightningModule (its `model` is the student, `teacher` the TeacherState or None);
    engine: `visd_exp.distributed.zero.deepspeed_engine(trainer)` (None without DeepSpeed: the
    optimizer is then the trainer's). Not collective: each rank reads its own tensors.
    """
    student = module.model
    copy, teacher = _teacher_parts(module)
    student_params = _unique_params(student)
    ledger = _Ledger()
    out = dict.fromkeys(KEYS, 0)
    out["memory/model_fp32_bytes"] = 4 * sum(int(getattr(p, "ds_numel", p.numel())) for p in student_params)
    out["memory/student_weight_bytes"] = sum(ledger.add_all(_param_storage(p)) for p in student_params)
    shards = {t.untyped_storage().data_ptr() for p in student_params for t in _param_storage(p) if t.numel()}
    out["memory/teacher_weight_bytes"] = sum(ledger.add_all(_param_storage(p)) for p in _unique_params(copy))
    out["memory/teacher_state_bytes"] = teacher_state_bytes(teacher)
    for optimizer in _optimizers(module, engine):
        out["memory/optimizer_state_bytes"] += ledger.add_all(_state_tensors(optimizer))
        out["memory/optimizer_state_bytes"] += _separate_bytes(ledger, _master_partitions(optimizer), shards)
        out["memory/grad_bytes"] += ledger.add_all(_grad_tensors(optimizer, student_params))
        out["memory/grad_bucket_bytes"] += ledger.add_all(_bucket_tensors(optimizer))
    if not _optimizers(module, engine):
        out["memory/grad_bytes"] = ledger.add_all(p.grad for p in student_params if p.grad is not None)
    return out


def _separate_bytes(ledger: _Ledger, masters: list[torch.Tensor], shared: set[int]) -> int:
    """Bytes of the master partitions that are storage of their own, not in `shared` (the storages of
    the student's shards: in fp32 mode ZeRO-3's master partitions are views of its parameter buffer)."""
    return sum(ledger.add(m) for m in masters if m.numel() and m.untyped_storage().data_ptr() not in shared)
