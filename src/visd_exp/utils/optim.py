"""AdamW as every training module builds it: weight decay on matrices only (not on biases or norms)."""

from __future__ import annotations

import torch


def adamw(model: torch.nn.Module, optim) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters from the `optim` config (lr, weight_decay, betas, eps)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            ndim = len(getattr(param, "ds_shape", param.shape))  # ZeRO-3 partitioned: .shape is the shard's
            (no_decay if ndim < 2 or "norm" in name else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
    )
