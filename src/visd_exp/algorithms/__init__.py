"""Algorithms as units beside one shared step (module.py).

Sequence level, chosen by the `algorithm` config group (`algorithm.name`):
  grpo.py    GRPO: G rollouts per prompt, the verifier's reward              (the base every unit extends)
  tgrpo.py   Video-R1's T-GRPO: + G/2 rollouts on shuffled frames, a temporal bonus, a length bonus
  ffr.py     Find-Fix-Reason: failed rollouts re-answered under a teacher's evidence patch, chosen
             rollout per item, Robust Improvement Reward
Token level, on whenever a teacher is configured (`teacher` group, lambda > 0):
  visd.py    VISD's credit: judge feedback -> teacher replay -> Delta_t -> m_t -> A^_t (step_forward.py)
So `+experiment=tgrpo_visd` is T-GRPO's rollouts and rewards with VISD's token credit.
"""

from __future__ import annotations

from visd_exp.algorithms.grpo import GRPO, Policy, StepRollouts, answer_accuracy

__all__ = ["GRPO", "Policy", "StepRollouts", "answer_accuracy", "build_algorithm", "ALGORITHMS"]

ALGORITHMS = ("grpo", "tgrpo", "ffr")


def build_algorithm(cfg) -> GRPO:
    """The sequence-level unit named by `algorithm.name`."""
    name = cfg.algorithm.get("name", "grpo")
    if name == "grpo":
        return GRPO(cfg)
    if name == "tgrpo":
        from visd_exp.algorithms.tgrpo import TGRPO

        return TGRPO(cfg)
    if name == "ffr":
        from visd_exp.algorithms.ffr import FFR

        return FFR(cfg)
    raise ValueError(f"algorithm.name={name!r}: one of {', '.join(ALGORITHMS)} (sft runs through sft.py)")
