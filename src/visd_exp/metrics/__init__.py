"""Grounding metrics: interval/box IoU, V-STAR AM/LGM, Charades-STA recall and mIoU."""

from visd_exp.metrics.charades import charades_summary, mean_iou, recall_at_iou
from visd_exp.metrics.iou import box_iou, temporal_iou
from visd_exp.metrics.vstar import LGM_EPS, am, lgm, vstar_summary

__all__ = [
    "LGM_EPS",
    "am",
    "box_iou",
    "charades_summary",
    "lgm",
    "mean_iou",
    "recall_at_iou",
    "temporal_iou",
    "vstar_summary",
]
