"""Host RAM and disk of a run.

Host RAM at start: without ZeRO-3 every process loads the whole student (`from_pretrained` in `model.dtype`)
and deep-copies it into the teacher (teacher/variants.py). Under ZeRO-3 the student and the teacher are built
partitioned inside zero.Init and read file by file (models/partitioned.py): a process holds its runtime and,
on rank 0, one tensor of the memory-mapped file at a time. While training, a sleeping vLLM engine (sleep
level 1) keeps its weights in host memory, one bf16 copy per process.

Disk per checkpoint (ZeRO-3: each rank writes its own files, DeepSpeed's layout):
- zero_pp_rank_<r>_mp_rank_00_optim_states.pt: the fp32 master partitions and both Adam moments (12 bytes
  per partition element, in fp32 mode too);
- zero_pp_rank_<r>_mp_rank_00_model_states.pt: the frozen teacher's partitions (`frozen_param_fragments`)
  and, in Lightning's client state, the teacher shard again with the EMA's fp32 state
  (module.py `teacher_shard`), plus RNG states and small bookkeeping.
One process: one Lightning .ckpt with the state dict (student fp32, teacher copy, EMA fp32 buffers) and
AdamW's state. `save_last` writes one more full copy (DeepSpeed checkpoints are directories).
"""

from __future__ import annotations

from visd_exp.planning.assumptions import Assumptions
from visd_exp.planning.memory import Setting, separate_teacher_state, shard
from visd_exp.planning.models import ModelSpec
from visd_exp.planning.shapes import Shapes

GIB = 2**30


def host_ram(cfg, spec: ModelSpec, shapes: Shapes, st: Setting, assume: Assumptions, engine: str) -> dict:
    from visd_exp.planning.memory import DTYPE_BYTES

    loaded = DTYPE_BYTES[str(cfg.model.get("dtype", "float32"))]
    runtime = int(assume.host_runtime_gb * GIB)
    if st.stage == 3:
        per_process = runtime + max(p.numel for p in spec.params) * loaded  # one tensor read at a time
    else:
        per_process = spec.numel * loaded * (2 if st.has_copy else 1) + runtime
        if separate_teacher_state(st):
            per_process += 4 * spec.numel  # the EMA's fp32 buffers, built with the teacher
    sleeping = (
        spec.numel * 2 if engine == "vllm" and cfg.rollout.vllm.get("sleep_between_rollouts", True) else 0
    )
    return {
        "processes_per_node": shapes.devices,
        "per_process_at_start": per_process,
        "per_node_at_start": per_process * shapes.devices,
        "per_node_training": (int(assume.host_runtime_gb * GIB) + sleeping) * shapes.devices,
    }


def checkpoint_bytes(spec: ModelSpec, st: Setting) -> dict:
    """Bytes of one checkpoint, all ranks together, and per rank."""
    if st.stage == 3:
        s = sum(shard(p.numel, st.world) for p in spec.params)
        optim = 12 * s
        teacher = 2 * s * st.weight_bytes if st.has_copy else 0  # frozen fragments + the teacher shard
        state = 4 * s if separate_teacher_state(st) else 0
        per_rank = optim + teacher + state
        return {"per_rank": per_rank, "total": per_rank * st.world}
    numel = spec.numel
    copy = numel * st.teacher_bytes if st.has_copy else 0
    state = 4 * numel if separate_teacher_state(st) else 0
    total = 4 * numel + copy + state + 8 * numel
    return {"per_rank": total, "total": total}


def checkpoint_plan(cfg, spec: ModelSpec, st: Setting) -> dict:
    """One checkpoint's bytes and how many the callback keeps (`callbacks.model_checkpoint`): the project's
    BoundedCheckpoint keeps `keep_last` (+ `keep_steps`) and hard-links last.ckpt; Lightning's
    ModelCheckpoint keeps `save_top_k` (-1: all) and writes last.ckpt as one more copy."""
    one = checkpoint_bytes(spec, st)
    # read key by key, never resolved as a whole (its dirpath needs a running Hydra app)
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    every = callback.get("every_n_train_steps")
    out = {**one, "every_n_train_steps": every}
    if "keep_last" in callback:
        keep = callback.get("keep_last")
        kept = None if keep is None else int(keep) + len(callback.get("keep_steps") or [])
    else:
        top_k = callback.get("save_top_k", 1)
        kept = None if top_k == -1 else int(top_k) + (1 if callback.get("save_last") else 0)
    max_steps = int(cfg.trainer.get("max_steps", -1) or -1)
    if kept is None and every and max_steps > 0:
        kept = max_steps // int(every) + (
            0 if "keep_last" in callback else int(bool(callback.get("save_last")))
        )
    if kept is not None:
        out.update(kept=kept, run_total=kept * one["total"])
    elif every:
        out.update(per_1000_steps=(1000 // int(every)) * one["total"])
    return out
