"""Verifier rewards (VISD Eq. 10-13, Open-o3-Video's reward suite): parse a completion, score it."""

from visd_exp.rewards.config import COMPONENTS, RewardConfig
from visd_exp.rewards.parsing import Claim, ParsedCompletion, parse_completion
from visd_exp.rewards.verifier import score, score_batch

__all__ = [
    "COMPONENTS",
    "Claim",
    "ParsedCompletion",
    "RewardConfig",
    "parse_completion",
    "score",
    "score_batch",
]
