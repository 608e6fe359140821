"""GRPO objective, readable top to bottom (VISD Eq. 9 / 14 / 16-17).

Shapes: B rollouts (prompts x num_generations, grouped contiguously), T completion positions.
"""

from __future__ import annotations

import torch

ADVANTAGE_STDS = ("unbiased", "population")


def check_advantage_config(group_size: int, std: str, eps: float) -> None:
    """Raise ValueError unless (G, algorithm.std, algorithm.adv_eps) define Eq. 14's advantages.

    The unbiased std of a single reward is undefined (0 / 0), so std=unbiased needs G >= 2; with G = 1
    every advantage would be 0 anyway (R - mu_G = 0), so no rollout would ever be reinforced.
    """
    if std not in ADVANTAGE_STDS:
        raise ValueError(f"algorithm.std must be 'unbiased' or 'population', got {std!r}")
    if not eps >= 0.0:  # also rejects NaN
        raise ValueError(f"algorithm.adv_eps must be >= 0, got {eps}")
    if group_size < 1:
        raise ValueError(f"group_size (algorithm.num_generations) must be >= 1, got {group_size}")
    if std == "unbiased" and group_size < 2:
        raise ValueError(
            "algorithm.std=unbiased needs algorithm.num_generations >= 2: the unbiased std of one reward "
            "is undefined (and with one rollout per prompt every group-relative advantage is 0)"
        )


def group_std(rewards: torch.Tensor, group_size: int, std: str = "unbiased") -> torch.Tensor:
    """sigma_G of each group of `group_size` contiguous rollouts, float32 [B / G] (Eq. 14's denominator).

    std=unbiased divides the squared deviations by G - 1 (torch's default ``Tensor.std``: Open-o3-Video's
    and TRL's trainers), std=population by G. VISD Eq. 14 leaves the estimator unspecified.
    """
    check_advantage_config(group_size, std, eps=0.0)
    grouped = rewards.float().view(-1, group_size)
    return grouped.std(dim=1, correction=1 if std == "unbiased" else 0)


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-4, std: str = "unbiased"
) -> torch.Tensor:
    """A_i = (R_i - mu_G) / (sigma_G + eps) within each group of `group_size` rollouts (Eq. 14).

    Rollouts of one prompt are contiguous. Defaults follow Open-o3-Video's trainer, whose SFT recipe
    VISD starts from: sigma_G is torch's unbiased std (``std``: ``unbiased`` or ``population``) and
    eps = 1e-4. A group whose rewards are all equal gets exactly 0 advantage (no NaN, whatever eps,
    including 0) and contributes no gradient. std=unbiased with group_size 1 raises ValueError
    (see ``check_advantage_config``); std=population with group_size 1 gives 0 advantages.
    """
    check_advantage_config(group_size, std, eps)
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be [B] with B divisible by group_size={group_size}, got {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)  # mu_G
    sigma = group_std(rewards, group_size, std)[:, None]  # sigma_G
    advantages = (grouped - mean) / (sigma + eps)  # Eq. 14
    # Every R_i equal: A = 0. Tested on the rewards, not on sigma_G: float32 mu_G of equal values can miss
    # them by an ulp (eight rewards of 0.9 give sigma_G ~ 6e-8), which would leave A ~ +-1 at eps = 0.
    tied = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)
    return torch.where(tied, torch.zeros_like(advantages), advantages).view(-1)


def clipped_surrogate_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    token_advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_pg: float,
    is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """-J (Eq. 9 / 16), to be minimised: token mean within each rollout, then mean over rollouts.

    logprobs, old_logprobs, token_advantages, mask: [B, T]. `token_advantages` is A^_t (Eq. 7); for
    plain GRPO pass A broadcast over T. Rollouts with an empty mask contribute 0 to the sum but still
    count in the mean over rollouts (1/G in Eq. 9). is_weights: [B, T] truncated importance weights
    min(pi_old / pi_engine, cap) of algorithm.rollout_correction (no gradient), or None.
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)  # rho_t (Eq. 17)
    unclipped = ratio * token_advantages
    clipped = torch.clamp(ratio, 1.0 - eps_pg, 1.0 + eps_pg) * token_advantages
    per_token = torch.minimum(unclipped, clipped)  # min(rho A^, clip(rho) A^)
    if is_weights is not None:  # the rollout engine's mismatch: w_t min(rho A^, clip(rho) A^)
        per_token = per_token * is_weights.detach()
    per_rollout = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # 1/|y_i| sum_t
    return -per_rollout.mean()  # 1/G sum_i, negated for minimisation


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature)[index] without a full [B, T, V] fp32 log-softmax.

    logits: [B, T, V] (any float dtype), index: [B, T] -> float32 [B, T]. Works row by row so the
    float32 upcast is one [T, V] slice at a time; gradients flow through (autograd keeps those float32
    rows for backward). The reference for the training path, which never makes the [B, T, V] logits:
    objectives/chunked_logprobs.py takes the same log-probs from the hidden states chunk by chunk.
    """
    out = []
    for row_logits, row_index in zip(logits, index):
        row = row_logits.float()
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(out)
