"""GRPO pieces against hand-computed values (VISD Eq. 9 / 14)."""

from __future__ import annotations

import math

import pytest
import torch

from visd_exp.objectives import (
    check_advantage_config,
    clipped_surrogate_loss,
    group_advantages,
    group_std,
    selective_log_softmax,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.5, squared deviations sum to 1: population std sqrt(1/4) = 0.5 -> [1, -1, -1, 1];
    # unbiased std sqrt(1/3) -> 0.5 * sqrt(3) = 0.866...; group 2: all equal -> zeros (no NaN)
    pop = group_advantages(rewards, group_size=4, eps=0.0, std="population")
    assert pop[:4].tolist() == [1.0, -1.0, -1.0, 1.0]
    unbiased = group_advantages(rewards, group_size=4, eps=0.0, std="unbiased")
    torch.testing.assert_close(unbiased[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 * math.sqrt(3))
    # the defaults are Open-o3-Video's: unbiased std, eps 1e-4 -> 0.5 / (sqrt(1/3) + 1e-4)
    default = group_advantages(rewards, group_size=4)
    assert default[0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-4), rel=1e-6)
    for adv in (pop, unbiased, default):
        assert torch.equal(adv[4:], torch.zeros(4))


def test_group_advantages_two_rollouts_and_eps():
    # G = 2, rewards 3 and 1: mean 2; population std 1, unbiased std sqrt(2)
    rewards = torch.tensor([3.0, 1.0])
    assert group_advantages(rewards, 2, eps=0.0, std="population").tolist() == [1.0, -1.0]
    torch.testing.assert_close(
        group_advantages(rewards, 2, eps=0.0, std="unbiased"), torch.tensor([1.0, -1.0]) / math.sqrt(2)
    )
    torch.testing.assert_close(
        group_advantages(rewards, 2, eps=0.5, std="population"), torch.tensor([1.0, -1.0]) / 1.5
    )
    # torch's default Tensor.std is the unbiased one (what Open-o3-Video's and TRL's trainers call)
    torch.testing.assert_close(group_std(rewards, 2), rewards.view(1, 2).std(dim=1))
    torch.testing.assert_close(group_std(rewards, 2, "population"), torch.tensor([1.0]))


@pytest.mark.parametrize("std", ["unbiased", "population"])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_identical_rewards_give_exactly_zero_advantage(std, eps):
    # float32 mu_G of eight 0.9's is not exactly 0.9 (sigma_G ~ 6e-8): a check on sigma_G alone would
    # give advantages near +-1 at eps = 0 and ~6e-4 at eps = 1e-4
    rewards = torch.cat([torch.full((8,), 0.9), torch.full((8,), 0.3), torch.arange(8.0)])
    adv = group_advantages(rewards, group_size=8, eps=eps, std=std)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[:16], torch.zeros(16))
    assert (adv[16:] != 0).all()


def test_group_size_one():
    # population std: sigma_G = 0 and R - mu_G = 0 -> A = 0; unbiased std of one reward is 0 / 0 -> refused
    assert torch.equal(group_advantages(torch.tensor([1.0, 2.0]), 1, std="population"), torch.zeros(2))
    with pytest.raises(ValueError, match="num_generations >= 2"):
        group_advantages(torch.tensor([1.0, 2.0]), 1, std="unbiased")
    with pytest.raises(ValueError, match="num_generations >= 2"):
        check_advantage_config(1, "unbiased", 1e-4)
    check_advantage_config(2, "unbiased", 1e-4)  # the smallest valid group


def test_group_advantages_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="'unbiased' or 'population'"):
        group_advantages(torch.zeros(4), group_size=4, std="biased")
    with pytest.raises(ValueError, match="adv_eps"):
        group_advantages(torch.zeros(4), group_size=4, eps=-1e-4)


def test_clipped_surrogate_by_hand():
    # two rollouts; rollout 0 has 2 valid tokens, rollout 1 has 1 valid token (+1 padding)
    old = torch.zeros(2, 2)
    new = torch.tensor([[math.log(1.5), math.log(0.5)], [math.log(1.1), 5.0]])
    adv = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # rollout 0: min(1.5*1, 1.2*1)=1.2 ; min(0.5*1, 0.8*1)=0.5 -> mean 0.85
    # rollout 1: min(1.1*-2, 1.1*-2) = -2.2 (inside the clip range) -> mean -2.2
    # J = (0.85 - 2.2) / 2 = -0.675 ; loss = -J = 0.675
    loss = clipped_surrogate_loss(new, old, adv, mask, eps_pg=0.2)
    assert loss.item() == pytest.approx(0.675, abs=1e-6)


def test_negative_advantage_uses_the_pessimistic_side():
    old = torch.zeros(1, 1)
    new = torch.tensor([[math.log(0.5)]])
    adv = torch.tensor([[-1.0]])
    # min(0.5 * -1, 0.8 * -1) = -0.8 -> loss 0.8
    assert clipped_surrogate_loss(new, old, adv, torch.ones(1, 1), 0.2).item() == pytest.approx(0.8)


def test_gradient_of_on_policy_loss_is_the_policy_gradient():
    """At ratio 1 the gradient is -1/G sum_i 1/|y_i| sum_t A_t grad log pi (Eq. 1 with token means)."""
    logits = torch.randn(2, 3, 5, requires_grad=True)
    tokens = torch.tensor([[1, 2, 3], [0, 4, 4]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([[0.5] * 3, [-1.0] * 3])
    logp = selective_log_softmax(logits, tokens)
    clipped_surrogate_loss(logp, logp.detach(), adv, mask, 0.2).backward()
    expected_logits = logits.detach().clone().requires_grad_(True)
    lp = torch.log_softmax(expected_logits, -1).gather(-1, tokens[..., None])[..., 0]
    (-((lp * adv * mask).sum(1) / mask.sum(1)).mean()).backward()
    assert torch.allclose(logits.grad, expected_logits.grad, atol=1e-6)


def test_selective_log_softmax_matches_full_and_temperature():
    logits = torch.randn(2, 4, 11, dtype=torch.bfloat16)
    index = torch.randint(0, 11, (2, 4))
    got = selective_log_softmax(logits, index, temperature=0.7)
    want = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, index[..., None])[..., 0]
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)
