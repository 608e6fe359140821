"""Multi-process training: DeepSpeed ZeRO-2/3 through Lightning (GPU, and CPU over gloo for tests),
gathered-parameter helpers for the teacher, the global grad norm, and rank-sharded resumable data
(`visd_exp.distributed.sampler`; the strategies are in `visd_exp.distributed.strategy`)."""

from visd_exp.distributed.zero import (
    check_full_weights,
    clip_grad_norm,
    deepspeed_engine,
    gathered_state_dict,
    gathered_teacher_update,
    generate_sync_kwargs,
    global_grad_norm,
    is_partitioned,
)

__all__ = [
    "check_full_weights",
    "clip_grad_norm",
    "deepspeed_engine",
    "gathered_state_dict",
    "gathered_teacher_update",
    "generate_sync_kwargs",
    "global_grad_norm",
    "is_partitioned",
]
