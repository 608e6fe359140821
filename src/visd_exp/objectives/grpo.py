"""GRPO objective, readable top to bottom (VISD Eq. 9 / 14 / 16-17).

Shapes: B rollouts (prompts x num_generations, grouped contiguously), T completion positions.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (R_i - mean_G) / (std_G + eps) within each group of `group_size` rollouts (Eq. 14).

    Rollouts of one prompt are contiguous. std is the population std (unbiased=False), so a group of
    identical rewards gives exactly 0 advantage (no NaN) and contributes no gradient.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be [B] with B divisible by group_size={group_size}, got {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)  # mu_G
    std = grouped.std(dim=1, unbiased=False, keepdim=True)  # sigma_G
    return ((grouped - mean) / (std + eps)).view(-1)  # Eq. 14


def clipped_surrogate_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    token_advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_pg: float,
) -> torch.Tensor:
    """-J (Eq. 9 / 16), to be minimised: token mean within each rollout, then mean over rollouts.

    logprobs, old_logprobs, token_advantages, mask: [B, T]. `token_advantages` is A^_t (Eq. 7); for
    plain GRPO pass A broadcast over T. Rollouts with an empty mask contribute 0 to the sum but still
    count in the mean over rollouts (1/G in Eq. 9).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)  # rho_t (Eq. 17)
    unclipped = ratio * token_advantages
    clipped = torch.clamp(ratio, 1.0 - eps_pg, 1.0 + eps_pg) * token_advantages
    per_token = torch.minimum(unclipped, clipped)  # min(rho A^, clip(rho) A^)
    per_rollout = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # 1/|y_i| sum_t
    return -per_rollout.mean()  # 1/G sum_i, negated for minimisation


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature)[index] without a full [B, T, V] fp32 log-softmax.

    logits: [B, T, V] (any float dtype), index: [B, T] -> float32 [B, T]. Works row by row so the
    float32 upcast is one [T, V] slice at a time; gradients flow through.
    """
    out = []
    for row_logits, row_index in zip(logits, index):
        row = row_logits.float()
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(out)
