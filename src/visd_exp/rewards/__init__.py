"""Verifier rewards (VISD Eq. 10-13, Open-o3-Video's reward suite): read a completion, score it by task."""

from visd_exp.rewards.config import COMPONENTS, RewardConfig
from visd_exp.rewards.parsing import Claim, ParsedCompletion, parse_completion
from visd_exp.rewards.tasks import TASK_NAMES, TASKS, TaskSpec, UnknownTaskError, canonical_task, task_spec
from visd_exp.rewards.verifier import score, score_batch

__all__ = [
    "COMPONENTS",
    "TASKS",
    "TASK_NAMES",
    "Claim",
    "ParsedCompletion",
    "RewardConfig",
    "TaskSpec",
    "UnknownTaskError",
    "canonical_task",
    "parse_completion",
    "score",
    "score_batch",
    "task_spec",
]
