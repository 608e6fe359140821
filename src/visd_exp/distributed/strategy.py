"""Lightning's DeepSpeedStrategy, adapted to the VISD step (manual optimisation).

- `gradient_clipping` goes into the DeepSpeed config: Lightning refuses `gradient_clip_val` in manual
  optimisation, and under ZeRO `clip_grad_norm_` cannot see partitioned gradients. The engine clips
  inside `step()` by the global norm.
- After every engine step two cross-checks are logged: `grad_norm/engine` (the pre-clip global norm the
  engine computed) and `grad_norm/applied` (the global norm of the gradient the torch optimizer actually
  used, i.e. after the clip: <= gradient_clipping when the clip acts).
- `DeepSpeedCPUStrategy` lifts Lightning's CUDA-only check and selects DeepSpeed's CPU accelerator, so
  ZeRO-2/3 run with N CPU processes over gloo (tests; DeepSpeed's own CI runs ZeRO so).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy


class VISDDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeedStrategy with the clip in the DeepSpeed config and the applied grad norm logged."""

    strategy_name = "visd_deepspeed"

    def __init__(self, *args, gradient_clipping: float = 0.0, zero_extra: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if zero_extra:  # any other key of DeepSpeed's zero_optimization block
            self.config.setdefault("zero_optimization", {}).update(dict(zero_extra))
        if gradient_clipping and gradient_clipping < 0:
            raise ValueError(f"gradient_clipping must be >= 0, got {gradient_clipping}")
        self.config["gradient_clipping"] = float(gradient_clipping or 0.0)
        self._applied_sq = 0.0  # local sum of squares of the gradients the torch optimizer stepped with
        self._hooked = None

    def setup(self, trainer) -> None:
        # bf16/fp16: the engine casts the whole module; the EMA teacher keeps an fp32 state (zero.py)
        # (ZeRO-3: no full fp32 copy; each rank keeps the state of its own partitions, teacher/sharded.py)
        precision = str(getattr(self.precision_plugin, "precision", ""))
        teacher = getattr(self.lightning_module, "teacher", None)
        if self.zero_stage_3 and teacher is not None and getattr(teacher, "master", None) is not None:
            teacher.master = None  # a full fp32 copy on every rank: what the per-rank state replaces
        elif precision.startswith(("bf16", "16")) and self.lightning_module is not None:
            from visd_exp.distributed.zero import ensure_fp32_teacher_state

            ensure_fp32_teacher_state(self.lightning_module)
        super().setup(trainer)

    def _initialize_deepspeed_train(self, model) -> None:
        super()._initialize_deepspeed_train(model)
        engine = self.deepspeed_engine
        base = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer inside ZeRO
        if isinstance(base, torch.optim.Optimizer) and self._hooked is not base:
            base.register_step_pre_hook(self._record_applied_grad)
            self._hooked = base

    def _record_applied_grad(self, optimizer, args, kwargs) -> None:
        # ZeRO steps the torch optimizer once per parameter sub-group: accumulate over the calls, on the
        # device (one read per step in optimizer_step, not a device sync per parameter).
        squares = [
            p.grad.detach().double().pow(2).sum()
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if squares:
            self._applied_sq = self._applied_sq + torch.stack(squares).sum()

    def optimizer_step(self, optimizer, closure, model=None, **kwargs: Any) -> Any:
        self._applied_sq = 0.0
        out = super().optimizer_step(optimizer, closure, model, **kwargs)
        import torch.distributed as dist

        applied = torch.as_tensor(self._applied_sq, dtype=torch.float64)
        if dist.is_initialized():
            # ZeRO partitions the gradient: each rank stepped its own part (gloo and NCCL: on the engine's device)
            applied = applied.to(self.root_device)
            dist.all_reduce(applied, op=dist.ReduceOp.SUM)
        engine_norm = self.deepspeed_engine.get_global_grad_norm()
        module = self.lightning_module
        if module is not None and module._current_fx_name == "training_step":
            module.log("grad_norm/applied", float(applied.sqrt()), on_step=True, on_epoch=False, batch_size=1)
            if engine_norm is not None:
                module.log("grad_norm/engine", float(engine_norm), on_step=True, on_epoch=False, batch_size=1)
        return out


def use_cpu_accelerator() -> None:
    """Select DeepSpeed's CPU accelerator (communication falls back to gloo without oneCCL)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() != "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())


class DeepSpeedCPUStrategy(VISDDeepSpeedStrategy):
    """ZeRO on N CPU processes over gloo: the same engine code as on GPUs, testable on any machine."""

    strategy_name = "visd_deepspeed_cpu"

    def __init__(self, *args, **kwargs):
        use_cpu_accelerator()
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(*args, **kwargs)

    def setup_environment(self) -> None:
        # Lightning's DeepSpeedStrategy refuses anything but CUDAAccelerator here; skip to DDP's set-up.
        from lightning.pytorch.accelerators import CPUAccelerator

        if not isinstance(self.accelerator, CPUAccelerator):
            raise RuntimeError(
                f"DeepSpeedCPUStrategy runs on the CPU accelerator (trainer.accelerator=cpu), "
                f"got {type(self.accelerator).__name__}; use trainer=deepspeed on GPUs"
            )
        super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        # Lightning checks that CUDA device indices equal the local ranks; CPU devices have no index.
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        # Lightning passes `device_rank=root_device.index`, None for a CPU device; DeepSpeed needs a rank.
        import argparse

        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer
