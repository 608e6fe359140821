"""The LightningModule: one GRPO step, top to bottom (VISD Algorithm 1 with lambda = 0).

    rollout (G per prompt) -> verifier rewards -> group advantages (Eq. 14)
    -> token advantages (A broadcast over tokens; VISD's teacher credit rescales them, Eq. 7)
    -> clipped surrogate (Eq. 9 / 16) -> backward -> clip grad norm -> AdamW step

Optimisation is manual so that every stage is visible here and timed as `timing/<stage>`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import lightning as L
import torch

from visd_exp.models import vision_token_ids
from visd_exp.objectives import clipped_surrogate_loss, group_advantages
from visd_exp.rewards import COMPONENTS, score_batch
from visd_exp.rollout.generation import generate_rollouts, policy_logprobs


class Stopwatch:
    """Accumulates wall time per stage of one step: `with watch("rollout"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, stage: str):
        watch = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                watch.seconds[stage] += time.perf_counter() - self.start

        return _Span()


def token_entropy(logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> float:
    """Mean entropy of the policy over valid completion positions (row by row, no grad)."""
    total, count = 0.0, mask.sum().item()
    with torch.no_grad():
        for row, row_mask in zip(logits, mask):
            logp = torch.log_softmax(row.float() / temperature, dim=-1)
            total += (-(logp.exp() * logp).sum(-1) * row_mask).sum().item()
    return total / max(count, 1.0)


class VISDModule(L.LightningModule):
    """Holds the student policy (and, for VISD, a teacher) and runs the training step."""

    def __init__(self, model, processor, cfg):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; rollouts switch to eval themselves
        self.processor = processor
        self.cfg = cfg  # the whole composed config (algorithm, reward, optim, ...)
        self.automatic_optimization = False
        self.suppress_ids = vision_token_ids(processor.tokenizer)

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.cfg.optim
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
        )
        warmup = max(0, int(optim.warmup_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_progress(self) -> float:
        max_steps = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else 1
        return min(1.0, self.global_step / max_steps)

    # -- the step -----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        algo = self.cfg.algorithm
        watch = Stopwatch()
        step_start = time.perf_counter()
        G = algo.num_generations

        # Step 1: on-policy rollouts from the old policy (Algorithm 1, line 7).
        with watch("rollout"):
            rollouts = generate_rollouts(self.model, self.processor, batch, algo, self.suppress_ids)

        # Step 2: verifier rewards and group-relative advantages (lines 10-12, Eq. 10 and 14).
        with watch("reward"):
            samples = [sample for sample in batch["samples"] for _ in range(G)]
            scores = score_batch(rollouts.texts, samples, progress=self.training_progress(), cfg=self.cfg.reward)
            rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
            advantages = group_advantages(rewards, G)

        # Step 3: token advantages. GRPO: A^_t = A for every token (VISD Eq. 7 with lambda = 0).
        mask = rollouts.completion_mask.float()
        token_advantages = advantages[:, None].expand_as(mask)

        # Step 4: the clipped surrogate on the student's log-probs (Eq. 9 / 16), one optimizer step.
        with watch("update"):
            optimizer = self.optimizers()
            scheduler = self.lr_schedulers()
            logprobs, logits = policy_logprobs(self.model, rollouts, algo.temperature)
            loss = clipped_surrogate_loss(logprobs, rollouts.old_logprobs, token_advantages, mask, algo.epsilon)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()

        with torch.no_grad():
            ratio = torch.exp(logprobs.detach() - rollouts.old_logprobs)
            clipped = ((ratio - 1.0).abs() > algo.epsilon).float()
            entropy = token_entropy(logits.detach(), mask, algo.temperature)
        grouped = rewards.view(-1, G)
        lengths = mask.sum(dim=1)
        metrics = {
            "loss": loss.detach(),
            "reward": rewards.mean(),
            "reward_std": grouped.std(dim=1, unbiased=False).mean(),
            "frac_reward_zero_std": (grouped.std(dim=1, unbiased=False) < 1e-6).float().mean(),
            "completions/mean_length": lengths.mean(),
            "completions/min_length": lengths.min(),
            "completions/max_length": lengths.max(),
            "completions/clipped_ratio": rollouts.truncated.float().mean(),
            "clip_ratio": (clipped * mask).sum() / mask.sum().clamp(min=1),
            "entropy": entropy,
            "grad_norm": grad_norm.detach().float(),
            "lr": scheduler.get_last_lr()[0],
            "progress": self.training_progress(),
        }
        for name in COMPONENTS:
            values = [s[name] for s in scores if s.get(name) is not None]
            metrics[f"rewards/{name}/mean"] = sum(values) / len(values) if values else math.nan
            metrics[f"rewards/{name}/active_frac"] = len(values) / len(scores)
        for stage, seconds in watch.seconds.items():
            metrics[f"timing/{stage}"] = seconds
        metrics["step_time"] = time.perf_counter() - step_start
        self.log_dict(
            {k: float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False, batch_size=len(batch["samples"])
        )
        self.log("train/reward", float(rewards.mean()), prog_bar=True, on_step=True, logger=False)
        self.last_rollouts = rollouts  # kept for callbacks that log samples
        self.last_scores = scores
        return loss.detach()
