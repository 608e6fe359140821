"""GRPO's pieces as pure functions: group-relative advantages and the clipped surrogate."""

from visd_exp.objectives.grpo import (
    ADVANTAGE_STDS,
    check_advantage_config,
    clipped_surrogate_loss,
    group_advantages,
    group_std,
    selective_log_softmax,
)

__all__ = [
    "ADVANTAGE_STDS",
    "check_advantage_config",
    "clipped_surrogate_loss",
    "group_advantages",
    "group_std",
    "selective_log_softmax",
]
