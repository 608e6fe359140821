"""Interval and box IoU: the one implementation shared by the rewards and the evaluators."""

from __future__ import annotations

import math
from collections.abc import Sequence


def temporal_iou(pred: Sequence[float] | None, gt: Sequence[float] | None) -> float:
    """IoU of two intervals [start, end] in seconds.

    Returns 0.0 when either interval is missing, not finite, reversed (end < start), or when the union
    has zero length (two identical points). Never NaN.
    """
    if pred is None or gt is None or len(pred) != 2 or len(gt) != 2:
        return 0.0
    s1, e1 = float(pred[0]), float(pred[1])
    s2, e2 = float(gt[0]), float(gt[1])
    if not all(math.isfinite(v) for v in (s1, e1, s2, e2)) or e1 < s1 or e2 < s2:
        return 0.0
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = (e1 - s1) + (e2 - s2) - inter
    if union <= 0.0:
        return 0.0
    return min(1.0, max(0.0, inter / union))


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """IoU of two boxes [x1, y1, x2, y2] (same coordinate frame).

    A box with zero or negative area (x2 <= x1 or y2 <= y1), or with non-finite coordinates, has IoU 0
    with everything, itself included. Never NaN.
    """
    if a is None or b is None or len(a) != 4 or len(b) != 4:
        return 0.0
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    if not (ax2 > ax1 and ay2 > ay1 and bx2 > bx1 and by2 > by1):
        return 0.0
    if not (math.isfinite(area_a) and math.isfinite(area_b)):
        return 0.0
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = area_a + area_b - inter
    if not union > 0.0 or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))
