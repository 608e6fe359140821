"""Temporal grounding benchmarks: Charades-STA and TVGBench, R1@{0.3, 0.5, 0.7} and mIoU.

Charades-STA (Gao et al., ICCV 2017; the protocol of VISD Table 4 and Time-R1): each query has one
ground-truth moment; R1@m = share of queries whose top-1 predicted moment has temporal IoU >= m, for
m in {0.3, 0.5, 0.7}; mIoU = mean IoU over all queries. A query without a usable prediction scores IoU 0.
TVGBench (Time-R1, Wang et al. 2025, its eval script) reports the same four numbers, mIoU first.

The IoU of a row is the evaluation's own ``tiou`` (evaluation.score_prediction: the reward's temporal IoU of
the answered interval under the configured answer grammar); a row without one (e.g. read back from a file
written elsewhere) is scored here from its completion with the project's parser and ``segment``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from visd_exp.metrics import charades_summary, temporal_iou
from visd_exp.rewards.parsing import parse_completion

#: source name in the records -> benchmark name in tables
SOURCES = {"charades_sta": "Charades-STA", "tvgbench": "TVGBench"}


def row_iou(row: Mapping) -> float:
    """The row's temporal IoU: its ``tiou``, else from its completion (0 when nothing can be read)."""
    if row.get("tiou") is not None:
        return float(row["tiou"])
    segment = parse_completion(row.get("prediction") or "").answer_segment
    return temporal_iou(segment, row.get("segment")) if segment is not None else 0.0


def grounding_report(rows: Sequence[Mapping], source: str) -> dict:
    """{"num_queries", "mIoU", "R1@0.3", "R1@0.5", "R1@0.7"} over the rows whose ``source`` is ``source``."""
    ious = [row_iou(row) for row in rows if row.get("source") == source]
    return {"num_queries": len(ious), **charades_summary(ious)}
