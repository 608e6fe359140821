"""Where lambda is annealed (VISD section 3.4, Eq. 7): lambda_s as a function of the optimizer step.

Schedules (the `schedule` config group): linear (the paper: 0.5 -> 0 over 600 steps), cosine, constant,
step (start until `steps`, then end). After `steps`, every schedule but constant holds `end`.
"""

from __future__ import annotations

import math

import lightning as L


def lambda_at(step: int, cfg) -> float:
    """lambda at optimizer step `step` for a `schedule` config node."""
    name = cfg.name
    if name == "constant":
        return float(cfg.value)
    start, end, steps = float(cfg.start), float(cfg.end), int(cfg.steps)
    p = 1.0 if steps <= 0 else min(1.0, step / steps)
    if name == "linear":
        return start + (end - start) * p
    if name == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    if name == "step":
        return start if step < steps else end
    raise ValueError(f"schedule.name must be linear, cosine, constant or step, got {name!r}")


def lambda_is_zero_for_good(step: int, cfg) -> bool:
    """True when lambda is 0 now and at every later step: the teacher and judge can stop."""
    if cfg.name == "constant":
        return float(cfg.value) == 0.0
    return step >= int(cfg.steps) and float(cfg.end) == 0.0


class LambdaSchedule(L.Callback):
    """Sets `pl_module.lam` before every training batch; its state goes into checkpoints."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.lam = lambda_at(0, cfg)
        self.finished = lambda_is_zero_for_good(0, cfg)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        self.lam = lambda_at(step, self.cfg)
        self.finished = lambda_is_zero_for_good(step, self.cfg)
        pl_module.lam = self.lam
        pl_module.teacher_active = not self.finished

    def state_dict(self) -> dict:
        return {"lam": self.lam, "finished": self.finished}

    def load_state_dict(self, state_dict: dict) -> None:
        self.lam = state_dict["lam"]
        self.finished = state_dict["finished"]
