"""The LightningModule: the step every algorithm shares, top to bottom (VISD Algorithm 1).

    the algorithm's rollouts and rewards (algorithms/: grpo, tgrpo, ffr) -> group advantages A (Eq. 14)
    -> VISD (algorithms/visd.py, whenever a teacher is configured): judge feedback f per rollout (a remote
       judge is asked in a background thread, so that its calls overlap the next two lines' forwards)
    -> [old log-probs: the update's own forward (current), or a recompute when rollout_correction needs one]
    -> per micro-batch (step_forward.py): the teacher replays the SAME tokens with r = (a*, e, f)
       -> Delta_t (top-K support or sampled token, Eq. 4) -> m_t (Eq. 5-6) -> A^_t (Eq. 7)
       -> the student's forward -> clipped surrogate (Eq. 9 / 16) x n / N -> backward
    -> every `optim.accumulate_grad_batches` batches: clip grad norm -> AdamW step
    (callbacks then update the teacher, Eq. 8, and anneal lambda: callbacks/lambda_schedule.py)

With lambda = 0 for good (or no teacher) the judge and teacher never run: the step is exactly the
sequence-level algorithm (GRPO, T-GRPO or FFR).
Optimisation is manual so that every stage is visible here and timed as `timing/<stage>`.
Precision (fp32 master weights, bf16 autocast) is settled in `setup` (precision.py).
"""

from __future__ import annotations

import math
import random
import time

import lightning as L
import torch

from visd_exp import credit
from visd_exp.algorithms import Policy, build_algorithm
from visd_exp.algorithms.visd import VISDCredit
from visd_exp.callbacks import LambdaSchedule, TeacherUpdate
from visd_exp.distributed.memory import rank_memory
from visd_exp.distributed.ranks import all_ranks, max_over_ranks, own_rank_state, rank_states
from visd_exp.distributed.zero import accumulating_backward, clip_grad_norm, deepspeed_engine
from visd_exp.judge import build_judge
from visd_exp.models import vision_token_ids
from visd_exp.models.partitioned import copy_partitions, empty_like
from visd_exp.objectives import check_advantage_config, group_advantages, group_std
from visd_exp.precision import prepare_trained_weights, resolve_old_logprobs
from visd_exp.rollout.engine import build_engine, engine_name
from visd_exp.rollout.mismatch import engine_mismatch_metrics, truncated_is_weights
from visd_exp.step_forward import micro_slices, policy_update, recompute_logprobs
from visd_exp.teacher import build_teacher
from visd_exp.teacher.variants import teacher_kind
from visd_exp.utils.optim import adamw
from visd_exp.utils.steps import Stopwatch, numpy_rng_state, reward_metrics, set_numpy_rng_state

CREDIT_KEYS = (
    "credit/delta_mean",
    "credit/delta_std",
    "credit/delta_abs_mean",
    "credit/weight_mean",
    "credit/weight_clip_frac",
)


def memory_metrics(module) -> dict[str, float]:
    """memory/*: this rank's bytes by item from the real tensors (distributed/memory.py: student and teacher
    weights, the teacher's fp32 state, optimizer state, gradients), the largest teacher state over the ranks,
    and this process's peak resident memory so far (`memory/host_peak_rss_bytes`). Collective."""
    import resource

    out = {k: float(v) for k, v in rank_memory(module, deepspeed_engine(module._trainer)).items()}
    out["memory/teacher_state_bytes_max_rank"] = max_over_ranks(out["memory/teacher_state_bytes"])
    out["memory/host_peak_rss_bytes"] = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out["memory/host_peak_rss_bytes_max_rank"] = max_over_ranks(out["memory/host_peak_rss_bytes"])
    return out


class VISDModule(L.LightningModule):
    """Holds the student policy (and, for VISD, a teacher) and runs the training step."""

    def __init__(self, model, processor, cfg):
        """model: the student, or a function that builds it; a function is called in `configure_model`,
        which Lightning runs inside `deepspeed.zero.Init` under ZeRO-3 (models/partitioned.py)."""
        super().__init__()
        self.build_model = None if isinstance(model, torch.nn.Module) else model
        # from_pretrained returns eval mode; rollouts switch to eval themselves
        self.model = model.train() if self.build_model is None else None
        self.processor = processor
        self.cfg = cfg  # the whole composed config (algorithm, reward, optim, ...)
        # Eq. 14's sigma_G estimator and eps, checked at start (std=unbiased needs G >= 2)
        check_advantage_config(cfg.algorithm.num_generations, cfg.algorithm.std, cfg.algorithm.adv_eps)
        self.automatic_optimization = False
        self.suppress_ids = vision_token_ids(processor.tokenizer)
        # the sequence-level unit (algorithms/: grpo, tgrpo, ffr): rollouts, rewards, the rows of the loss
        self.algorithm = build_algorithm(cfg)
        self.has_teacher = teacher_kind(cfg) is not None  # False for plain GRPO
        self.judge = build_judge(cfg.judge) if self.has_teacher and cfg.get("judge") else None
        # rollouts per forward pass (None = all N) and batches per optimizer step (step_forward.py)
        self.micro_batch_size = cfg.algorithm.get("micro_batch_size")
        micro_slices(1, self.micro_batch_size)  # checked at start
        self.teacher = self.credit = None
        if self.model is not None:
            self.attach_teacher()
        self.accumulate_grad_batches = k = int(cfg.optim.get("accumulate_grad_batches", 1))
        if k < 1:
            raise ValueError(f"optim.accumulate_grad_batches must be >= 1, got {k}")
        self.accumulated, self.window_finite = 0, True  # batches in the window; all their losses finite
        # the rollout engine (rollout/engine.py), built on first use; its weights follow weights_version, bumped
        # after every optimizer step and after a checkpoint is loaded
        self.engine_name = engine_name(cfg.get("rollout"))
        self.engine = None
        self.weights_version = 0
        # `generate` or `recompute`: setup() decides by trainer.precision and the engine (precision.py)
        correction = cfg.algorithm.get("rollout_correction") or {}
        self.is_cap = float(correction.get("cap", 2.0)) if correction.get("enabled") else None
        self.old_logprobs = resolve_old_logprobs(
            cfg.algorithm.get("old_logprobs"), "32-true", self.engine_name, self.is_cap is not None
        )
        self.lam = 0.0  # set before every batch by LambdaSchedule
        self.teacher_active = self.has_teacher
        self.stepped = False  # whether the last training_step took an optimizer step
        self.batches_seen = 0  # data position, saved in checkpoints (exact resume)
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient
        self.skipped_videos = 0  # videos that failed to decode during training
        self.consecutive_skips = 0
        # timing/data_wait: from the end of the previous batch's hooks to this batch's start (the loader)
        self.batch_end_time: float | None = None
        self.data_wait = math.nan

    def attach_teacher(self, copy_module=None) -> None:
        """The teacher (teacher/variants.py; copy_module: its copy, when built partitioned) and VISD's token
        credit (algorithms/visd.py) whenever there is a teacher; GRPO's A^_t = A otherwise."""
        self.teacher = build_teacher(self.cfg.get("teacher"), self.model, copy_module)
        self.credit = (
            VISDCredit(self.cfg, self.processor, self.teacher, self.judge, self.micro_batch_size)
            if self.teacher is not None
            else None
        )

    def configure_model(self) -> None:
        """Under ZeRO-3 (a model function was given): the student built partitioned, read file by file, and
        the teacher copy filled from its partitions; no rank ever holds the whole model."""
        if self.model is not None:
            return
        self.model = self.build_model().train()
        copy_module = None
        if teacher_kind(self.cfg) in ("sync", "ema"):
            copy_module = empty_like(self.model)
            copy_partitions(copy_module, self.model)
        self.attach_teacher(copy_module)

    def configure_callbacks(self):
        # Part of the method, not of the logging set-up: always present, whatever `callbacks` holds.
        callbacks = [LambdaSchedule(self.cfg.schedule)] if self.cfg.get("schedule") else []
        if self.has_teacher:
            callbacks.append(TeacherUpdate())
        return callbacks

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Lightning runs the callbacks' batch-end hooks (validation, checkpoints) before this module's, so
        # the wait below is the loader's fetch and the loop between two batches, not validation
        now = time.perf_counter()
        self.data_wait = math.nan if self.batch_end_time is None else now - self.batch_end_time

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.batch_end_time = time.perf_counter()

    def on_train_start(self) -> None:
        """Data set-up counts (records, over-long prompts dropped, bad records skipped) at step 0."""
        teacher = getattr(self, "teacher", None)  # SFTModule borrows this hook and has none
        if teacher is not None:
            teacher.prepare()  # ZeRO-3: this rank's fp32 teacher state, once the engine exists
        stats = (
            dict(getattr(self.trainer.datamodule, "stats", None) or {}) if self.trainer is not None else {}
        )
        stats.update(memory_metrics(self))  # memory/*: this rank's bytes by item (distributed/memory.py)
        if stats:
            for logger in self.trainer.loggers:
                logger.log_metrics({k: float(v) for k, v in stats.items()}, step=self.global_step)

    def setup(self, stage: str) -> None:
        """fp32 master weights (half ones upcast under *-mixed, refused otherwise); old log-probs by precision."""
        precision = str(self.trainer.precision)
        if self.model is not None:  # else built in configure_model, under DeepSpeed (its own fp32 masters)
            prepare_trained_weights(self.model, precision, type(self.trainer.strategy).__name__)
        self.old_logprobs = resolve_old_logprobs(
            self.cfg.algorithm.get("old_logprobs"), precision, self.engine_name, self.is_cap is not None
        )

    def rollout_engine(self):
        """The engine every caller samples with (training, validation), holding the trainer's current weights:
        built on first use, then pushed whenever its weights are older than the trainer's (start, resume)."""
        if self.engine is None:
            self.engine = build_engine(
                self.cfg.get("rollout"),
                self.model,
                self.processor,
                precision=str(self.trainer.precision) if self._trainer is not None else "32-true",
                limits=engine_limits(self.cfg),
            )
        self.engine.sync(self.model, self.weights_version)
        return self.engine

    def teardown(self, stage: str) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.credit is not None:
            self.credit.close()  # its judge thread first: no call may be under way when the judge closes
        if self.judge is not None:
            self.judge.close()
        self.algorithm.close()

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.cfg.optim
        optimizer = adamw(self.model, optim)
        warmup = max(0, int(optim.warmup_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_progress(self) -> float:
        """p in (0, 1] for Eq. 12's sigma: (step + 1) / the run's real optimizer steps (max_steps, or the
        epochs' steps from the data and the batch: utils/run_length.py), Open-o3-Video's step_percent
        (global_step + 1 over its trainer state's max_steps, the epochs' steps). 1.0 without an end."""
        from visd_exp.utils.run_length import planned_optimizer_steps

        total = planned_optimizer_steps(self._trainer, self.accumulate_grad_batches)
        return min(1.0, (self.global_step + 1) / total) if total else 1.0

    # -- exact resume: RNG states and the data position travel in the checkpoint ----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["visd_state"] = {
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_rng_state()},
            "batches_seen": self.batches_seen,
            "skipped_steps": self.skipped_steps,
            "skipped_videos": self.skipped_videos,
            "accumulated": self.accumulated,  # 0: checkpoints are written after optimizer steps
        }
        # hook (multi-process): every rank's RNG states and the world size (collective on all ranks)
        checkpoint["visd_state"].update(rank_states(checkpoint["visd_state"]["rng"]))
        teacher = getattr(self, "teacher", None)  # SFTModule borrows this hook
        shards = teacher.shards if teacher is not None else None
        if shards is not None:  # hook (DeepSpeed ZeRO-3): this rank's teacher partitions, in this rank's file
            checkpoint["teacher_shard"] = shards.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("visd_state")
        if state is None:
            return
        rng = own_rank_state(state, state["rng"])  # hook (multi-process): this rank's own RNG streams
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        set_numpy_rng_state(rng["numpy"])
        self.batches_seen = state["batches_seen"]
        self.skipped_steps, self.skipped_videos = state["skipped_steps"], state["skipped_videos"]
        self.accumulated = state.get("accumulated", 0)
        teacher = getattr(self, "teacher", None)  # SFTModule borrows this hook
        shards = teacher.shards if teacher is not None else None
        if shards is not None:
            if "teacher_shard" not in checkpoint:
                raise RuntimeError(
                    "this ZeRO-3 checkpoint has no teacher shard (written by another version?)"
                )
            shards.load_state_dict(checkpoint["teacher_shard"])
        # the loaded weights reach the engine before its next rollout (SFTModule borrows this hook too)
        self.weights_version = getattr(self, "weights_version", 0) + 1

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
        # every video of the batch failed to decode (on any rank: the ranks skip together, or ZeRO-3 hangs)
        if not all_ranks(bool(batch["samples"]), self.device):
            self.log("data/skipped_videos", float(self.skipped_videos), on_step=True, batch_size=1)
            return None

        # Steps 1-2: the algorithm's rollouts and the rewards they are standardised on (algorithms/: GRPO samples
        # G per prompt and scores them, Eq. 10; T-GRPO and FFR add rollouts and shape rewards), then the
        # group-relative advantages of the rows that enter the loss (Algorithm 1, lines 7-12; Eq. 14).
        engine = self.rollout_engine()
        step = self.algorithm.step(
            Policy(self.model, self.processor, self.suppress_ids, engine), batch, progress, watch
        )
        rollouts, samples, scores, rewards = step.rollouts, step.samples, step.scores, step.rewards
        # the sync check (vLLM): at step 0 and every rollout.vllm.verify_every steps a stale engine stops the run
        watch.seconds["weight_sync"] = 0.0  # the push after this step's optimizer step (0 for the HF engine)
        with watch("sync_check"):
            # None mid-way through a gradient-accumulation window: checked once per optimizer step
            sync_metrics = engine.verify(self.model, self.global_step if self.accumulated == 0 else None)
        mask = rollouts.completion_mask.float()
        with watch("reward"):
            advantages = group_advantages(rewards, G, eps=algo.adv_eps, std=algo.std)  # Eq. 14

        # Step 3: VISD's privileged context: judge feedback f (a remote judge is asked now, in a background thread,
        # while Step 4 and the first student forward run) and the teacher's inputs r = (a*, e, f), built once the
        # feedback is in. The replay, Delta_t (Eq. 4), m_t (Eq. 5-6) and A^_t (Eq. 7) run per micro-batch in
        # Step 5. GRPO: A^_t = A.
        # Every step logs the same keys (a key missing at one step would repeat its stale value in the logs).
        credit_metrics = dict.fromkeys(CREDIT_KEYS, math.nan) if self.teacher is not None else {}
        if self.teacher is not None:
            watch.seconds["judge"] = watch.seconds["teacher"] = 0.0
        replay = None
        if self.credit is not None and self.teacher_active and self.lam > 0:  # algorithms/visd.py
            replay, feedback = self.credit.replay(self.model, rollouts, samples, self.lam, watch)

        # Step 4: old log-probs pi_old(y_t) (precision.py). `current` (auto, unless fp32 HF sampling): the update's
        # own forward, detached, since this is the one update on these rollouts (rho_t = 1, no extra forward);
        # `recompute` (rollout_correction): a no-grad forward with the update's micro-batches.
        if self.old_logprobs == "recompute":
            with watch("old_logprobs"):
                rollouts.old_logprobs = recompute_logprobs(
                    self.model, rollouts, algo.temperature, self.micro_batch_size
                )
        # algorithm.rollout_correction: w_t = min(pi_old / pi_engine, cap), the engine's mismatch corrected
        is_weights = truncated_is_weights(rollouts, self.is_cap) if self.is_cap is not None else None

        # Step 5: the clipped surrogate (Eq. 9 / 16) and its gradient, micro-batch by micro-batch; gradients
        # accumulate over `optim.accumulate_grad_batches` = k batches (each back-propagated / k).
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        if self.accumulated == 0:
            optimizer.zero_grad(set_to_none=True)
        out = policy_update(
            self.model,
            rollouts,
            advantages,
            temperature=algo.temperature,
            epsilon=algo.epsilon,
            micro_batch_size=self.micro_batch_size,
            replay=replay,
            loss_scale=1.0 / self.accumulate_grad_batches,
            # hook (DeepSpeed ZeRO-1/2): the engine is told which backward ends the accumulation window
            backward=accumulating_backward(
                self,
                len(micro_slices(rollouts.num_rollouts, self.micro_batch_size)),
                self.accumulated + 1 == self.accumulate_grad_batches,
            ),
            watch=watch,
            is_weights=is_weights,
            old_is_current=self.old_logprobs == "current",
        )
        if self.old_logprobs == "current":
            rollouts.old_logprobs = out.logprobs  # pi_old was the update's forward (ratio metrics below: 1)
        if replay is not None:
            credit_metrics = credit.credit_stats(out.delta, out.weights, mask.bool(), self.cfg.credit.eps_w)
            if self.dump_due():
                with watch("dump"):
                    self.dump_credit(batch, rollouts, samples, feedback.result(), scores, advantages, out)

        # Step 6: one optimizer step per k batches (AdamW on fp32 master weights).
        self.accumulated += 1
        self.window_finite = self.window_finite and bool(torch.isfinite(out.loss))
        grad_norm = torch.tensor(math.nan)  # logged only when the optimizer steps
        if self.accumulated == self.accumulate_grad_batches:
            with watch("update"):
                grad_norm = self.take_optimizer_step(optimizer, scheduler)
            if self.stepped:  # the engine follows the trainer: new weights pushed now (timing/weight_sync)
                self.weights_version += 1
                watch.seconds["weight_sync"] += engine.sync(self.model, self.weights_version)
            if self.stepped and self.global_step == 1:  # the optimizer's state exists from its first step on
                for logger in self.trainer.loggers:  # as float64: exact byte counts (planner checks)
                    logger.log_metrics(memory_metrics(self), step=self.global_step)

        with torch.no_grad():
            ratio = torch.exp(out.logprobs - rollouts.old_logprobs)  # rho_t (Eq. 17) of this update
            clipped = ((ratio - 1.0).abs() > algo.epsilon).float()
        grouped = rewards.view(-1, G)
        sigma_g = group_std(rewards, G, algo.std)  # Eq. 14's sigma_G: TRL's reward_std when unbiased
        lengths = mask.sum(dim=1)
        valid = mask.sum().clamp(min=1)
        metrics = {
            "loss": out.loss,
            "reward": rewards.mean(),
            "reward_std": sigma_g.mean(),
            # groups whose rewards are all equal: exactly those that group_advantages gives A = 0
            "frac_reward_zero_std": (grouped == grouped[:, :1]).all(dim=1).float().mean(),
            "completions/mean_length": lengths.mean(),
            "completions/min_length": lengths.min(),
            "completions/max_length": lengths.max(),
            "completions/clipped_ratio": rollouts.truncated.float().mean(),
            "clip_ratio": (clipped * mask).sum() / valid,
            "ratio/mean": (ratio * mask).sum() / valid,
            "entropy": out.entropy,
            "grad_norm": grad_norm.detach().float(),
            "lr": scheduler.get_last_lr()[0],
            "progress": progress,
            "lambda": self.lam,
            "train/skipped_steps": self.skipped_steps,
            "data/skipped_videos": self.skipped_videos,
            **credit_metrics,
            **step.metrics,  # the algorithm's own: tgrpo/*, ffr/*
        }
        # how far the engine's sampled log-probs were from the trainer's forward (rollout/logprob_diff_*)
        metrics.update(
            engine_mismatch_metrics(rollouts.engine_logprobs, out.logprobs, mask, is_weights, self.is_cap)
        )
        metrics.update(sync_metrics)
        # rewards/<component>/mean and /masked_frac (K(x)), rewards/thk_tmp_{segment,point}/mean
        metrics.update(reward_metrics(scores, samples))
        if self.judge is not None:
            metrics.update(self.judge.pop_metrics())
        for stage, seconds in watch.seconds.items():
            metrics[f"timing/{stage}"] = seconds
        metrics["step_time"] = time.perf_counter() - step_start
        metrics["timing/data_wait"] = self.data_wait  # NaN on a run's first batch
        self.log_dict(
            {k: float(v) for k, v in metrics.items()},
            on_step=True,
            on_epoch=False,
            batch_size=len(batch["samples"]),
        )
        self.log("train/reward", float(rewards.mean()), prog_bar=True, on_step=True, logger=False)
        return out.loss

    def take_optimizer_step(self, optimizer, scheduler) -> torch.Tensor:
        """Clip the accumulated gradient and step; a non-finite loss or gradient drops the whole window."""
        # hook (DeepSpeed): the engine clips in step() by its config's gradient_clipping; this is the
        # true global norm over the ranks' gradient partitions. Without DeepSpeed: clip_grad_norm_.
        grad_norm = clip_grad_norm(self, self.cfg.optim.max_grad_norm)
        # the ranks skip together: one rank skipping alone would leave the others in the engine's collectives
        finite = all_ranks(self.window_finite and bool(torch.isfinite(grad_norm)), self.device)
        self.accumulated, self.window_finite = 0, True
        if finite:
            optimizer.step()
            scheduler.step()
            self.stepped, self.consecutive_skips = True, 0
            return grad_norm
        optimizer.zero_grad(set_to_none=True)  # keep training
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.consecutive_skips > int(self.cfg.optim.get("max_consecutive_skips", 20)):
            raise RuntimeError(
                f"{self.consecutive_skips} optimizer steps in a row had a non-finite "
                "loss or gradient; stopping (optim.max_consecutive_skips)"
            )
        return grad_norm

    # -- token-credit dumps (algorithms/visd.py writes them) --------------------------------------------
    def dump_due(self) -> bool:
        every = int((self.cfg.get("dumps") or {}).get("credit_every_n_steps") or 0)
        # once per optimizer step: on the first batch of a gradient-accumulation window
        return every > 0 and self.global_step % every == 0 and self.accumulated == 0

    def dump_credit(self, batch, rollouts, samples, feedback, scores, advantages, out) -> None:
        """Delta under the feedback and answer-only teachers for `dumps.num_rollouts` rollouts (Eq. 29-31)."""
        write = self._trainer is None or self._trainer.is_global_zero  # every rank replays, rank 0 writes
        self.credit.dump(
            self.model,
            self.global_step,
            self.lam,
            rollouts,
            samples,
            feedback,
            scores,
            advantages,
            out,
            write,
        )


def engine_limits(cfg) -> dict:
    """What the rollout engine must hold: images per prompt, the longest sequence, sequences at once."""
    algo, data = cfg.algorithm, cfg.data
    return {
        "max_images": int(data.get("max_frames") or 16),
        "max_model_len": int(data.get("max_prompt_length") or 16384) + int(algo.max_completion_length),
        "max_num_seqs": int(data.get("batch_size") or 1) * int(algo.num_generations),
    }
