"""Judges that write structured process feedback on student rollouts (VISD's privileged context f).

The feedback is diagnostic context for the teacher only: it never enters the reward, carries no
gradient and is not used at inference. ``build_judge(cfg.judge)`` returns None for ``judge=none``,
a deterministic offline ``RuleJudge`` for ``judge=rule`` and an ``HttpJudge`` for any config with a
``base_url`` (``judge=openai``, ``judge=vllm``).

A judge that cannot work raises ``JudgeError`` (a required API key variable unset: when it is built;
a client error that will repeat, or too many fallbacks: out of ``judge_batch``), so the run stops with
the cause instead of training without feedback.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING

from visd_exp.judge.base import METRIC_KEYS, Judge, JudgeError, JudgeItem, evidence_from_sample
from visd_exp.judge.prompts import build_messages
from visd_exp.judge.rule import Diagnosis, RuleJudge, build_rule_judge

if TYPE_CHECKING:
    from visd_exp.judge.http import HttpJudge

__all__ = [
    "METRIC_KEYS",
    "Diagnosis",
    "HttpJudge",
    "Judge",
    "JudgeError",
    "JudgeItem",
    "RuleJudge",
    "build_judge",
    "build_messages",
    "evidence_from_sample",
]

_NONE_NAMES = (None, "", "none", "null", "off")
# Config keys that describe the config itself rather than the judge.
_META_KEYS = ("name", "defaults", "_target_")


def __getattr__(name: str):
    if name == "HttpJudge":  # httpx is only imported when an HTTP judge is wanted
        from visd_exp.judge.http import HttpJudge

        return HttpJudge
    raise AttributeError(name)


def _to_dict(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ()
    if DictConfig and isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"judge config must be a mapping, got {type(cfg).__name__}")


def build_judge(cfg) -> Judge | None:
    """The judge described by the ``judge`` config node; None when there is none (``judge=none``)."""
    if cfg is None:
        return None
    opts = _to_dict(cfg)
    name = opts.get("name")
    name = name.strip().lower() if isinstance(name, str) else name
    if name in _NONE_NAMES:
        return None
    if name == "rule":
        return build_rule_judge(opts)
    if "base_url" in opts:
        from visd_exp.judge.http import HttpJudge

        kwargs = {k: v for k, v in opts.items() if k not in _META_KEYS}
        known = set(inspect.signature(HttpJudge).parameters) - {"name"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown HTTP-judge options {unknown}; known: {sorted(known)}")
        return HttpJudge(name=str(name), **kwargs)
    raise ValueError(f"unknown judge {name!r}: use none, rule, or a config with a base_url")
