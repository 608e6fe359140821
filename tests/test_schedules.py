"""Lambda schedules (where lambda is annealed) and their end condition."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from visd_exp.callbacks.lambda_schedule import LambdaSchedule, lambda_at, lambda_is_zero_for_good

LINEAR = OmegaConf.create({"name": "linear", "start": 0.5, "end": 0.0, "steps": 600})


@pytest.mark.parametrize(("step", "value"), [(0, 0.5), (300, 0.25), (600, 0.0), (900, 0.0)])
def test_linear_is_the_paper_schedule(step, value):
    assert lambda_at(step, LINEAR) == pytest.approx(value)


def test_cosine_step_and_constant():
    cosine = OmegaConf.create({"name": "cosine", "start": 0.5, "end": 0.1, "steps": 100})
    assert lambda_at(0, cosine) == pytest.approx(0.5)
    assert lambda_at(50, cosine) == pytest.approx(0.1 + 0.4 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lambda_at(100, cosine) == pytest.approx(0.1)
    step = OmegaConf.create({"name": "step", "start": 0.5, "end": 0.2, "steps": 10})
    assert [lambda_at(s, step) for s in (0, 9, 10, 50)] == [0.5, 0.5, 0.2, 0.2]
    assert lambda_at(123, OmegaConf.create({"name": "constant", "value": 0.3})) == 0.3
    with pytest.raises(ValueError, match="schedule.name"):
        lambda_at(0, OmegaConf.create({"name": "exp", "start": 1, "end": 0, "steps": 1}))


def test_zero_for_good():
    assert not lambda_is_zero_for_good(599, LINEAR) and lambda_is_zero_for_good(600, LINEAR)
    assert not lambda_is_zero_for_good(
        10**6, OmegaConf.create({"name": "linear", "start": 0.5, "end": 0.1, "steps": 10})
    )
    assert lambda_is_zero_for_good(0, OmegaConf.create({"name": "constant", "value": 0.0}))


def test_callback_state_round_trip():
    cb = LambdaSchedule(LINEAR)

    class T:
        global_step = 300

    class M:
        pass

    module = M()
    cb.on_train_batch_start(T(), module, None, 0)
    assert module.lam == pytest.approx(0.25) and module.teacher_active
    restored = LambdaSchedule(LINEAR)
    restored.load_state_dict(cb.state_dict())
    assert restored.lam == pytest.approx(0.25)
