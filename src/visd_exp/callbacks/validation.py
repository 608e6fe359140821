"""Greedy validation on the val split every N optimizer steps, logged as val/* at that step, and once
before the first step (`at_start`): every run shows where it started (the warm start's own numbers).

Metrics go straight to the loggers (not through `self.log`), so a row without validation does not
repeat the last val/* values.
"""

from __future__ import annotations

import itertools
import math

import lightning as L
import torch


def flatten(report: dict, prefix: str = "val") -> dict[str, float]:
    out = {}
    for key, value in report.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class ValidationCallback(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 50,
        max_samples: int = 32,
        max_completion_length: int = 160,
        at_start: bool = True,
    ):
        self.every_n_steps, self.max_samples = int(every_n_steps), int(max_samples)
        self.max_completion_length = int(max_completion_length)
        self.at_start = bool(at_start)

    def on_train_start(self, trainer, pl_module):
        """Step 0, before any update: the starting model's numbers (not on a resumed run)."""
        if (
            not self.at_start
            or self.every_n_steps <= 0
            or trainer.global_step > 0
            or trainer.datamodule is None
        ):
            return
        if "val" not in trainer.datamodule.datasets:
            return
        metrics = self.validate(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps <= 0 or step % self.every_n_steps or trainer.datamodule is None:
            return
        if not getattr(pl_module, "stepped", True):  # mid-way through a gradient-accumulation window
            return
        if "val" not in trainer.datamodule.datasets:
            return
        metrics = self.validate(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def validate(self, trainer, pl_module) -> dict[str, float]:
        from visd_exp.evaluation import predict, summarize_predictions

        loader = trainer.datamodule.val_dataloader()
        batches = itertools.islice(loader, math.ceil(self.max_samples / loader.batch_size))
        # Validation must not move training's RNG (exact resume): greedy decoding, and the state restored.
        rng = torch.get_rng_state()
        rows = list(predict(pl_module.model, pl_module.processor, batches, self.max_completion_length))
        torch.set_rng_state(rng)
        report = summarize_predictions(rows[: self.max_samples])
        report.pop("tasks", None)
        return {k: v for k, v in flatten(report).items() if not math.isnan(v)}
