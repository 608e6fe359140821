"""Small helpers of the training step: a per-stage stopwatch, numpy's RNG state in checkpoints, and the
per-component reward metrics."""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict

import numpy as np
import torch


class Stopwatch:
    """Accumulates wall time per stage of one step: `with watch("rollout"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.seconds[stage] += time.perf_counter() - start


def numpy_rng_state() -> dict:
    """numpy's global RNG state as tensors and numbers (checkpoints load with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def set_numpy_rng_state(state: dict) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


def reward_metrics(scores: list[dict], samples: list[dict]) -> dict[str, float]:
    """rewards/<component>/mean and /masked_frac, and the two thinking temporal versions' means."""
    from visd_exp.rewards import COMPONENTS, task_spec

    metrics = {}
    # thk_tmp is Eq. 11 (segment) or Eq. 12 (point) by task: both curves, each over its own tasks
    for kind in ("segment", "point"):
        values = [
            s["thk_tmp"]
            for s, x in zip(scores, samples)
            if task_spec(x["task"]).thk_tmp == kind and s["thk_tmp"] is not None
        ]
        metrics[f"rewards/thk_tmp_{kind}/mean"] = sum(values) / len(values) if values else math.nan
    for name in COMPONENTS:
        values = [s[name] for s in scores if s.get(name) is not None]
        metrics[f"rewards/{name}/mean"] = sum(values) / len(values) if values else math.nan
        # the share of rollouts whose sample cannot support the component (the paper's K(x) masking)
        metrics[f"rewards/{name}/masked_frac"] = 1.0 - len(values) / len(scores)
    return metrics
