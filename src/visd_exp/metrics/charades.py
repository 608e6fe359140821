"""Charades-STA temporal grounding metrics: R1@IoU thresholds and mean IoU over queries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)


def _clean(ious: Iterable[float]) -> list[float]:
    # A non-finite IoU (should not happen with metrics.temporal_iou) counts as a miss.
    return [float(x) if math.isfinite(float(x)) else 0.0 for x in ious]


def recall_at_iou(
    ious: Iterable[float], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[float, float]:
    """R1@m: share of queries whose top-1 temporal IoU is >= m, for each threshold m. Empty -> 0.0."""
    vals = _clean(ious)
    n = len(vals)
    return {float(t): (sum(v >= t for v in vals) / n if n else 0.0) for t in thresholds}


def mean_iou(ious: Iterable[float]) -> float:
    """mIoU: mean temporal IoU over queries. Empty -> 0.0."""
    vals = _clean(ious)
    return sum(vals) / len(vals) if vals else 0.0


def charades_summary(
    ious: Iterable[float], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """Loggable summary: {"R1@0.3": ..., "R1@0.5": ..., "R1@0.7": ..., "mIoU": ...}."""
    vals = _clean(ious)
    out = {f"R1@{t:g}": r for t, r in recall_at_iou(vals, thresholds).items()}
    out["mIoU"] = mean_iou(vals)
    return out
