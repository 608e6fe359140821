"""Where lambda is annealed (VISD section 3.4, Eq. 7): lambda_s as a function of the optimizer step.

Schedules (the `schedule` config group): linear (the paper: 0.5 -> 0 over 600 steps), cosine, constant,
step (start until the annealing length, then end). After it, every schedule but constant holds `end`.

The annealing length is `steps` optimizer steps, or, when `fraction` is set, that fraction of the run's
real optimizer steps (utils/run_length.py: max_steps, or the epochs' steps from the data and the
batch), so that it scales with the data: `fraction` replaces `steps` then.
"""

from __future__ import annotations

import logging
import math

import lightning as L

log = logging.getLogger(__name__)


def annealing_steps(cfg, total_steps: int | None = None) -> int:
    """The schedule's length in optimizer steps: `steps`, or `fraction` x `total_steps` (at least 1)."""
    fraction = cfg.get("fraction")
    if fraction is None:
        return int(cfg.steps)
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"schedule.fraction must be in (0, 1] (a share of the run), got {fraction}")
    if not total_steps:
        raise ValueError(
            f"schedule.fraction={fraction} needs the run's length in optimizer steps, and this run has "
            "none: set trainer.max_steps or trainer.max_epochs (or schedule.steps with schedule.fraction=null)"
        )
    return max(1, round(fraction * int(total_steps)))


def lambda_at(step: int, cfg, total_steps: int | None = None) -> float:
    """lambda at optimizer step `step` for a `schedule` config node (`total_steps`: the run's length,
    needed only by a `fraction`)."""
    name = cfg.name
    if name == "constant":
        return float(cfg.value)
    if name not in ("linear", "cosine", "step"):
        raise ValueError(f"schedule.name must be linear, cosine, constant or step, got {name!r}")
    start, end, steps = float(cfg.start), float(cfg.end), annealing_steps(cfg, total_steps)
    p = 1.0 if steps <= 0 else min(1.0, step / steps)
    if name == "linear":
        return start + (end - start) * p
    if name == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    return start if step < steps else end


def lambda_is_zero_for_good(step: int, cfg, total_steps: int | None = None) -> bool:
    """True when lambda is 0 now and at every later step: the teacher and judge can stop."""
    if cfg.name == "constant":
        return float(cfg.value) == 0.0
    return step >= annealing_steps(cfg, total_steps) and float(cfg.end) == 0.0


class LambdaSchedule(L.Callback):
    """Sets `pl_module.lam` before every training batch; its state goes into checkpoints. A `fraction`
    is resolved against the run's real optimizer steps on the first batch (and logged)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.total_steps: int | None = None  # the run's optimizer steps, when a fraction needs them
        known = cfg.name == "constant" or cfg.get("fraction") is None  # no run length needed at step 0
        self.lam = lambda_at(0, cfg) if known else float(cfg.start)
        self.finished = lambda_is_zero_for_good(0, cfg) if known else False

    def run_steps(self, trainer, pl_module) -> int | None:
        """The run's optimizer steps, computed once, only for a `fraction` schedule."""
        if self.cfg.name == "constant" or self.cfg.get("fraction") is None:
            return None
        if self.total_steps is None:
            from visd_exp.utils.run_length import planned_optimizer_steps

            self.total_steps = planned_optimizer_steps(
                trainer, getattr(pl_module, "accumulate_grad_batches", 1)
            )
            log.info(
                "schedule.fraction=%s of %s optimizer steps: lambda anneals over %d steps",
                self.cfg.fraction,
                self.total_steps,
                annealing_steps(self.cfg, self.total_steps),
            )
        return self.total_steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        total = self.run_steps(trainer, pl_module)
        self.lam = lambda_at(step, self.cfg, total)
        self.finished = lambda_is_zero_for_good(step, self.cfg, total)
        pl_module.lam = self.lam
        pl_module.teacher_active = not self.finished

    def state_dict(self) -> dict:
        return {"lam": self.lam, "finished": self.finished}

    def load_state_dict(self, state_dict: dict) -> None:
        self.lam = state_dict["lam"]
        self.finished = state_dict["finished"]
