"""Temporal grounding benchmarks: Charades-STA and TVGBench, R1@{0.3, 0.5, 0.7} and mIoU.

Charades-STA (Gao et al., ICCV 2017; the protocol of VISD Table 4 and Time-R1): each query has one
ground-truth moment; R1@m = share of queries whose top-1 predicted moment has temporal IoU >= m, for
m in {0.3, 0.5, 0.7}; mIoU = mean IoU over all queries. A query without a usable prediction scores IoU 0.
TVGBench (Time-R1, Wang et al. 2025, its eval script) reports the same four numbers, mIoU first.

The predicted moment is read as for V-STaR (vstar.predicted_segment: the answer's <t> span, else its two
numbers, "[2.0, 5.0]"), one interval reader for every benchmark, independent of the reward's answer
grammar; a row without a completion falls back to its ``tiou``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from visd_exp.benchmarks.vstar import predicted_segment, segment_iou
from visd_exp.metrics import charades_summary

#: source name in the records -> benchmark name in tables
SOURCES = {"charades_sta": "Charades-STA", "tvgbench": "TVGBench"}


def row_iou(row: Mapping) -> float:
    """IoU of the completion's predicted moment with ``segment`` (0 when none can be read); ``tiou`` when
    the row has no completion."""
    if row.get("prediction") is not None and row.get("segment") is not None:
        return segment_iou(predicted_segment(row), row["segment"])
    return float(row.get("tiou") or 0.0)


def grounding_report(rows: Sequence[Mapping], source: str) -> dict:
    """{"num_queries", "mIoU", "R1@0.3", "R1@0.5", "R1@0.7"} over the rows whose ``source`` is ``source``."""
    ious = [row_iou(row) for row in rows if row.get("source") == source]
    return {"num_queries": len(ious), **charades_summary(ious)}
