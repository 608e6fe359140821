"""A vLLM engine colocated in the training process (`rollout.engine=vllm`): one per rank, in-process.

    engine = VLLMEngine(cfg.rollout.vllm, model, processor, precision=..., limits=...)
    engine.sync(model, version)      # push the trainer's weights when the engine's are older
    engine.generate(model, processor, batch, how, suppress_ids) -> RolloutBatch
    engine.verify(model, step)       # the sync check: a stale engine raises StaleEngineError

The engine is built from the model's config and processor with RANDOM weights (`load_format="dummy"`):
until the first push it samples noise, so a push that never happens cannot pass the sync check.
A push streams the trainer's parameters module by module (rollout/weight_push.py: gathered one module
at a time under ZeRO-3) into vLLM's layer-wise reload, then re-packs the tied output head (vLLM's CPU
kernels keep a packed copy of it that the reload does not refresh) and resets the prefix cache and the
encoder cache (vision features of the same frames would otherwise be reused from the old weights).

What the engine is given is what the HF path builds: the prompt's token ids (each run of <|image_pad|>
collapsed to one, which vLLM expands again by the image grid; the expanded ids it reports are checked
against ours on every call) and the batch's frames (uint8, already resized to multiples of 28, so the
engine's image processor computes the same pixels). T-GRPO's permuted frames and FFR's patched prompts
reach it as they reach HF `generate`.

Log-probs: the engine returns its processed log-probs of the sampled tokens (temperature, top-k/top-p
and the suppression bias applied: the distribution the tokens were drawn from) as `engine_logprobs`; the
update's pi_old is always the trainer's forward (precision.resolve_old_logprobs).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import shutil
import tempfile
import time

import numpy as np
import torch

from visd_exp.models.processor import save_processor
from visd_exp.rollout.generation import RolloutBatch, completion_mask_from, policy_logprobs, repeat_prompts
from visd_exp.rollout.weight_push import named_weights

log = logging.getLogger(__name__)


_KEPT_UNTIL_EXIT: list = []  # engines whose shutdown would take the trainer's process group with it


class StaleEngineError(RuntimeError):
    """The engine's log-probs disagree with the trainer's forward: its weights are not the trainer's."""


def collapse_image_runs(ids: list[int], image_pad_id: int) -> list[int]:
    """Each run of <|image_pad|> as one token (the form vLLM's processor expands by the image grid)."""
    out: list[int] = []
    for token in ids:
        if token == image_pad_id and out and out[-1] == image_pad_id:
            continue
        out.append(token)
    return out


def frames_as_images(frames: torch.Tensor) -> list[torch.Tensor]:
    """uint8 [n, 3, H, W] frames as the images vLLM's processor takes (CHW uint8 tensors, as HF's got)."""
    return list(frames.cpu())


def default_tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if dtype == torch.float32 else 5e-2


class VLLMEngine:
    name = "vllm"

    def __init__(self, vcfg, model, processor, *, precision: str, limits: dict):
        from visd_exp.rollout.vllm_compat import prepare_vllm

        prepare_vllm()
        from vllm import LLM

        self.cfg = vcfg
        self.tokenizer = processor.tokenizer
        self.image_pad_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.dtype = engine_dtype(str(vcfg.get("dtype", "auto")), precision)
        self.tolerance = float(vcfg.get("verify_tolerance") or default_tolerance(self.dtype))
        self.verify_every = int(vcfg.get("verify_every") or 0)
        self.version: int | None = None  # the trainer's weights version the engine holds (None: random)
        self.pushes, self.push_seconds = 0, 0.0
        self.probe: RolloutBatch | None = None  # the fixed rollout of the sync check (the run's first)
        self.probe_frames: list | None = None
        self.on_gpu = torch.cuda.is_available()
        self.sleeping = False
        # vLLM reads the architecture, tokenizer and processor from a directory: the model's, without weights
        self.dir = tempfile.mkdtemp(prefix="visd-vllm-")
        model.config.save_pretrained(self.dir)
        save_processor(processor, self.dir)
        kwargs = dict(
            model=self.dir,
            load_format="dummy",  # random weights: the first push is what makes the engine the trainer's
            dtype=self.dtype,
            seed=int(torch.initial_seed() % (2**31)),
            enforce_eager=bool(vcfg.get("enforce_eager", True)),
            max_model_len=model_len(vcfg, limits, model.config),
            max_num_seqs=int(vcfg.get("max_num_seqs") or 256),
            limit_mm_per_prompt={"image": int(limits.get("max_images") or 16), "video": 0},
            enable_prefix_caching=bool(vcfg.get("enable_prefix_caching", True)),
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # sampling settings come from `how` only
            # the uniprocess executor, in this process: under several trainer processes each rank builds its
            # own engine (tensor_parallel_size 1), an independent replica beside the trainer's process group
            distributed_executor_backend="uni",
        )
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = float(vcfg.get("gpu_memory_utilization", 0.3))
            kwargs["enable_sleep_mode"] = bool(vcfg.get("sleep_between_rollouts", True))
        else:
            kwargs["kv_cache_memory_bytes"] = int(float(vcfg.get("kv_cache_gib", 0.25)) * 2**30)
            # no chunked prefill on CPU: a request prefilled in chunks has its partial sample discarded and
            # its seeded generator rewound, which CPU generators cannot do ("CPU Generator does not use
            # offset", seen at 64 rollouts of the mid-size model); whole prompts are prefilled instead
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(kwargs["max_model_len"], 8192)
            if vcfg.get("sleep_between_rollouts", True):
                log.info(
                    "rollout.vllm: sleep mode does not exist on CPU; the engine's KV cache (%.2f GiB) stays "
                    "allocated between rollouts",
                    float(vcfg.get("kv_cache_gib", 0.25)),
                )
        start = time.perf_counter()
        with process_state_kept():
            self.llm = LLM(**kwargs)
        self.runner = (
            self.llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
        )
        restore_input_norm(self.runner)
        log.info("rollout.vllm: engine started in %.1f s (%s)", time.perf_counter() - start, self.dtype)

    # -- weights --------------------------------------------------------------------------------------
    def sync(self, model, version: int) -> float:
        """Push the trainer's weights if the engine holds an older version; returns the seconds it took."""
        if self.version == version:
            return 0.0
        start = time.perf_counter()
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
        self.push_weights(model)
        self.version = version
        seconds = time.perf_counter() - start
        self.pushes += 1
        self.push_seconds += seconds
        return seconds

    def push_weights(self, model) -> None:
        """Stream every parameter into the engine's model, then drop every cache of old-weight results."""
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        vllm_model = self.runner.get_model()
        initialize_layerwise_reload(vllm_model)
        vllm_model.load_weights(named_weights(model))
        finalize_layerwise_reload(vllm_model, self.runner.model_config)
        repack_tied_heads(vllm_model)
        # results of the old weights: cached prefixes' KV and cached vision features of the same frames
        # (the engine's reset clears the scheduler's and the worker's encoder caches; the worker's alone
        # leaves the scheduler expecting features that are gone: "Encoder cache miss")
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    # -- sampling -------------------------------------------------------------------------------------
    def generate(self, model, processor, batch: dict, how, suppress_ids: list[int]) -> RolloutBatch:
        from vllm import SamplingParams

        if "frames" not in batch:
            raise ValueError(
                "rollout.engine=vllm needs the batch's frames (batch['frames'], one tensor per prompt)"
            )
        G = int(how.num_generations)
        do_sample = bool(how.get("do_sample", True))
        inputs = repeat_prompts(batch, G)
        images_per_row = [len(thw) for thw in batch["image_grid_thw"] for _ in range(G)]
        prompts, expected = [], []
        for ids, mask, frames in zip(batch["input_ids"], batch["attention_mask"], batch["frames"]):
            row = ids[mask.bool()].tolist()
            expected.append(row)
            prompts.append(
                {
                    "prompt_token_ids": collapse_image_runs(row, self.image_pad_id),
                    "multi_modal_data": {"image": frames_as_images(frames)},
                }
            )
        params = []
        for _ in prompts:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())  # from the trainer's RNG: seeded runs repeat
            params.append(
                SamplingParams(
                    n=G if do_sample else 1,  # greedy: one decode, its G copies identical (vLLM wants n = 1)
                    temperature=float(how.temperature) if do_sample else 0.0,
                    top_p=float(how.get("top_p", 1.0)) if do_sample else 1.0,
                    top_k=int(how.get("top_k") or 0) if do_sample else 0,
                    max_tokens=int(how.max_completion_length),
                    min_tokens=int(how.get("min_completion_length") or 0),
                    seed=seed,
                    logprobs=0 if do_sample else None,
                    logit_bias={int(t): -100.0 for t in suppress_ids},
                    stop_token_ids=[self.tokenizer.eos_token_id],
                    skip_special_tokens=True,
                    detokenize=False,
                )
            )
        self.last_requests = prompts  # what the engine was given (tests read it)
        self.wake()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.rest()
        completions, logprobs, truncated = [], [], []
        for out, row in zip(outputs, expected):
            if list(out.prompt_token_ids) != row:
                raise RuntimeError(
                    "rollout.engine=vllm: the engine's prompt token ids differ from the HF processor's "
                    f"({len(out.prompt_token_ids)} vs {len(row)} tokens): its image expansion does not match"
                )
            for sample in out.outputs if do_sample else out.outputs * G:
                completions.append(list(sample.token_ids))
                logprobs.append(
                    [next(iter(lp.values())).logprob if lp else 0.0 for lp in (sample.logprobs or [])]
                    if do_sample
                    else []
                )
                truncated.append(sample.finish_reason == "length")
        rollouts = self._rollouts(inputs, images_per_row, completions, logprobs)
        if self.probe is None and int(rollouts.completion_mask[0].sum()) > 0:
            self.probe, self.probe_frames = rollouts.select(slice(0, 1)), batch["frames"][0]
        return rollouts

    def _rollouts(self, inputs, images_per_row, completions, logprobs) -> RolloutBatch:
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(1, max(len(c) for c in completions))
        ids = torch.full((len(completions), width), pad, dtype=torch.long)
        lps = torch.zeros((len(completions), width), dtype=torch.float32)
        for i, (c, lp) in enumerate(zip(completions, logprobs)):
            ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            if lp:
                lps[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        mask, truncated = completion_mask_from(ids, eos)
        ids = ids.masked_fill(mask == 0, pad)
        lps = lps * mask
        device = inputs["input_ids"].device
        return RolloutBatch(
            prompt_ids=inputs["input_ids"],
            prompt_mask=inputs["attention_mask"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            completion_ids=ids.to(device),
            completion_mask=mask.to(device),
            old_logprobs=lps.to(device),  # replaced by the trainer's forward (old_logprobs=recompute)
            truncated=truncated.to(device),
            texts=self.tokenizer.batch_decode(ids, skip_special_tokens=True),
            images_per_row=images_per_row,
            engine_logprobs=lps.to(device),
        )

    # -- the sync check -------------------------------------------------------------------------------
    def verify(self, model, step: int | None) -> dict[str, float]:
        """At step 0 and every verify_every steps: the engine and the trainer score the probe rollout.
        The same keys every step (NaN when not checked): a key missing at a step repeats its stale value."""
        skipped = {"rollout/sync_check_diff_mean": math.nan, "rollout/sync_check_diff_max": math.nan}
        due = step is not None and (step == 0 or (self.verify_every > 0 and step % self.verify_every == 0))
        if not due:
            return skipped
        if self.probe is None:  # every rollout so far was empty: nothing to score yet, said, not silent
            log.warning("rollout.vllm: no sync check at step %s: no non-empty rollout to score yet", step)
            return skipped
        engine_lp = self.score(self.probe, self.probe_frames)
        with torch.no_grad():
            trainer_lp, logits = policy_logprobs(model, self.probe, 1.0)
            del logits
        mask = self.probe.completion_mask.bool()
        diff = (engine_lp.to(trainer_lp) - trainer_lp).abs()[mask]
        mean, worst = float(diff.mean()), float(diff.max())
        if not mean <= self.tolerance:
            raise StaleEngineError(
                f"rollout.engine=vllm is out of sync with the trainer at step {step}: on the probe rollout the "
                f"engine's log-probs differ from the trainer's forward by {mean:.3g} on average (max {worst:.3g}; "
                f"tolerance {self.tolerance:g}, rollout.vllm.verify_tolerance). The engine is not sampling "
                f"from the trained weights: the weight push did not reach it ({self.pushes} pushes so far, "
                f"last for weights version {self.version})."
            )
        log.info(
            "rollout.vllm: sync check passed at step %d on rank %d (mean |diff| %.2g, max %.2g)",
            step,
            rank(),
            mean,
            worst,
        )
        return {"rollout/sync_check_diff_mean": mean, "rollout/sync_check_diff_max": worst}

    def score(self, rollout: RolloutBatch, frames) -> torch.Tensor:
        """[1, C] the engine's log-probs (temperature 1) of one rollout's completion tokens, teacher-forced."""
        from vllm import SamplingParams

        prompt = rollout.prompt_ids[0][rollout.prompt_mask[0].bool()].tolist()
        completion = rollout.completion_ids[0][rollout.completion_mask[0].bool()].tolist()
        request = {
            "prompt_token_ids": collapse_image_runs(prompt, self.image_pad_id) + completion,
            "multi_modal_data": {"image": frames_as_images(frames)},
        }
        self.wake()
        out = self.llm.generate(
            [request], SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False), use_tqdm=False
        )[0]
        self.rest()
        tail = out.prompt_logprobs[-len(completion) :]
        values = [lp[tok].logprob for lp, tok in zip(tail, completion)]
        result = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32)
        result[0, : len(values)] = torch.tensor(values, dtype=torch.float32)
        return result

    # -- memory between rollouts ----------------------------------------------------------------------
    def wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def rest(self) -> None:
        """GPUs: release the KV cache (and the weights: the next push brings new ones) until the next call."""
        if self.on_gpu and self.cfg.get("sleep_between_rollouts", True):
            self.llm.sleep(level=1)
            self.sleeping = True

    def close(self) -> None:
        import torch.distributed as dist

        shutil.rmtree(self.dir, ignore_errors=True)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # vLLM's shutdown (also its finalizer, when the last reference goes) destroys the default process
            # group, the trainer's: under several processes the engine lives until the process exits
            _KEPT_UNTIL_EXIT.append(self.__dict__.pop("llm", None))
            return
        self.__dict__.pop("runner", None)
        llm = self.__dict__.pop("llm", None)
        del llm
        gc.collect()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def model_len(vcfg, limits: dict, config) -> int:
    """rollout.vllm.max_model_len, else the longest prompt the data allows + the completion, capped at the
    model's positions (a longer prompt was dropped at set-up anyway: data.max_prompt_length)."""
    if vcfg.get("max_model_len"):
        return int(vcfg.max_model_len)
    positions = getattr(config.get_text_config(), "max_position_embeddings", None) or 32768
    return min(int(limits.get("max_model_len") or positions), int(positions))


def engine_dtype(setting: str, precision: str) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    return torch.float32 if precision in ("32-true", "32", "64-true", "64") else torch.bfloat16


class process_state_kept:
    """Around the engine's construction: the trainer's RNG streams (vLLM reseeds torch, numpy and random
    with its own seed) and the library paths it exports (LD_PRELOAD, LD_LIBRARY_PATH, which every later
    subprocess would inherit) come back as they were. vLLM's CPU worker also makes torch.set_num_threads a
    no-op for the rest of the process: the count set before the engine is the one training keeps."""

    KEEP_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LOCAL_WORLD_SIZE")

    def __enter__(self):
        self.rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        self.env = {k: os.environ.get(k) for k in self.KEEP_ENV}
        return self

    def __exit__(self, *exc):
        torch.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        random.setstate(self.rng[2])
        for key, value in self.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return False


def restore_input_norm(runner) -> None:
    """The vision tower's input normalisation (the processor's image mean and std, folded into the model as
    buffers) is randomised by load_format=dummy and is no parameter a push brings: rebuild it from the
    processor config (without this, 0-13 of 32 greedy tokens agreed with HF after a push)."""
    model = runner.get_model()
    norm = getattr(getattr(model, "visual", None), "input_norm", None)
    if norm is None:
        return
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.fusion.mm_input_norm import build_mm_input_norm

    with set_current_vllm_config(runner.vllm_config):
        fresh = dict(build_mm_input_norm(runner.model_config).named_buffers())
    for name, buffer in norm.named_buffers():
        buffer.data.copy_(fresh[name].to(buffer))


def repack_tied_heads(vllm_model) -> None:
    """Re-run the output head's post-load processing: tied to the token embedding, it is never loaded
    itself, and vLLM's CPU kernels keep a packed copy of the OLD weight otherwise (only 0-2 of 32 greedy
    tokens agreed with HF before this)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in vllm_model.modules():
        if isinstance(module, ParallelLMHead) and getattr(module, "quant_method", None) is not None:
            module.quant_method.process_weights_after_loading(module)
