"""Per-GPU memory item by item, and the peak over the phases of a step.

`rank_items` gives, for one rank, exactly what `visd_exp.distributed.memory.rank_memory` measures on the
real tensors (same keys), at train start (`phase="start"`) or after the first optimizer step:

- without DeepSpeed (one process): the student's fp32 weights (half ones are upcast to fp32 masters,
  precision.py), the teacher copy in the loaded dtype (`model.dtype`), AdamW's exp_avg and exp_avg_sq
  (fp32, one per parameter) and a 4-byte `step` per parameter tensor, fp32 gradients;
- DeepSpeed ZeRO-3 (DeepSpeed 0.19.8): each parameter of n elements is stored on each of the N ranks as
  ceil(n / N) elements (partition_parameters.py `_partition_param`: the tail padded); the engine casts
  the module to bf16 in its bf16 mode (teacher included). The optimizer keeps fp32 master partitions as
  storage of their own even in fp32 mode (stage3.py `_create_fp32_partitions` reuses the parameter buffer
  only when `device == self.device`, a torch.device compared with the string device name: never), the
  Adam moments of those partitions, one fp32 `step` per sub-group (one per non-empty parameter group:
  Lightning's sub_group_size 1e12), a gradient partition buffer in the gradient-accumulation dtype (the
  model's: bf16 in bf16 mode) and one reduce bucket of `reduce_bucket_size` elements in the
  communication dtype. Parameters of at most `stage3_param_persistence_threshold` elements stay whole
  on every rank once first gathered (after the first forward), on top of their partition;
- the teacher's fp32 state (teacher/variants.py `state_bytes`): the EMA's fp32 copy of the teacher (its
  partitions under ZeRO-3); a teacher copy that is itself fp32 is its own state (EMA or sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from visd_exp.planning.models import ModelSpec
from visd_exp.planning.shapes import Shapes

# DeepSpeed's zero_optimization defaults (deepspeed/runtime/zero/config.py), and Lightning's
# DeepSpeedStrategy defaults for what it sets itself (reduce_bucket_size, sub_group_size).
ZERO_DEFAULTS = {
    "stage3_param_persistence_threshold": 100_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_max_live_parameters": 1_000_000_000,
    "reduce_bucket_size": 200_000_000,
    "sub_group_size": 1_000_000_000_000,
}
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "auto": 2}


@dataclass(frozen=True)
class Setting:
    """What the per-rank items depend on besides the model's shapes."""

    world: int
    stage: int  # 0: no DeepSpeed
    teacher: str  # none | current | sync | ema
    weight_bytes: int  # trained weights as stored (ZeRO: the engine's dtype; else fp32 masters)
    teacher_bytes: int  # the teacher copy's dtype
    grad_bytes: int  # gradient partitions (DeepSpeed: grad accumulation dtype = the model dtype)
    zero: dict

    @property
    def has_copy(self) -> bool:
        return self.teacher in ("sync", "ema")


def setting_from(cfg, shapes: Shapes) -> Setting:
    dtype = str(cfg.model.get("dtype", "float32"))
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"model.dtype={dtype}: the planner knows {', '.join(DTYPE_BYTES)}")
    teacher = str((cfg.get("teacher") or {}).get("name") or "none")
    if shapes.deepspeed:
        engine = 2 if shapes.precision.startswith(("bf16", "16")) else 4
        strategy = cfg.trainer.strategy
        zero = dict(ZERO_DEFAULTS)
        zero.update({k: strategy[k] for k in ("reduce_bucket_size", "sub_group_size") if strategy.get(k)})
        zero.update(dict(strategy.get("zero_extra") or {}))
        return Setting(shapes.world, shapes.stage, teacher, engine, engine, engine, zero)
    return Setting(1, 0, teacher, 4, DTYPE_BYTES[dtype], 4, {})


def decay_groups(spec: ModelSpec) -> tuple[list, list]:
    """AdamW's two groups as utils/optim.py builds them: matrices decay; biases and norms do not."""
    decay = [p for p in spec.params if not (p.ndim < 2 or "norm" in p.name)]
    return decay, [p for p in spec.params if p.ndim < 2 or "norm" in p.name]


def shard(n: int, world: int) -> int:
    return math.ceil(n / world)


def sub_groups(params, world: int, size: int) -> list[int]:
    """Partition elements of each ZeRO-3 sub-group of one parameter group (stage3.py `_create_fp16_sub_groups`)."""
    numels = [shard(p.numel, world) for p in params]
    if not numels:
        return []
    if size >= sum(numels):
        return [sum(numels)]
    out, current = [], 0
    for i, n in enumerate(numels):
        current += n
        if current >= size or i == len(numels) - 1:
            out.append(current)
            current = 0
    return out


def all_sub_groups(spec: ModelSpec, st: Setting) -> list[int]:
    return [
        g for group in decay_groups(spec) for g in sub_groups(group, st.world, int(st.zero["sub_group_size"]))
    ]


def persistent_numel(spec: ModelSpec, st: Setting) -> int:
    threshold = int(st.zero.get("stage3_param_persistence_threshold", 0))
    return sum(p.numel for p in spec.params if p.numel <= threshold)


def rank_items(spec: ModelSpec, st: Setting, phase: str = "after_step") -> dict[str, int]:
    """This rank's bytes under `visd_exp.distributed.memory.KEYS` (module docstring), at `phase`
    ("start": train start, "after_step": after the first optimizer step)."""
    if phase not in ("start", "after_step"):
        raise ValueError(f"phase must be start or after_step, got {phase!r}")
    stepped = phase == "after_step"
    numel = spec.numel
    out = {"memory/model_fp32_bytes": 4 * numel}
    if st.stage == 3:
        s = sum(shard(p.numel, st.world) for p in spec.params)
        whole = persistent_numel(spec, st) if stepped else 0  # gathered at the first forward, then kept
        weights = (s + whole) * st.weight_bytes
        groups = all_sub_groups(spec, st)
        out["memory/student_weight_bytes"] = weights
        out["memory/teacher_weight_bytes"] = weights if st.has_copy else 0
        state = s * 4 if st.teacher == "ema" or (st.teacher == "sync" and st.weight_bytes == 4) else 0
        out["memory/teacher_state_bytes"] = state
        out["memory/optimizer_state_bytes"] = 4 * s + ((8 * s + 4 * len(groups)) if stepped else 0)
        out["memory/grad_bytes"] = s * st.grad_bytes
        out["memory/grad_bucket_bytes"] = int(st.zero["reduce_bucket_size"]) * st.weight_bytes
    elif st.stage == 0:
        out["memory/student_weight_bytes"] = 4 * numel
        out["memory/teacher_weight_bytes"] = numel * st.teacher_bytes if st.has_copy else 0
        fp32_copy = st.teacher_bytes == 4
        state = 4 * numel if st.teacher == "ema" or (st.teacher == "sync" and fp32_copy) else 0
        out["memory/teacher_state_bytes"] = state
        out["memory/optimizer_state_bytes"] = (8 * numel + 4 * len(spec.params)) if stepped else 0
        out["memory/grad_bytes"] = 4 * numel if stepped else 0
        out["memory/grad_bucket_bytes"] = 0
    else:
        raise ValueError(
            f"ZeRO stage {st.stage}: the planner models stage 3 (trainer=deepspeed) and one process without "
            "DeepSpeed; set trainer.strategy.stage=3"
        )
    return out


def separate_teacher_state(st: Setting) -> bool:
    """Whether the teacher's fp32 state is memory of its own (not the fp32 copy itself)."""
    return st.teacher == "ema" and st.teacher_bytes != 4


def persistent_items(spec: ModelSpec, st: Setting) -> list[tuple[str, int, str]]:
    """(name, bytes, what) of the memory a rank holds for the whole run, after the first step."""
    items = rank_items(spec, st, "after_step")
    sharded = f"1/{st.world} of each parameter" if st.stage == 3 else "whole"
    out = [
        ("student weights", items["memory/student_weight_bytes"], f"{sharded}, {st.weight_bytes} B/elem"),
        ("teacher weights", items["memory/teacher_weight_bytes"], f"teacher={st.teacher}, {sharded}"),
        (
            "teacher fp32 state",
            items["memory/teacher_state_bytes"] if separate_teacher_state(st) else 0,
            "EMA fp32 copy"
            + (" of this rank's partitions" if st.stage == 3 else "")
            + ("" if separate_teacher_state(st) else " (the fp32 copy itself: counted above)"),
        ),
        (
            "optimizer",
            items["memory/optimizer_state_bytes"],
            "fp32 masters + Adam exp_avg, exp_avg_sq + step",
        ),
        ("gradients", items["memory/grad_bytes"], f"{st.grad_bytes} B/elem partition buffer"),
        ("reduce bucket", items["memory/grad_bucket_bytes"], "reduce_bucket_size elements"),
    ]
    return out
