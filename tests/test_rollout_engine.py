"""The rollout engine interface (rollout/engine.py) and what needs no vLLM: the config switch, the
engine-vs-trainer mismatch metrics and the truncated importance-sampling correction, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import PROJECT_ROOT
from visd_exp.objectives import clipped_surrogate_loss
from visd_exp.precision import resolve_old_logprobs
from visd_exp.rollout.engine import HFEngine, build_engine, engine_name
from visd_exp.rollout.mismatch import engine_mismatch_metrics, truncated_is_weights
from visd_exp.rollout.vllm_engine import collapse_image_runs


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_engine_is_a_key_of_the_rollout_node():
    assert compose_train([]).rollout.engine == "hf"
    cfg = compose_train(["rollout.engine=vllm", "rollout.vllm.verify_every=7"])
    assert engine_name(cfg.rollout) == "vllm" and cfg.rollout.vllm.verify_every == 7
    with pytest.raises(ValueError, match="rollout.engine='sglang'"):
        engine_name({"engine": "sglang"})
    assert isinstance(build_engine(compose_train([]).rollout, None, None), HFEngine)


def test_old_logprobs_under_vllm_are_the_trainers():
    assert resolve_old_logprobs("auto", "32-true", "hf") == "generate"
    assert resolve_old_logprobs("auto", "32-true", "vllm") == "current"  # the trainer's forward, no extra one
    assert resolve_old_logprobs("recompute", "bf16-mixed", "vllm") == "recompute"
    with pytest.raises(ValueError, match="not the trainer's policy's"):
        resolve_old_logprobs("generate", "32-true", "vllm")


def test_collapse_image_runs():
    pad = 9
    ids = [1, 5, pad, pad, pad, 6, 5, pad, pad, 6, 2, pad]
    assert collapse_image_runs(ids, pad) == [1, 5, pad, 6, 5, pad, 6, 2, pad]
    assert collapse_image_runs([1, 2, 3], pad) == [1, 2, 3]


class _Rows:
    def __init__(self, old, engine, mask):
        self.old_logprobs, self.engine_logprobs, self.completion_mask = old, engine, mask


def test_truncated_is_weights_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]])
    eng = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -3.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = truncated_is_weights(_Rows(old, eng, mask), cap=2.0)
    # exp(0.5) = 1.6487, exp(-1) = 0.3679, exp(0) = 1 | exp(1.9) = 6.69 -> cap 2, exp(0) = 1 | padding 1
    expected = torch.tensor([[1.6487213, 0.3678794, 1.0], [2.0, 1.0, 1.0]])
    torch.testing.assert_close(w, expected)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(_Rows(old, eng, mask), cap=0.0)


def test_is_weights_scale_each_tokens_surrogate():
    logprobs = torch.tensor([[-1.0, -1.0]])
    old = torch.tensor([[-1.0, -1.0]])  # ratio 1: the surrogate per token is A
    adv = torch.tensor([[2.0, 2.0]])
    mask = torch.ones(1, 2)
    plain = clipped_surrogate_loss(logprobs, old, adv, mask, 0.2)
    assert float(plain) == pytest.approx(-2.0)
    weighted = clipped_surrogate_loss(logprobs, old, adv, mask, 0.2, torch.tensor([[0.5, 2.0]]))
    assert float(weighted) == pytest.approx(-(0.5 * 2 + 2.0 * 2) / 2)  # token mean of w_t A
    ones = clipped_surrogate_loss(logprobs, old, adv, mask, 0.2, torch.ones(1, 2))
    assert float(ones) == float(plain)


def test_mismatch_metrics_by_hand():
    engine = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.1, -4.0]])
    trainer = torch.tensor([[-1.1, -2.0, -1.0], [-0.2, -0.1, -4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    m = engine_mismatch_metrics(engine, trainer, mask)
    # |diffs| over valid tokens: 0.1, 0, 0.3, 0, 0 (the padded -9 vs -1 is left out)
    assert m["rollout/logprob_diff_mean"] == pytest.approx(0.4 / 5)
    assert m["rollout/logprob_diff_max"] == pytest.approx(0.3)
    w = torch.tensor([[2.0, 1.0, 1.0], [0.5, 2.0, 1.0]])
    m = engine_mismatch_metrics(engine, trainer, mask, w, cap=2.0)
    assert m["rollout/is_weight_mean"] == pytest.approx(6.5 / 5)
    assert m["rollout/is_weight_clip_frac"] == pytest.approx(2 / 5)
    assert math.isnan(engine_mismatch_metrics(None, trainer, mask)["rollout/logprob_diff_mean"])
