"""The LightningModule: one VISD step, top to bottom (VISD Algorithm 1).

    rollout (G per prompt) -> verifier rewards -> group advantages A (Eq. 14)
    -> judge feedback f per rollout -> teacher replays the SAME tokens with r = (a*, e, f)
    -> Delta_t (top-K support or sampled token, Eq. 4) -> m_t (Eq. 5-6) -> A^_t (Eq. 7)
    -> clipped surrogate (Eq. 9 / 16) -> backward -> clip grad norm -> AdamW step
    (callbacks then update the teacher, Eq. 8, and anneal lambda)

With lambda = 0 for good (or no teacher) the judge and teacher never run: the step is exactly GRPO.
Optimisation is manual so that every stage is visible here and timed as `timing/<stage>`.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch

from visd_exp import credit
from visd_exp.callbacks import LambdaSchedule, TeacherUpdate
from visd_exp.judge import JudgeItem, build_judge, evidence_from_sample
from visd_exp.models import vision_token_ids
from visd_exp.objectives import check_advantage_config, clipped_surrogate_loss, group_advantages, group_std
from visd_exp.rewards import COMPONENTS, RewardConfig, score_batch, task_spec
from visd_exp.rollout.generation import generate_rollouts, policy_logprobs
from visd_exp.teacher import build_teacher, privileged_block, teacher_inputs, teacher_logits

CREDIT_KEYS = (
    "credit/delta_mean",
    "credit/delta_std",
    "credit/delta_abs_mean",
    "credit/weight_mean",
    "credit/weight_clip_frac",
)


class Stopwatch:
    """Accumulates wall time per stage of one step: `with watch("rollout"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.seconds[stage] += time.perf_counter() - start


def numpy_rng_state() -> dict:
    """numpy's global RNG state as tensors and numbers (checkpoints load with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def set_numpy_rng_state(state: dict) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


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
        # Eq. 14's sigma_G estimator and eps, checked at start (std=unbiased needs G >= 2)
        check_advantage_config(cfg.algorithm.num_generations, cfg.algorithm.std, cfg.algorithm.adv_eps)
        self.automatic_optimization = False
        self.suppress_ids = vision_token_ids(processor.tokenizer)
        self.reward_cfg = RewardConfig.from_cfg(cfg.reward)  # checked at start: a typo fails here
        self.teacher = build_teacher(cfg.get("teacher"), self.model)  # None for plain GRPO
        self.judge = build_judge(cfg.judge) if self.teacher is not None and cfg.get("judge") else None
        self.lam = 0.0  # set before every batch by LambdaSchedule
        self.teacher_active = self.teacher is not None
        self.stepped = False  # whether the last training_step took an optimizer step
        self.batches_seen = 0  # data position, saved in checkpoints (exact resume)
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient
        self.skipped_videos = 0  # videos that failed to decode during training
        self.consecutive_skips = 0

    def configure_callbacks(self):
        # Part of the method, not of the logging set-up: always present, whatever `callbacks` holds.
        callbacks = [LambdaSchedule(self.cfg.schedule)] if self.cfg.get("schedule") else []
        if self.teacher is not None:
            callbacks.append(TeacherUpdate())
        return callbacks

    def on_train_start(self) -> None:
        """Data set-up counts (records, over-long prompts dropped, bad records skipped) at step 0."""
        stats = getattr(self.trainer.datamodule, "stats", None) if self.trainer is not None else None
        if stats:
            for logger in self.trainer.loggers:
                logger.log_metrics({k: float(v) for k, v in stats.items()}, step=self.global_step)

    def teardown(self, stage: str) -> None:
        if self.judge is not None:
            self.judge.close()

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.cfg.optim
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
        )
        warmup = max(0, int(optim.warmup_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_progress(self) -> float:
        """p in (0, 1] for Eq. 12's sigma: (step + 1) / max_steps, Open-o3-Video's step_percent."""
        max_steps = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else 1
        return min(1.0, (self.global_step + 1) / max_steps)

    # -- exact resume: RNG states and the data position travel in the checkpoint ----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["visd_state"] = {
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_rng_state()},
            "batches_seen": self.batches_seen,
            "skipped_steps": self.skipped_steps,
            "skipped_videos": self.skipped_videos,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("visd_state")
        if state is None:
            return
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        set_numpy_rng_state(state["rng"]["numpy"])
        self.batches_seen = state["batches_seen"]
        self.skipped_steps, self.skipped_videos = state["skipped_steps"], state["skipped_videos"]

    # -- the step -----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        algo = self.cfg.algorithm
        watch = Stopwatch()
        step_start = time.perf_counter()
        G = algo.num_generations
        progress = self.training_progress()  # sigma of the thinking temporal reward anneals with it
        self.batches_seen += 1
        self.stepped = False
        self.skipped_videos += batch.get("skipped_videos", 0)
        if not batch["samples"]:  # every video of the batch failed to decode
            self.log("data/skipped_videos", float(self.skipped_videos), on_step=True, batch_size=1)
            return None

        # Step 1: on-policy rollouts from the old policy (Algorithm 1, line 7).
        with watch("rollout"):
            rollouts = generate_rollouts(self.model, self.processor, batch, algo, self.suppress_ids)

        # Step 2: verifier rewards and group-relative advantages (lines 10-12, Eq. 10 and 14).
        with watch("reward"):
            samples = [sample for sample in batch["samples"] for _ in range(G)]
            scores = score_batch(rollouts.texts, samples, progress=progress, cfg=self.reward_cfg)
            rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
            advantages = group_advantages(rewards, G, eps=algo.adv_eps, std=algo.std)  # Eq. 14

        # Step 3: the student's log-probs under the current policy (with grad).
        with watch("update"):
            logprobs, logits = policy_logprobs(self.model, rollouts, algo.temperature)
        mask = rollouts.completion_mask.float()

        # Step 4: token advantages. GRPO: A^_t = A. VISD: the teacher rescales |A| per token (Eq. 3-7).
        # Every step logs the same keys (a key missing at one step would repeat its stale value in the logs).
        credit_metrics = dict.fromkeys(CREDIT_KEYS, math.nan) if self.teacher is not None else {}
        if self.teacher is not None:
            watch.seconds["judge"] = watch.seconds["teacher"] = 0.0
        if self.teacher is not None and self.teacher_active and self.lam > 0:
            with watch("judge"):
                feedback = self.judge_feedback(samples, rollouts.texts)
            with watch("teacher"):
                t_logits = self.replay_teacher(batch, rollouts, samples, feedback)
            delta = self.token_log_ratio(t_logits, logits.detach(), rollouts.completion_ids, mask)  # Eq. 4
            weights = credit.token_weights(delta, advantages, self.cfg.credit.eps_w)  # m_t, Eq. 5-6
            token_advantages = credit.token_advantages(advantages, weights, self.lam)  # A^_t, Eq. 7
            credit_metrics = credit.credit_stats(delta, weights, mask.bool(), self.cfg.credit.eps_w)
            if self.dump_due():
                with watch("dump"):
                    self.dump_credit(
                        batch,
                        rollouts,
                        samples,
                        feedback,
                        scores,
                        advantages,
                        t_logits,
                        delta,
                        weights,
                        token_advantages,
                    )
        else:
            token_advantages = advantages[:, None].expand_as(mask)

        # Step 5: the clipped surrogate (Eq. 9 / 16) and one optimizer step.
        with watch("update"):
            optimizer = self.optimizers()
            scheduler = self.lr_schedulers()
            loss = clipped_surrogate_loss(
                logprobs, rollouts.old_logprobs, token_advantages, mask, algo.epsilon
            )
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
            if torch.isfinite(loss) and torch.isfinite(grad_norm):
                optimizer.step()
                scheduler.step()
                self.stepped, self.consecutive_skips = True, 0
            else:  # a non-finite loss or gradient: drop this update, keep training
                optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                self.consecutive_skips += 1
                if self.consecutive_skips > int(self.cfg.optim.get("max_consecutive_skips", 20)):
                    raise RuntimeError(
                        f"{self.consecutive_skips} optimizer steps in a row had a non-finite "
                        "loss or gradient; stopping (optim.max_consecutive_skips)"
                    )

        with torch.no_grad():
            ratio = torch.exp(logprobs.detach() - rollouts.old_logprobs)
            clipped = ((ratio - 1.0).abs() > algo.epsilon).float()
            entropy = token_entropy(logits.detach(), mask, algo.temperature)
        grouped = rewards.view(-1, G)
        sigma_g = group_std(rewards, G, algo.std)  # Eq. 14's sigma_G: TRL's reward_std when unbiased
        lengths = mask.sum(dim=1)
        metrics = {
            "loss": loss.detach(),
            "reward": rewards.mean(),
            "reward_std": sigma_g.mean(),
            # groups whose rewards are all equal: exactly those that group_advantages gives A = 0
            "frac_reward_zero_std": (grouped == grouped[:, :1]).all(dim=1).float().mean(),
            "completions/mean_length": lengths.mean(),
            "completions/min_length": lengths.min(),
            "completions/max_length": lengths.max(),
            "completions/clipped_ratio": rollouts.truncated.float().mean(),
            "clip_ratio": (clipped * mask).sum() / mask.sum().clamp(min=1),
            "entropy": entropy,
            "grad_norm": grad_norm.detach().float(),
            "lr": scheduler.get_last_lr()[0],
            "progress": progress,
            "lambda": self.lam,
            "train/skipped_steps": self.skipped_steps,
            "data/skipped_videos": self.skipped_videos,
            **credit_metrics,
        }
        # thk_tmp is Eq. 11 (segment) or Eq. 12 (point) by task: both curves, each over its own tasks
        for kind in ("segment", "point"):
            values = [
                s["thk_tmp"]
                for s, x in zip(scores, samples)
                if task_spec(x["task"]).thk_tmp == kind and s["thk_tmp"] is not None
            ]
            metrics[f"rewards/thk_tmp_{kind}/mean"] = sum(values) / len(values) if values else math.nan
        for name in COMPONENTS:
            values = [s[name] for s in scores if s.get(name) is not None]
            metrics[f"rewards/{name}/mean"] = sum(values) / len(values) if values else math.nan
            # the share of rollouts whose sample cannot support the component (the paper's K(x) masking)
            metrics[f"rewards/{name}/masked_frac"] = 1.0 - len(values) / len(scores)
        if self.judge is not None:
            metrics.update(self.judge.pop_metrics())
        for stage, seconds in watch.seconds.items():
            metrics[f"timing/{stage}"] = seconds
        metrics["step_time"] = time.perf_counter() - step_start
        self.log_dict(
            {k: float(v) for k, v in metrics.items()},
            on_step=True,
            on_epoch=False,
            batch_size=len(batch["samples"]),
        )
        self.log("train/reward", float(rewards.mean()), prog_bar=True, on_step=True, logger=False)
        return loss.detach()

    # -- VISD pieces --------------------------------------------------------------------------------
    def judge_feedback(self, samples: list[dict], completions: list[str]) -> list[str | None]:
        """One feedback string per rollout (None: no judge, or the judge fell back)."""
        if self.judge is None:
            return [None] * len(completions)
        items = [
            JudgeItem(
                task=s["task"],
                question=s["question"],
                standard_answer=s["answer"],
                evidence=evidence_from_sample(s),
                completion=c,
                sample=s,
            )
            for s, c in zip(samples, completions)
        ]
        return self.judge.judge_batch(items)

    def replay_teacher(self, batch: dict, rollouts, samples: list[dict], feedback: list[str | None]):
        """Teacher logits on the student's completion tokens, after prompt + privileged block r."""
        blocks = [
            privileged_block(s["answer"], evidence_from_sample(s), f) for s, f in zip(samples, feedback)
        ]
        G = self.cfg.algorithm.num_generations
        grids = [grid for grid in batch["image_grid_thw"] for _ in range(G)]
        inputs = teacher_inputs(self.processor, rollouts, samples, blocks, grids)
        return teacher_logits(self.teacher.model(self.model), inputs, rollouts.completion_ids.shape[1])

    def dump_due(self) -> bool:
        every = int((self.cfg.get("dumps") or {}).get("credit_every_n_steps") or 0)
        return every > 0 and self.global_step % every == 0 and self.trainer is not None

    @torch.no_grad()
    def dump_credit(
        self,
        batch,
        rollouts,
        samples,
        feedback,
        scores,
        advantages,
        t_logits,
        delta,
        weights,
        token_advantages,
    ) -> None:
        """Save Delta under the feedback and answer-only teachers for M rollouts (Eq. 29-31)."""
        from visd_exp.teacher.dump import write_credit_dump

        m = min(int(self.cfg.dumps.num_rollouts), rollouts.num_rollouts)
        rows = slice(0, m)
        answer_only = self.replay_teacher(batch, rollouts, samples, [None] * len(samples))  # r = (a*, e)
        # delta^judge (Eq. 31) = log q~^{a,f}(y) - log q~^{a}(y) on the feedback teacher's support: the
        # credit function with the feedback teacher as "teacher" and the answer-only teacher as "student".
        d_judge = self.token_log_ratio(
            t_logits[rows], answer_only[rows], rollouts.completion_ids[rows], rollouts.completion_mask[rows]
        )
        meta = [
            {
                "id": s.get("id"),
                "task": s["task"],
                "question": s["question"],
                "answer": s["answer"],
                "feedback": f,
                "completion": text,
                "reward": sc["total"],
                "advantage": float(a),
            }
            for s, f, text, sc, a in zip(
                samples[rows], feedback[rows], rollouts.texts[rows], scores[rows], advantages[rows]
            )
        ]
        write_credit_dump(
            Path(self.cfg.paths.output_dir),
            self.global_step,
            self.lam,
            self.cfg.credit,
            self.processor.tokenizer,
            {
                "token_ids": rollouts.completion_ids[rows],
                "mask": rollouts.completion_mask[rows],
                "delta_feedback": delta[rows],
                "delta_judge": d_judge,
                "weight": weights[rows],
                "token_advantage": token_advantages[rows],
                "meta": meta,
            },
        )

    def token_log_ratio(self, t_logits, s_logits, tokens, mask) -> torch.Tensor:
        """Delta_t per the `credit` group on logits / temperature; padding gets token id -100 (Delta = 0)."""
        temperature = self.cfg.algorithm.temperature
        tokens = tokens.masked_fill(mask == 0, -100)
        return credit.log_ratio_for(self.cfg.credit, t_logits / temperature, s_logits / temperature, tokens)
