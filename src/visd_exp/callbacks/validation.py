"""Greedy validation on the val split every N optimizer steps, logged as val/* at that step, and once
before the first step (`at_start`): every run shows where it started (the warm start's own numbers).

`sampled.num_generations` > 0 also samples that many completions per val prompt the way rollouts are
sampled (temperature, top-p, top-k), logged as val/sampled/*: the policy GRPO optimises, whose expected
reward is what it raises; greedy decoding of a model that samples off-format a third of the time is
another policy. The sampling draws from a fixed seed every time (the same random numbers at every step,
so step-to-step differences are the model's, not the draw's) and leaves training's RNG where it was.

Metrics go straight to the loggers (not through `self.log`), so a row without validation does not
repeat the last val/* values.
"""

from __future__ import annotations

import itertools
import logging
import math

import lightning as L
import torch

log = logging.getLogger(__name__)


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
        sampled: dict | None = None,
        batch_size: int | None = None,
    ):
        self.every_n_steps, self.max_samples = int(every_n_steps), int(max_samples)
        self.batch_size = int(batch_size) if batch_size else None  # prompts per generate call (null: data's)
        self.max_completion_length = int(max_completion_length)
        self.at_start = bool(at_start)
        sampled = dict(sampled or {})
        self.sampled_seed = int(sampled.pop("seed", 0))
        self.sampling = sampled if int(sampled.get("num_generations") or 0) > 0 else None
        if self.sampling is not None:
            unknown = set(self.sampling) - {"num_generations", "temperature", "top_p", "top_k"}
            if unknown:
                raise ValueError(f"callbacks.validation.sampled: unknown keys {sorted(unknown)}")

    def on_train_start(self, trainer, pl_module):
        """Step 0, before any update: the starting model's numbers (not on a resumed run)."""
        if self.every_n_steps <= 0 or trainer.datamodule is None:
            return
        if "val" not in trainer.datamodule.datasets:  # said once, not discovered from missing curves
            log.warning(
                "callbacks.validation is on (every %d steps) but the data has no val split "
                "(data.val_file): no val/* metrics will be logged",
                self.every_n_steps,
            )
            return
        if not self.at_start or trainer.global_step > 0:
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
        from visd_exp.evaluation import predict

        loader = trainer.datamodule.loader("val", shuffle=False, batch_size=self.batch_size)
        num_batches = math.ceil(self.max_samples / loader.batch_size)
        model, processor = pl_module.model, pl_module.processor
        # the run's rollout engine, holding the trainer's current weights (SFT has none: HF generate)
        engine = pl_module.rollout_engine() if hasattr(pl_module, "rollout_engine") else None
        # Validation must not move training's RNG (exact resume): greedy decoding, and the state restored.
        rng = torch.get_rng_state()
        rows = list(
            predict(
                model,
                processor,
                itertools.islice(loader, num_batches),
                self.max_completion_length,
                engine=engine,
            )
        )
        torch.set_rng_state(rng)
        metrics = self.summary(rows[: self.max_samples], "val")
        if self.sampling is not None:
            devices = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # every RNG it touches is restored on exit
                torch.manual_seed(self.sampled_seed)
                batches = itertools.islice(loader, num_batches)
                rows = list(
                    predict(model, processor, batches, self.max_completion_length, self.sampling, engine)
                )
            g = int(self.sampling["num_generations"])
            metrics.update(self.summary(rows[: self.max_samples * g], "val/sampled"))
        return metrics

    @staticmethod
    def summary(rows: list[dict], prefix: str) -> dict[str, float]:
        from visd_exp.evaluation import summarize_predictions

        report = summarize_predictions(rows)
        report.pop("tasks", None)
        return {k: v for k, v in flatten(report, prefix).items() if not math.isnan(v)}
