"""Rollouts: G sampled completions per prompt from the student (the old policy)."""

from visd_exp.rollout.generation import RolloutBatch, generate_rollouts, repeat_prompts

__all__ = ["RolloutBatch", "generate_rollouts", "repeat_prompts"]
