"""GRPO's pieces as pure functions: group-relative advantages and the clipped surrogate."""

from visd_exp.objectives.grpo import clipped_surrogate_loss, group_advantages, selective_log_softmax

__all__ = ["clipped_surrogate_loss", "group_advantages", "selective_log_softmax"]
