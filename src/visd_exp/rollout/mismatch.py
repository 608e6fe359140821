"""The rollout engine against the trainer: how far their log-probs of the sampled tokens are apart, and the
truncated importance-sampling correction for it (`algorithm.rollout_correction`).

The update's pi_old is the trainer's policy (temperature-scaled log-probs of its own forward, or of HF
`generate` in fp32, which are the same). An engine with other kernels (vLLM; bf16 on GPUs) samples from a
slightly different distribution pi_engine. With the correction on, each token's surrogate is multiplied by

    w_t = min(pi_old(y_t) / pi_engine(y_t), cap)        (TRL's vllm_importance_sampling_correction,
                                                         truncated IS as in verl's rollout correction)

so the gradient estimates the trainer's policy gradient although the engine drew the tokens.
"""

from __future__ import annotations

import math

import torch


def truncated_is_weights(rollouts, cap: float) -> torch.Tensor:
    """[N, C] w_t = min(exp(log pi_old - log pi_engine), cap) at valid positions, 1 at padding."""
    if rollouts.engine_logprobs is None:
        raise ValueError("algorithm.rollout_correction needs the engine's sampled log-probs")
    if not cap > 0:
        raise ValueError(f"algorithm.rollout_correction.cap must be > 0, got {cap}")
    mask = rollouts.completion_mask.bool()
    log_w = (rollouts.old_logprobs - rollouts.engine_logprobs).masked_fill(~mask, 0.0)
    return torch.exp(log_w).clamp(max=cap)


def engine_mismatch_metrics(
    engine_logprobs: torch.Tensor | None,
    trainer_logprobs: torch.Tensor,
    mask: torch.Tensor,
    is_weights: torch.Tensor | None = None,
    cap: float | None = None,
) -> dict[str, float]:
    """rollout/logprob_diff_mean and _max: |log pi_engine - log pi_trainer| over valid tokens (trainer: the
    update's forward, before its optimizer step); rollout/is_weight_mean and _clip_frac with the correction."""
    valid = mask.bool()
    count = int(valid.sum())
    out = {"rollout/logprob_diff_mean": math.nan, "rollout/logprob_diff_max": math.nan}
    if engine_logprobs is not None and count:
        diff = (engine_logprobs - trainer_logprobs).abs()[valid]
        out = {"rollout/logprob_diff_mean": float(diff.mean()), "rollout/logprob_diff_max": float(diff.max())}
    if is_weights is not None and count:
        w = is_weights[valid]
        out["rollout/is_weight_mean"] = float(w.mean())
        out["rollout/is_weight_clip_frac"] = float((w >= cap).float().mean()) if cap else 0.0
    return out
