"""RewardConfig: the verifier's knobs, mirrored by conf/reward/default.yaml."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

COMPONENTS = ("ans", "fmt", "ans_tmp", "ans_spa", "thk_tmp", "thk_spa")

_CHOICES = {
    "divide_by": ("all", "matched"),
    "name_match": ("none", "soft", "strict"),
    "box_match": ("max", "object_mean"),
    "parsing": ("strict", "lenient"),
}


def _default_weights() -> Mapping[str, float]:
    return MappingProxyType(dict.fromkeys(COMPONENTS, 1.0))


@dataclass(frozen=True)
class RewardConfig:
    """Verifier settings. The defaults follow VISD's Eq. 10-13 and Open-o3-Video where the paper is silent;
    conf/reward/open_o3.yaml reproduces Open-o3-Video's reward code exactly (README: Rewards)."""

    weights: Mapping[str, float] = field(default_factory=_default_weights)  # alpha_k of Eq. 10
    tau: float = 1.0  # seconds: time tolerance between a claim and a key frame (Eq. 13)
    one_sided_gate: bool = False  # True: Open-o3-Video's gate t_gt - t_pred < tau instead of Eq. 13's
    box_match: str = "max"  # Eq. 13's max over the frame's GT boxes | object_mean (Open-o3-Video)
    divide_by: str = "all"  # thk_spa denominator Z: "all" think claims or only "matched" (time-gated) ones
    name_match: str = "none"  # claim <obj> name vs GT object: none (Eq. 13 as written) | soft | strict
    sigma_start: float = 4.0  # Eq. 12 sigma = sigma_start * (1 - p) while p < sigma_switch ...
    sigma_end: float = 1.0  # ... and sigma_end afterwards (p = training progress in [0, 1])
    sigma_switch: float = 0.75
    outside_video_zero: bool = False  # think timestamps outside [0, duration] score 0 in thk_tmp
    parsing: str = "strict"  # Open-o3-Video's output grammar | lenient (rewards/reading.py)
    rouge_stemmer: bool = True  # Porter stemming in ROUGE (Open-o3-Video, Video-R1)

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown reward weights {sorted(unknown)}; components are {COMPONENTS}")
        merged = dict.fromkeys(COMPONENTS, 1.0)
        merged.update({k: float(v) for k, v in self.weights.items()})
        if not all(math.isfinite(v) for v in merged.values()):
            raise ValueError(f"reward weights must be finite, got {merged}")
        object.__setattr__(self, "weights", MappingProxyType(merged))
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"reward.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("tau", "sigma_start", "sigma_end", "sigma_switch"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"reward.{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, value)
        if self.sigma_end <= 0.0:
            raise ValueError("reward.sigma_end must be > 0")

    def sigma(self, progress: float) -> float:
        """Eq. 12 annealing: sigma_start * (1 - p) for p < sigma_switch, else sigma_end (never below 1e-6)."""
        p = min(1.0, max(0.0, progress)) if math.isfinite(progress) else 0.0
        s = self.sigma_start * (1.0 - p) if p < self.sigma_switch else self.sigma_end
        return max(s, 1e-6)

    @classmethod
    def from_cfg(cls, cfg: Any = None) -> RewardConfig:
        """Build from None (defaults), a RewardConfig, a Mapping, or an OmegaConf DictConfig.

        Unknown keys raise ValueError (a typo in a reward config should fail at start-up, not silently).
        """
        if cfg is None:
            return cls()
        if isinstance(cfg, RewardConfig):
            return cfg
        if type(cfg).__module__.startswith("omegaconf"):  # DictConfig, without importing omegaconf here
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise TypeError(f"reward cfg must be a Mapping or DictConfig, got {type(cfg).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - names
        if unknown:
            raise ValueError(f"unknown reward config keys {sorted(unknown)}; allowed: {sorted(names)}")
        kwargs = dict(cfg)
        if "weights" in kwargs:
            kwargs["weights"] = dict(kwargs["weights"] or {})
        return cls(**kwargs)
