"""GRPO's rollouts and rewards: G samples per prompt from the old policy, scored by the verifier (Eq. 10).

This is the unit every sequence-level algorithm extends (tgrpo.py, ffr.py). The skeleton in module.py
calls `step` once per batch and then, the same for every algorithm: group advantages over
`StepRollouts.rewards` (Eq. 14) -> [VISD token credit, visd.py] -> clipped surrogate -> update.

What a unit may change, and where:
  sample   extra rollouts (T-GRPO: G/2 on shuffled frames; FFR: a re-answer under an evidence patch)
  rewards  reward shaping (T-GRPO's temporal bonus, Video-R1's length bonus; FFR's RIR)
  rows     which rollouts enter the loss (FFR: the chosen rollout per item), with the prompts they
           were sampled under, so the ratio of Eq. 9 is computed under the right observation
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from visd_exp.rewards import RewardConfig, score_batch
from visd_exp.rollout.engine import HFEngine
from visd_exp.rollout.generation import RolloutBatch


@dataclass
class StepRollouts:
    """What one algorithm step hands to the shared update."""

    rollouts: RolloutBatch  # the rows that enter the loss: prompts x G, each prompt's G rows contiguous
    samples: list[dict]  # the record behind each row
    scores: list[dict]  # the verifier's components per row (rewards/* metrics, credit dumps)
    rewards: torch.Tensor  # [N] the scalar each row's group advantage is computed from (Eq. 14)
    metrics: dict[str, float] = field(default_factory=dict)  # the algorithm's own (tgrpo/*, ffr/*)


@dataclass
class Policy:
    """The student as the units use it: model, processor, the vision-token ids never sampled, and the
    rollout engine that samples from it (rollout/engine.py: HF `generate` or a colocated vLLM engine)."""

    model: object
    processor: object
    suppress_ids: list[int]
    engine: object = field(default_factory=HFEngine)

    def generate(self, batch: dict, how) -> RolloutBatch:
        """Completions of a collated batch's prompts under sampling settings `how` (every caller's path)."""
        return self.engine.generate(self.model, self.processor, batch, how, self.suppress_ids)


def answer_accuracy(score: dict) -> float:
    """How correct the answer is, in [0, 1]: the answer term `ans` when the task has one, else the answer's
    temporal IoU, else its spatial score (0 when none is present). T-GRPO's p and FFR's correctness."""
    for key in ("ans", "ans_tmp", "ans_spa"):
        value = score.get(key)
        if value is not None:
            return float(value)
    return 0.0


class GRPO:
    """G rollouts per prompt, the verifier's total as the reward (Eq. 10), nothing added."""

    name = "grpo"

    def __init__(self, cfg):
        self.cfg = cfg  # the whole composed config
        self.algo = cfg.algorithm
        self.G = int(cfg.algorithm.num_generations)
        self.reward_cfg = RewardConfig.from_cfg(cfg.reward)  # checked at start: a typo fails here
        low, high = int(self.algo.get("min_completion_length") or 0), int(self.algo.max_completion_length)
        if not 0 <= low <= high:
            raise ValueError(
                f"algorithm.min_completion_length must be in [0, max_completion_length={high}], got {low}"
            )

    def sample(self, policy: Policy, batch: dict) -> RolloutBatch:
        """Step 1: on-policy rollouts from the old policy (VISD Algorithm 1, line 7)."""
        return policy.generate(batch, self.algo)

    def score(self, texts: list[str], samples: list[dict], progress: float) -> list[dict]:
        """The verifier's components and total of each completion (Eq. 10-13)."""
        return score_batch(texts, samples, progress=progress, cfg=self.reward_cfg)

    def step(self, policy: Policy, batch: dict, progress: float, watch) -> StepRollouts:
        with watch("rollout"):
            rollouts = self.sample(policy, batch)
        with watch("reward"):
            samples = [sample for sample in batch["samples"] for _ in range(self.G)]
            scores = self.score(rollouts.texts, samples, progress)
            rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
        return StepRollouts(rollouts, samples, scores, rewards)

    def close(self) -> None:
        """Release clients (FFR's teacher); nothing for GRPO."""
