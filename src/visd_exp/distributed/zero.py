"""DeepSpeed ZeRO helpers that the VISD step needs, each a no-op without DeepSpeed.

Under ZeRO-3 every parameter of the wrapped LightningModule (student AND teacher copy) is partitioned:
outside a forward a parameter holds only its rank's shard (`param.data` is empty, `param.ds_tensor` the
shard). So:

- teacher updates (EMA, sync) gather one layer at a time with `GatheredParameters`, the teacher's with
  `modifier_rank=0` so the written values are broadcast and re-partitioned (without it they are dropped);
- the gradient norm is summed over each rank's gradient partitions and all-reduced (`clip_grad_norm_`
  sees no `.grad` on partitioned parameters and reports 0);
- `generate` must run with `synced_gpus=True`: a rank that finishes early keeps joining the all-gathers
  of the others (transformers only detects ZeRO-3 from its own DeepSpeed config, which Lightning never sets);
- a full state dict (saving, test dumps) is gathered layer by layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def is_partitioned(module: nn.Module) -> bool:
    """True when the module's parameters are ZeRO-3 partitioned (they carry a `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def generate_sync_kwargs(model: nn.Module) -> dict:
    """Extra `generate` arguments: `synced_gpus=True` under ZeRO-3 with more than one rank."""
    return {"synced_gpus": True} if world_size() > 1 and is_partitioned(model) else {}


@contextlib.contextmanager
def gathered(params: list[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Full parameters inside the block (ZeRO-3); writes persist only with a modifier rank."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield


def paired_layers(teacher: nn.Module, student: nn.Module) -> Iterator[tuple[list, list]]:
    """(teacher params, student params) of each submodule that owns parameters, in the same order.

    A parameter shared by two modules (tied embeddings) is visited once, like `module.parameters()`.
    """
    seen: set[int] = set()
    t_modules, s_modules = list(teacher.modules()), list(student.modules())
    if len(t_modules) != len(s_modules):
        raise ValueError("teacher and student differ in structure: cannot pair their layers")
    for t_mod, s_mod in zip(t_modules, s_modules):
        pairs = [
            (t, s)
            for t, s in zip(t_mod.parameters(recurse=False), s_mod.parameters(recurse=False))
            if id(t) not in seen
        ]
        if not pairs:
            continue
        seen.update(id(t) for t, _ in pairs)
        yield [t for t, _ in pairs], [s for _, s in pairs]


@torch.no_grad()
def gathered_teacher_update(
    teacher: nn.Module, student: nn.Module, rate: float, state: list[torch.Tensor] | None = None
) -> None:
    """teacher <- teacher + rate (student - teacher) in fp32, one layer at a time (rate 1: a copy).

    `state`: the EMA's full fp32 tensors in `teacher.parameters()` order (the teacher's FP32State, when
    the copy is half precision); the lerp runs on them and the teacher is copied (rounded) from them.
    Every rank computes the same values on the gathered layer; rank 0's are broadcast and re-partitioned.
    """
    index = {id(p): i for i, p in enumerate(teacher.parameters())}
    for t_params, s_params in paired_layers(teacher, student):
        # a half-precision engine steps fp32 master weights: the EMA follows those, not their bf16 copy
        targets = [student_fp32(s) for s in s_params]  # collective (every rank) where it gathers
        with gathered(s_params), gathered(t_params, modifier_rank=0):
            for t, s, s32 in zip(t_params, s_params, targets):
                if t.shape != s.shape:
                    raise ValueError(f"teacher/student shape mismatch {tuple(t.shape)} vs {tuple(s.shape)}")
                value = s.data if s32 is None else s32.view_as(s.data)
                master = state[index[id(t)]] if state is not None else None
                if rate >= 1.0:
                    if master is not None:
                        master.copy_(value)
                    t.data.copy_(value)
                elif master is not None:
                    t.data.copy_(master.lerp_(value.to(master.dtype), rate))
                else:
                    t.data.copy_(t.data.float().lerp_(value.float(), rate))
    for t, s in zip(teacher.buffers(), student.buffers()):  # buffers are never partitioned
        t.copy_(s)


def student_fp32(param: nn.Parameter) -> torch.Tensor | None:
    """The fp32 master value of a half-precision parameter trained by a DeepSpeed engine, else None.

    `safe_get_full_fp32_param` gathers it from the optimizer's partitions (ZeRO-1/2/3; collective)."""
    if param.dtype not in (torch.bfloat16, torch.float16) or not param.requires_grad:
        return None
    if not (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")):
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    return safe_get_full_fp32_param(param)


def check_full_weights(student: nn.Module) -> None:
    """A teacher copied from partitioned parameters would hold empty shards: refuse, clearly."""
    if is_partitioned(student):
        raise RuntimeError(
            "the student is already ZeRO-3 partitioned: a deepcopy would copy empty shards. Build the "
            "teacher before the DeepSpeed engine wraps the module (VISDModule.__init__ does), or from the "
            "weights path"
        )


@torch.no_grad()
def gathered_state_dict(module: nn.Module, rank0_only: bool = True) -> dict[str, torch.Tensor] | None:
    """A full CPU state dict (parameters gathered one module at a time); None on other ranks if rank0_only.

    Collective under ZeRO-3: every rank must call it.
    """
    import torch.distributed as dist

    keep = not rank0_only or not dist.is_initialized() or dist.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for prefix, mod in module.named_modules():
        params = dict(mod.named_parameters(recurse=False))
        with gathered(list(params.values())):
            if keep:
                for name, p in params.items():
                    out[f"{prefix}.{name}" if prefix else name] = p.detach().to("cpu", copy=True)
        if keep:
            for name, b in mod.named_buffers(recurse=False):
                out[f"{prefix}.{name}" if prefix else name] = b.detach().to("cpu", copy=True)
    return out if keep else None


def deepspeed_engine(trainer):
    """The DeepSpeed engine when the trainer runs a DeepSpeed strategy, else None."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(strategy, DeepSpeedStrategy) and strategy.model is not None:
        return strategy.deepspeed_engine
    return None


@torch.no_grad()
def global_grad_norm(engine) -> torch.Tensor:
    """The 2-norm of the whole gradient between backward and step, over all ranks' partitions.

    ZeRO-3: each rank's fp32 gradient partitions (`safe_get_local_grad`), squared, summed, all-reduced.
    ZeRO-1/2: the optimizer's own all-reduced norm over its partitions. Stage 0: the reduced `.grad`.
    The engine's step clips with the same norm (config `gradient_clipping`).
    """
    import torch.distributed as dist

    stage = engine.zero_optimization_stage()
    device = engine.device
    if stage == 3:
        from deepspeed.utils import safe_get_local_grad

        total = torch.zeros((), dtype=torch.float64, device=device)
        for p in engine.module.parameters():
            if p.requires_grad and hasattr(p, "ds_id"):
                grad = safe_get_local_grad(p)
                if grad is not None:
                    total += grad.double().pow(2).sum()
        if dist.is_initialized():
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.sqrt().float()
    if stage in (1, 2):
        optimizer = engine.optimizer
        norm = optimizer.scaled_global_norm()
        norm = torch.as_tensor(norm, dtype=torch.float32, device=device) / float(optimizer.loss_scale)
        return torch.where(
            norm < 0, torch.full_like(norm, float("nan")), norm
        )  # -1: DeepSpeed's inf/NaN mark
    grads = [p.grad.detach().double().pow(2).sum() for p in engine.module.parameters() if p.grad is not None]
    return (torch.stack(grads).sum().sqrt() if grads else torch.zeros((), dtype=torch.float64)).float()


def accumulating_backward(module, calls: int, ends_window: bool):
    """`module.manual_backward` for the `calls` backward passes of one batch (one per micro-batch).

    Lightning runs the whole training_step inside ONE engine forward, and the micro-batch forwards
    call the model directly, so the engine sees several backward passes per forward and per step.
    Left alone, each backward would replace the previous one's gradient (measured: ZeRO-2 and ZeRO-3
    keep only the last micro-batch). So before each backward the ZeRO optimizer gets what an engine
    forward gives it (`clear_backward_seen_flag`: ZeRO-3 advances its micro-step, so it adds instead of
    copying), and the engine is told where the accumulation window ends (ZeRO-1/2 reduce there): at the
    last call of the batch that ends the window. Without DeepSpeed: `manual_backward` itself.
    """
    engine = deepspeed_engine(getattr(module, "_trainer", None))
    if engine is None:
        return module.manual_backward
    done = 0

    def backward(loss: torch.Tensor) -> None:
        nonlocal done
        done += 1
        clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()  # a no-op before the step's first backward
        engine.set_gradient_accumulation_boundary(ends_window and done == calls)
        module.manual_backward(loss)

    return backward


def clip_grad_norm(module, max_norm: float) -> torch.Tensor:
    """The step's grad norm (before clipping). Plain: torch's clip_grad_norm_ (clips here).
    DeepSpeed: the engine clips inside step() by the config's `gradient_clipping`; the true global norm here."""
    engine = deepspeed_engine(getattr(module, "_trainer", None))
    if engine is None:
        return torch.nn.utils.clip_grad_norm_(module.model.parameters(), max_norm)
    return global_grad_norm(engine)


def save_pretrained(model: nn.Module, path) -> bool:
    """`model.save_pretrained(path)`, gathered under ZeRO-3 and written by rank 0 only.

    Collective with more than one rank (every rank must call it); True where the files were written.
    """
    import torch.distributed as dist

    if not is_partitioned(model) and world_size() == 1:
        model.save_pretrained(path)
        return True
    state = gathered_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        return False
    model.save_pretrained(path, state_dict=state)
    return True


def ensure_fp32_teacher_state(module) -> bool:
    """Give an EMA teacher its fp32 state before a half-precision DeepSpeed engine casts it.

    DeepSpeed's bf16/fp16 mode casts every parameter of the wrapped module, the teacher copy included,
    so an EMA built from an fp32 student would then accumulate in bf16 (most updates round away). The
    teacher's FP32State (teacher/variants.py) is created here from the still-fp32 copy; DeepSpeed keeps
    fp32 buffers as they are. Under ZeRO-3 it is a full copy on every rank (buffers are not partitioned).
    True when a state was created.
    """
    teacher = getattr(module, "teacher", None)
    if (
        teacher is None
        or getattr(teacher, "kind", None) != "ema"
        or getattr(teacher, "master", 1) is not None
    ):
        return False
    from visd_exp.teacher.variants import FP32State

    teacher.master = FP32State(teacher.copy)
    return True


@contextlib.contextmanager
def gathered_for_generation(model: nn.Module) -> Iterator[None]:
    """`model`'s parameters gathered whole for the block, with ZeRO-3's per-module hooks taken off (so that a
    decode step fetches and releases nothing), then re-partitioned and the hooks put back
    (`rollout.hf.zero3_gather: once`). Without ZeRO-3: a no-op. Collective: every rank enters it.

    Memory: the whole model in its forward dtype on every rank for the duration (the planner's
    `rollout/gathered_weights`); every decode step then runs without a single all-gather, where the
    per-layer hooks gather every layer at every generated token (`per_layer`, the default)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    offload = getattr(getattr(params[0], "_z3_optimizer", None), "parameter_offload", None)
    if offload is None:
        raise RuntimeError(
            "rollout.hf.zero3_gather=once: the ZeRO-3 parameters have no optimizer yet (generate before "
            "the DeepSpeed engine exists?)"
        )
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            offload._register_deepspeed_module(offload.module)  # the hooks back, on the whole wrapped module
