"""Teacher variants (the `teacher` config group):

- none:    no teacher (plain GRPO).
- current: the student's own weights with the privileged context; no copy.
- sync:    a frozen copy of the student, refreshed every `every_n_steps` optimizer steps.
- ema:     theta_bar <- (1 - rate) theta_bar + rate theta after every optimizer step (Eq. 8, tau = 1 - rate).

The copy is in eval mode and never receives gradients. It is a submodule of the LightningModule, so
checkpoints carry it and device moves apply to it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class TeacherState(nn.Module):
    """Holds the teacher weights (when the variant needs a copy) and updates them."""

    def __init__(self, kind: str, student: nn.Module, rate: float = 0.01, every_n_steps: int = 10):
        super().__init__()
        if kind not in ("current", "sync", "ema"):
            raise ValueError(f"teacher.name must be none, current, sync or ema, got {kind!r}")
        self.kind, self.rate, self.every_n_steps = kind, float(rate), int(every_n_steps)
        self.copy = None
        if kind in ("sync", "ema"):
            self.copy = copy.deepcopy(student).eval()
            self.copy.requires_grad_(False)

    def model(self, student: nn.Module) -> nn.Module:
        """The network that scores the replay: the copy, or the student itself for `current`."""
        return student if self.copy is None else self.copy

    @torch.no_grad()
    def after_optimizer_step(self, student: nn.Module, step: int) -> None:
        """Called with the number of optimizer steps done so far (>= 1)."""
        if self.kind == "ema":
            ema_update(self.copy, student, self.rate)
        elif self.kind == "sync" and step % self.every_n_steps == 0:
            sync_copy(self.copy, student)

    def train(self, mode: bool = True):  # the copy stays in eval mode whatever Lightning asks
        super().train(mode)
        if self.copy is not None:
            self.copy.eval()
        return self


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, rate: float) -> None:
    """theta_bar <- theta_bar + rate (theta - theta_bar) = (1 - rate) theta_bar + rate theta (Eq. 8)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.lerp_(s.detach().to(t.dtype), rate)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


@torch.no_grad()
def sync_copy(teacher: nn.Module, student: nn.Module) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.copy_(s.detach())
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def build_teacher(cfg, student: nn.Module) -> TeacherState | None:
    """TeacherState for the `teacher` config node, or None for `none`."""
    name = cfg.get("name", "none") if cfg is not None else "none"
    if name in (None, "none"):
        return None
    return TeacherState(name, student, rate=cfg.get("rate", 0.01), every_n_steps=cfg.get("every_n_steps", 10))
