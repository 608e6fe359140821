"""Direction-magnitude decoupled token credit (VISD Eq. 5-7, appendix E.3 Eq. 25-28) and its log metrics.

All functions run without autograd and return float32. ``advantages`` is the rollout-level advantage A,
shape [B] (one per rollout); a [B, T] tensor that is already per token is accepted too.
"""

import torch


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast rollout advantages [B] (or [B, T]) to the [B, T] shape of ``like``, float32."""
    advantages = advantages.detach().to(device=like.device, dtype=torch.float32)
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages[:, None].expand_as(like)
    if advantages.shape == like.shape:
        return advantages
    raise ValueError(
        f"advantages must be [B] or [B, T] for a {tuple(like.shape)} tensor, got {tuple(advantages.shape)}"
    )


@torch.no_grad()
def token_weights(delta: torch.Tensor, advantages: torch.Tensor, eps_w: float) -> torch.Tensor:
    """m_t = clip(exp(sign(A) * Delta_t), 1 - eps_w, 1 + eps_w) (Eq. 5-6 / 25), float32 [B, T].

    A = 0 gives sign(A) = 0, hence w_t = exp(0) = 1 and m_t = 1 (such a rollout contributes nothing anyway).
    Delta = 0 (e.g. at padding) also gives m_t = 1.
    """
    if not 0.0 <= eps_w < 1.0:
        raise ValueError(f"eps_w must be in [0, 1) so that m_t > 0, got {eps_w}")
    delta = delta.detach().float()
    sign_a = torch.sign(_per_token(advantages, delta))
    w = torch.exp(sign_a * delta)  # Eq. 5 (overflow to inf is clipped below)
    return w.clamp(1.0 - eps_w, 1.0 + eps_w)  # Eq. 6


@torch.no_grad()
def token_advantages(advantages: torch.Tensor, weights: torch.Tensor, lam: float) -> torch.Tensor:
    """A^_t = A * ((1 - lambda) + lambda * m_t) (Eq. 7 / 26), float32 [B, T].

    With m_t in [1 - eps_w, 1 + eps_w]: sign(A^_t) = sign(A) (Eq. 27) and A^_t / A is within
    [1 - lambda eps_w, 1 + lambda eps_w] (Eq. 28); lambda = 0 returns A broadcast exactly (plain GRPO).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    weights = weights.detach().float()
    return _per_token(advantages, weights) * ((1.0 - lam) + lam * weights)  # Eq. 7


@torch.no_grad()
def credit_stats(
    delta: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None, eps_w: float
) -> dict[str, float]:
    """Logged credit metrics over valid positions (``mask`` True / nonzero; None = all positions).

    ``credit/delta_std`` is the population std (ddof = 0). ``credit/weight_clip_frac`` is the share of m_t
    within 1e-6 of 1 - eps_w or 1 + eps_w. With no valid position every metric is 0.0.
    """
    delta = delta.detach().float()
    weights = weights.detach().float()
    valid = torch.ones_like(delta, dtype=torch.bool) if mask is None else mask.to(delta.device).bool()
    d, m = delta[valid], weights[valid]
    if d.numel() == 0:
        keys = ("delta_mean", "delta_std", "delta_abs_mean", "weight_mean", "weight_clip_frac")
        return {f"credit/{key}": 0.0 for key in keys}
    at_bound = ((m - (1.0 - eps_w)).abs() <= 1e-6) | ((m - (1.0 + eps_w)).abs() <= 1e-6)
    return {
        "credit/delta_mean": d.mean().item(),
        "credit/delta_std": d.std(correction=0).item(),
        "credit/delta_abs_mean": d.abs().mean().item(),
        "credit/weight_mean": m.mean().item(),
        "credit/weight_clip_frac": at_bound.float().mean().item(),
    }
