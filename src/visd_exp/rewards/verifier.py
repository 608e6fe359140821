"""The verifier reward R(x, y, a*, e) of Eq. 10: a weighted sum of the components the sample supports."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from visd_exp.rewards import components as C
from visd_exp.rewards.config import RewardConfig
from visd_exp.rewards.groundtruth import ground_truth
from visd_exp.rewards.reading import read


def _unit(x: float | None) -> float | None:
    """Clamp to [0, 1]; a non-finite value (never expected) scores 0."""
    if x is None:
        return None
    return min(1.0, max(0.0, x)) if math.isfinite(x) else 0.0


def _score(completion: str, sample: Mapping, progress: float, cfg: RewardConfig) -> dict[str, float | None]:
    r = read(completion, cfg.parsing)
    gt = ground_truth(sample)  # the task decides K(x): rewards/tasks.py
    out: dict[str, float | None] = {
        "ans": _unit(C.ans(r, gt, cfg)),
        "fmt": _unit(C.fmt(r.text, gt.spec.fmt)),
        "ans_tmp": _unit(C.ans_tmp(r, gt)),
        "ans_spa": _unit(C.ans_spa(r, gt, cfg)),
        "thk_tmp": _unit(C.thk_tmp(r, gt, cfg, progress)),
        "thk_spa": _unit(C.thk_spa(r, gt, cfg)),
    }
    # Eq. 10: R = sum_{k in K(x)} alpha_k r_k, K(x) = the components that are not masked (None).
    out["total"] = float(sum(cfg.weights[k] * v for k, v in out.items() if v is not None))
    return out


def score(
    completion: str, sample: Mapping, progress: float = 0.0, cfg: Any = None
) -> dict[str, float | None]:
    """Score one completion against one record.

    Returns {ans, fmt, ans_tmp, ans_spa, thk_tmp, thk_spa, total}: each component in [0, 1] or None
    (masked: outside the task's K(x), or the record lacks the annotation), total a float. The record's
    `task` picks the components (rewards/tasks.py); an unknown task raises UnknownTaskError. `progress` in [0, 1] anneals Eq. 12's sigma; `cfg` is a RewardConfig, a
    Mapping / DictConfig shaped like conf/reward/default.yaml, or None for the defaults.
    """
    return _score(completion, sample, float(progress), RewardConfig.from_cfg(cfg))


def score_batch(
    completions: Sequence[str], samples: Sequence[Mapping], progress: float = 0.0, cfg: Any = None
) -> list[dict[str, float | None]]:
    """`score` over aligned lists (e.g. G rollouts with their prompt's record repeated G times)."""
    if len(completions) != len(samples):
        raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
    rc = RewardConfig.from_cfg(cfg)
    return [_score(c, s, float(progress), rc) for c, s in zip(completions, samples)]
