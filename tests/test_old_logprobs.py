"""`algorithm.old_logprobs=current` (issue 23, item 4): with exactly one update per rollout batch, pi_old is
the policy being updated, so the update's own forward, detached, replaces the recompute forward: the
same loss and gradients as `recompute` (fp32, 1e-6), ratio 1, and one forward fewer per step."""

from __future__ import annotations

import copy

import pytest
import torch

from test_microbatch import case  # noqa: F401 (the fixture: 6 rollouts of 2 prompts on the tiny model)
from visd_exp.precision import resolve_old_logprobs
from visd_exp.step_forward import policy_update, recompute_logprobs


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_current_gives_recomputes_loss_and_gradients_without_its_forward(case):  # noqa: F811
    model, _, rollouts, _, advantages = case
    advantages = advantages + 0.25  # a non-zero mean: at ratio 1 the loss is -mean(A)
    recomputed = copy.copy(rollouts)
    recomputed.old_logprobs = recompute_logprobs(model, rollouts, 0.9, 3)
    kwargs = dict(temperature=0.9, epsilon=0.2, micro_batch_size=3)
    model.zero_grad(set_to_none=True)
    reference = policy_update(model, recomputed, advantages, **kwargs)
    expected = grads(model)

    forwards = []  # every forward of the language model embeds its input ids once
    hook = model.get_input_embeddings().register_forward_hook(lambda *_: forwards.append(1))
    stale = copy.copy(rollouts)  # the sampling pass's (perturbed) log-probs: must not be used
    try:
        current = policy_update(model, stale, advantages, old_is_current=True, **kwargs)
    finally:
        hook.remove()
    got = grads(model)
    assert len(forwards) == 2  # the update's two micro-batches, no recompute pass
    assert abs(current.loss.item() - reference.loss.item()) < 1e-6 and abs(reference.loss.item()) > 1e-3
    assert got.keys() == expected.keys() and expected
    worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
    assert worst < 1e-6, worst
    # the stale log-probs would have changed the loss: the switch is what made them irrelevant
    model.zero_grad(set_to_none=True)
    stale_loss = policy_update(model, stale, advantages, **kwargs).loss.item()
    model.zero_grad(set_to_none=True)
    assert abs(stale_loss - reference.loss.item()) > 1e-3


def test_auto_skips_the_old_logprob_forward_unless_a_correction_needs_it():
    assert resolve_old_logprobs("auto", "bf16-mixed") == "current"
    assert resolve_old_logprobs("auto", "32-true") == "generate"
    assert resolve_old_logprobs("auto", "32-true", "vllm") == "current"
    assert resolve_old_logprobs("auto", "bf16-mixed", "vllm", correction=True) == "recompute"
    assert resolve_old_logprobs("recompute", "bf16-mixed") == "recompute"
    with pytest.raises(ValueError, match="rollout_correction"):
        resolve_old_logprobs("current", "bf16-mixed", "vllm", correction=True)
