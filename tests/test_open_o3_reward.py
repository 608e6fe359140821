"""reward=open_o3 against Open-o3-Video's reward_func.py behaviour, known by construction (tests/reward_cases.py).

Every generated completion's seven expected values (ans_acc, ans_tiou, ans_viou, format, both thinking
temporal rewards, thk_spatial) were derived by hand from the original code; the project's components map
onto them one to one: ans, ans_tmp, ans_spa, fmt, thk_tmp (segment or point by task), thk_spa.
"""

from __future__ import annotations

import dataclasses

import pytest

from reward_cases import all_cases
from visd_exp.rewards import RewardConfig, score

OPEN_O3 = RewardConfig(one_sided_gate=True, box_match="object_mean")
CASES = all_cases()
MAP = {"ans": "ans_acc", "ans_tmp": "ans_tiou", "fmt": "format", "thk_spa": "thk_spatial"}


def _observed(case):
    s = score(case.completion, case.record, progress=case.progress, cfg=OPEN_O3)
    e = case.expected
    expected = {
        "ans": e["ans_acc"],
        "ans_tmp": e["ans_tiou"],
        "ans_spa": e["ans_viou"],
        "fmt": e["format"],
        "thk_tmp": e["thk_seg"] + e["thk_point"],  # at most one of them applies to a task
        "thk_spa": e["thk_spatial"],
    }
    got = {k: (s[k] or 0.0) for k in expected}
    return s, got, expected


def test_the_generated_set_is_broad():
    assert len(CASES) >= 300
    tasks = {c.task for c in CASES}
    assert tasks == {
        "temporal QA",
        "temporal QA (MCQ)",
        "temporal-spatial free-form QA",
        "General video QA MCQ",
        "General video QA Free-form",
        "visual QA",
    }
    # every tier and every kind of outcome is represented
    assert {c.expected["format"] for c in CASES} == {0.0, 0.5, 1.0}
    assert any(0 < c.total < max(x.total for x in CASES) for c in CASES)
    assert sum(c.expected["format"] == 0.0 for c in CASES) >= 100  # malformed outputs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_open_o3_components_and_total(case):
    s, got, expected = _observed(case)
    assert got == pytest.approx(expected, abs=1e-9), case.completion
    assert s["total"] == pytest.approx(case.total, abs=1e-9)


def test_default_differs_from_open_o3_only_where_documented():
    """The default preset (Eq. 13 as written) changes only the gate and the several-GT-box aggregation."""
    changed = set()
    default = RewardConfig()
    for case in CASES:
        a = score(case.completion, case.record, progress=case.progress, cfg=default)
        b = score(case.completion, case.record, progress=case.progress, cfg=OPEN_O3)
        for k in a:
            if a[k] != pytest.approx(b[k], abs=1e-12):
                changed.add((case.task, k))
    assert changed == {
        ("temporal-spatial free-form QA", "thk_spa"),
        ("temporal-spatial free-form QA", "total"),
    }
    # the two documented causes, one at a time
    for field, value in (("one_sided_gate", False), ("box_match", "max")):
        cfg = dataclasses.replace(OPEN_O3, **{field: value})
        assert any(
            score(c.completion, c.record, c.progress, cfg)["thk_spa"]
            != pytest.approx(score(c.completion, c.record, c.progress, OPEN_O3)["thk_spa"])
            for c in CASES
            if c.task == "temporal-spatial free-form QA"
        ), field
