"""Grounding metrics against hand-computed numbers."""

import math

import pytest

from visd_exp.metrics import (
    am,
    box_iou,
    charades_summary,
    lgm,
    mean_iou,
    recall_at_iou,
    temporal_iou,
    vstar_summary,
)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ([0.0, 10.0], [5.0, 15.0], 5 / 15),  # inter [5,10] = 5, union 10 + 10 - 5 = 15
        ([2.0, 6.0], [2.0, 6.0], 1.0),
        ([2.0, 4.0], [0.0, 8.0], 2 / 8),  # contained: inter 2, union 8
        ([6.0, 2.0], [2.0, 6.0], 0.0),  # reversed prediction (end < start)
        ([2.0, 6.0], [6.0, 2.0], 0.0),  # reversed ground truth
        ([0.0, 5.0], [5.0, 10.0], 0.0),  # touching: inter 0
        ([0.0, 1.0], [3.0, 4.0], 0.0),  # disjoint
        ([3.0, 3.0], [3.0, 3.0], 0.0),  # zero-length union
        ([3.0, 3.0], [2.0, 4.0], 0.0),  # a point inside: inter 0, union 2
        ([float("nan"), 1.0], [0.0, 1.0], 0.0),
        ([0.0, float("inf")], [0.0, 1.0], 0.0),
        (None, [0.0, 1.0], 0.0),
    ],
)
def test_temporal_iou(pred, gt, expected):
    assert temporal_iou(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),  # inter 5*5 = 25, union 100 + 100 - 25 = 175
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),  # contained: 2*2 / 100
        ([0, 0, 10, 10], [0, 0, 10, 5], 50 / 100),
        ([0, 0, 10, 10], [10, 10, 20, 20], 0.0),  # corner touch
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([5, 5, 5, 10], [0, 0, 10, 10], 0.0),  # zero width
        ([5, 5, 5, 5], [5, 5, 5, 5], 0.0),  # two identical zero-area boxes: 0, not NaN
        ([10, 10, 0, 0], [0, 0, 10, 10], 0.0),  # reversed corners = negative area
        ([0, 0, float("nan"), 10], [0, 0, 10, 10], 0.0),
        ([0, 0, 1e300, 1e300], [0, 0, 1e300, 1e300], 0.0),  # area overflows to inf
        ([0, 0, 10], [0, 0, 10, 10], 0.0),
    ],
)
def test_box_iou(a, b, expected):
    got = box_iou(a, b)
    assert not math.isnan(got)
    assert got == pytest.approx(expected)


def test_am_lgm_hand_computed():
    # AM = (0.5 + 0.3 + 0.1) / 3 = 0.3
    assert am(0.5, 0.3, 0.1) == pytest.approx(0.3)
    # LGM = -(ln 0.5 + ln 0.7 + ln 0.9) / 3 = (0.693147 + 0.356675 + 0.105361) / 3 = 0.385061
    assert lgm(0.5, 0.3, 0.1) == pytest.approx(0.385061, abs=1e-6)
    assert lgm(0.0, 0.0, 0.0) == 0.0
    # 1.0 is clamped to 1 - 1e-6: each term -ln(1e-6) = 13.815511
    assert lgm(1.0, 1.0, 1.0) == pytest.approx(13.815511, abs=1e-5)
    assert math.isfinite(lgm(1.0, 0.0, 0.0))


def test_vstar_summary():
    out = vstar_summary(
        {"acc": 0.5, "m_tiou": 0.3, "m_viou": 0.1}, {"acc": 0.5, "m_tiou": 0.2, "m_viou": 0.2}
    )
    # chain 2: AM = 0.9 / 3 = 0.3; LGM = -(ln 0.5 + 2 ln 0.8) / 3 = (0.693147 + 0.446287) / 3 = 0.379812
    assert out["am_chain1"] == pytest.approx(0.3)
    assert out["am_chain2"] == pytest.approx(0.3)
    assert out["lgm_chain2"] == pytest.approx(0.379812, abs=1e-6)
    assert out["mAM"] == pytest.approx(0.3)
    assert out["mLGM"] == pytest.approx((0.385061 + 0.379812) / 2, abs=1e-6)


def test_vstar_rejects_percentages_and_missing_keys():
    with pytest.raises(ValueError):
        am(50.0, 30.0, 10.0)
    with pytest.raises(KeyError):
        vstar_summary({"acc": 0.5}, {"acc": 0.5, "m_tiou": 0.2, "m_viou": 0.2})


def test_charades_recall_and_miou():
    ious = [0.2, 0.3, 0.5, 0.69, 0.7, 0.9]
    # >= 0.3: {0.3, 0.5, 0.69, 0.7, 0.9} = 5/6; >= 0.5: 4/6; >= 0.7: {0.7, 0.9} = 2/6
    assert recall_at_iou(ious) == pytest.approx({0.3: 5 / 6, 0.5: 4 / 6, 0.7: 2 / 6})
    # (0.2 + 0.3 + 0.5 + 0.69 + 0.7 + 0.9) / 6 = 3.29 / 6
    assert mean_iou(ious) == pytest.approx(3.29 / 6)
    summary = charades_summary(ious)
    assert set(summary) == {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"}
    assert recall_at_iou([]) == {0.3: 0.0, 0.5: 0.0, 0.7: 0.0}
    assert mean_iou([]) == 0.0


def test_rewards_reuse_metrics_iou():
    from visd_exp.rewards import components

    assert components.box_iou is box_iou
    assert components.temporal_iou is temporal_iou
