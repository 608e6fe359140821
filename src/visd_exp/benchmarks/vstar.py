"""V-STaR: score the five queries of each published record and export the official results file.

Every rule below is V-STaR-Bench/V-STaR ``eval.py`` (``evaluate_json``, ``calculate_temporal_iou``,
``calculate_spatial_metrics``, ``calculate_bbox_iou``, ``print_stats``) and ``inference_demo.py`` (the
results file's ``answer_*`` fields), re-implemented here:

- Records: published record k (0-based position in the file) with ``vid`` is read into five rows,
  ``vstar = {vid, index: k, query, chain, prompts}``: what (chain 0, free text), when chain 1 and 2 (an
  interval), where chain 1 and 2 (boxes). Rows are grouped by ``vstar.index``; a missing row scores 0.
- Answer: one rating per record from the answer judge (answer_judge.py: the reply read with int(); a reply
  that is no integer, or -1, is unparseable = 0 in the mean rating and not correct); correct iff rating >= 2.
- Empty what-answers (``if 'answer_vqa' in item and item['answer_vqa']: ... else: continue``): the record
  is SKIPPED, not sent to the judge: it leaves the mean ratings and every temporal and spatial mean, yet
  stays in the accuracy's denominator (print_stats divides correct_num by len(data)); a record with no what
  row is skipped the same way. Counted in ``answer.skipped_empty``.
- Temporal, per chain: IoU of the predicted [s, e] with the ground-truth ``timestamps``; intersection
  max(0, min(e) - max(s)), union max(e) - min(s) (= metrics.temporal_iou on well-formed intervals; a
  missing, malformed or reversed interval scores 0). Reported: mean IoU and R1@{0.3, 0.5, 0.7}.
- Spatial, per chain: the prediction is {"<whole second>": box or [boxes]} in original video pixels
  (vstar_answers.py: the project's claims, or the official JSON form as written). For each ground-truth box
  (one per ``bboxes`` entry, keyed by str(its timestamp)): the best IoU over the boxes predicted at that
  key, 0 when the key is missing (no object-name matching); per record mIoU = mean over its boxes, AP@t =
  share of its boxes with IoU >= t, t in {0.1, 0.3, 0.5, 0.7, 0.9}; an empty prediction gives 0 for all;
  then means over records.
- AM / LGM per chain and mAM / mLGM: metrics.vstar_summary (the same formulas as print_stats; the only
  difference is that each LGM term is clamped at 1 - 1e-6 where eval.py would fail with log(0)).

Deviations from eval.py, all for malformed input only: a box with x2 <= x1 or y2 <= y1 scores 0
(metrics.box_iou); ground-truth timestamps that are whole numbers written as floats are keyed "3", not
"3.0", and the export writes them as integers so eval.py keys them the same way; a mean over no record
(every record skipped) is 0 where numpy gives nan.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from visd_exp.benchmarks.answer_judge import CORRECT_AT, AnswerItem
from visd_exp.benchmarks.vstar_answers import answer_text, predicted_boxes, predicted_segment
from visd_exp.metrics import box_iou, recall_at_iou, temporal_iou, vstar_summary

__all__ = ["answer_text", "predicted_boxes", "predicted_segment", "score_vstar", "export_results"]

SOURCE = "vstar"
QUERIES = (("what", 0), ("when", 1), ("when", 2), ("where", 1), ("where", 2))
R1_THRESHOLDS = (0.3, 0.5, 0.7)
AP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
ANSWER_FIELDS = ("answer_vqa", "answer_temporal", "answer_temporal_2", "answer_spatial", "answer_spatial_2")
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _number(value):
    """An integer when the value is a whole number (3.0 -> 3), else the float."""
    value = float(value)
    return int(value) if value.is_integer() else value


def second_key(timestamp) -> str:
    """Key of a ground-truth box: str(its timestamp) as eval.py writes it (whole numbers without ".0")."""
    return str(_number(timestamp))


# ----------------------------------------------------------------------------- ground truth from rows


def groundtruth_bboxes(row: Mapping) -> list[dict]:
    """The record's boxes in eval.py's form, from key_frames and key_items (image_size pixels)."""
    out = []
    items = row.get("key_items") or {}
    for frame in row.get("key_frames") or []:
        for boxes in (items.get(str(frame["idx"])) or {}).values():
            for box in boxes:
                out.append(
                    {
                        "timestamp": _number(frame["time"]),
                        "frame_index": frame["idx"],
                        **dict(zip(BOX_KEYS, box)),
                    }
                )
    return out


def group_rows(rows: Sequence[Mapping]) -> dict[int, dict[tuple[str, int], Mapping]]:
    """{record index: {(query, chain): row}} over the V-STaR rows (the first row wins on a duplicate)."""
    groups: dict[int, dict[tuple[str, int], Mapping]] = defaultdict(dict)
    for row in rows:
        meta = row.get("vstar")
        if row.get("source") == SOURCE and isinstance(meta, Mapping):
            groups[int(meta["index"])].setdefault((str(meta["query"]), int(meta["chain"])), row)
    return dict(sorted(groups.items()))


def record_items(groups: Mapping[int, Mapping[tuple[str, int], Mapping]]) -> list[dict]:
    """One item per published record, in eval.py's shape: ground truth plus the five answer_* fields."""
    items = []
    for index, rows in groups.items():
        what, when1, when2 = rows.get(("what", 0)), rows.get(("when", 1)), rows.get(("when", 2))
        where1, where2 = rows.get(("where", 1)), rows.get(("where", 2))
        first = next(iter(rows.values()))
        when_gt = when1 or when2
        where_gt = where1 or where2
        items.append(
            {
                "index": index,
                "vid": first["vstar"]["vid"],
                "question": (what or {}).get("question", ""),
                "answer": (what or {}).get("answer", ""),
                "timestamps": list(when_gt["segment"]) if when_gt and when_gt.get("segment") else None,
                "bboxes": groundtruth_bboxes(where_gt) if where_gt else [],
                "answer_vqa": answer_text(what) if what else None,
                "answer_temporal": predicted_segment(when1) if when1 else None,
                "answer_temporal_2": predicted_segment(when2) if when2 else None,
                "answer_spatial": predicted_boxes(where1) if where1 else None,
                "answer_spatial_2": predicted_boxes(where2) if where2 else None,
                "missing": [f"{q}{c or ''}" for q, c in QUERIES if (q, c) not in rows],
            }
        )
    return items


# ----------------------------------------------------------------------------- eval.py's rules


def segment_iou(prediction, groundtruth) -> float:
    if not prediction or not groundtruth or not isinstance(prediction, (list, tuple)) or len(prediction) != 2:
        return 0.0
    if not all(isinstance(x, (int, float)) for x in prediction):
        return 0.0
    return temporal_iou(prediction, groundtruth)


def best_box_iou(gt_box: Sequence[float], predicted) -> float:
    """IoU with a predicted box, or the best over a list of boxes (calculate_bbox_iou: a value that is not a
    box scores 0; a box of four values one of which is not a number makes the whole answer 0, as the
    script's try/except around max() does)."""
    if not predicted or not isinstance(predicted, (list, tuple)):
        return 0.0
    one = isinstance(predicted[0], (int, float)) and len(predicted) == 4
    best = 0.0
    for box in [predicted] if one else predicted:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            return 0.0
        best = max(best, box_iou(box, gt_box))
    return best


def spatial_scores(bboxes: Sequence[Mapping], predicted: Mapping | None) -> tuple[float, dict[float, float]]:
    """(mIoU, {t: AP@t}) of one record (calculate_spatial_metrics; a list where a dict belongs scores 0)."""
    if not predicted:
        return 0.0, {t: 0.0 for t in AP_THRESHOLDS}
    keyed = predicted if isinstance(predicted, Mapping) else {}
    ious = [best_box_iou([gt[k] for k in BOX_KEYS], keyed.get(second_key(gt["timestamp"]))) for gt in bboxes]
    if not ious:
        return 0.0, {t: 0.0 for t in AP_THRESHOLDS}
    return sum(ious) / len(ious), {t: sum(iou >= t for iou in ious) / len(ious) for t in AP_THRESHOLDS}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def skipped(item: Mapping) -> bool:
    """eval.py's rule: a record whose what-answer is missing or empty is not evaluated at all."""
    return not item.get("answer_vqa")


def score_items(items: Sequence[Mapping], ratings: Sequence[int | None]) -> dict:
    """The V-STaR report of eval.py-shaped items and their ratings (None = unparseable; the rating of a
    skipped item is ignored)."""
    n = len(items)
    kept = [(it, r) for it, r in zip(items, ratings, strict=True) if not skipped(it)]
    all_ratings = [r if r is not None else 0 for _, r in kept]
    valid = [r for _, r in kept if r is not None]
    correct = sum(r >= CORRECT_AT for r in valid)
    accuracy = correct / n if n else 0.0
    report: dict = {
        "num_records": n,
        "answer": {
            "accuracy": accuracy,
            "correct": correct,
            "mean_rating": _mean(all_ratings),
            "mean_valid_rating": _mean(valid),
            "unparseable": len(kept) - len(valid),
            "skipped_empty": n - len(kept),
        },
    }
    chains = {}
    for chain, suffix in ((1, ""), (2, "_2")):
        tious = [segment_iou(it.get("answer_temporal" + suffix), it.get("timestamps")) for it, _ in kept]
        spatial = [
            spatial_scores(it.get("bboxes") or [], it.get("answer_spatial" + suffix)) for it, _ in kept
        ]
        temporal = {
            "mIoU": _mean(tious),
            **{f"R1@{t:g}": v for t, v in recall_at_iou(tious, R1_THRESHOLDS).items()},
        }
        space = {"mIoU": _mean([m for m, _ in spatial])}
        space.update({f"AP@{t:g}": _mean([aps[t] for _, aps in spatial]) for t in AP_THRESHOLDS})
        report[f"chain{chain}"] = {"temporal": temporal, "spatial": space}
        chains[chain] = {"acc": accuracy, "m_tiou": temporal["mIoU"], "m_viou": space["mIoU"]}
    summary = vstar_summary(chains[1], chains[2])
    for chain in (1, 2):
        report[f"chain{chain}"].update(AM=summary[f"am_chain{chain}"], LGM=summary[f"lgm_chain{chain}"])
    report.update(mAM=summary["mAM"], mLGM=summary["mLGM"])
    return report


def rate_items(items: Sequence[Mapping], judge) -> list[int | None]:
    """Ratings of the items' answers; skipped items (empty answers) are not sent (None, ignored)."""
    ask = [i for i, it in enumerate(items) if not skipped(it)]
    asked = judge.rate(
        [AnswerItem(items[i]["question"], items[i]["answer"], items[i]["answer_vqa"]) for i in ask]
    )
    ratings: list[int | None] = [None] * len(items)
    for i, rating in zip(ask, asked):
        ratings[i] = rating
    return ratings


def score_vstar(rows: Sequence[Mapping], judge) -> tuple[dict, list[dict]]:
    """(report, items) of the V-STaR rows; items carry the answers for ``export_results``."""
    items = record_items(group_rows(rows))
    ratings = rate_items(items, judge)
    report = score_items(items, ratings)
    report["grader"] = judge.description
    report["answer"]["judge_failed"] = int(getattr(judge, "stats", {}).get("failed", 0))
    missing: dict[str, int] = defaultdict(int)
    for item in items:
        for name in item["missing"]:
            missing[name] += 1
    report["missing_rows"] = dict(missing)
    return report, items


# ----------------------------------------------------------------------------- the results file


def read_published(path: str | Path) -> list[dict]:
    """The published V-STaR records in file order: a JSON array, or the legacy JSON Lines form."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        data = json.loads(text)
    else:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all(isinstance(d, dict) for d in data):
        raise ValueError(f"{path}: not a V-STaR file (expected JSON objects)")
    return data


def current_bboxes(bboxes: Sequence[Mapping]) -> list[dict]:
    """bboxes in the current form [{"timestamp", "frame_index", "xmin", "ymin", "xmax", "ymax"}], from either
    that form or the legacy [{"<timestamp>_<frame index>": {"xmin", ...}}] (data/README.md)."""
    out = []
    for entry in bboxes:
        if "timestamp" in entry:
            out.append({**entry, "timestamp": _number(entry["timestamp"])})
            continue
        for key, box in entry.items():
            timestamp, _, frame = str(key).rpartition("_")
            out.append(
                {
                    "timestamp": _number(timestamp),
                    "frame_index": _number(frame),
                    **{k: box[k] for k in BOX_KEYS},
                }
            )
    return out


def export_results(original: str | Path, items: Sequence[Mapping], out_path: str | Path) -> Path:
    """Write the published array (re-read in order: record k is index k) with bboxes in the current form and
    the answer_* fields added (null for records that were not evaluated), as eval.py reads it."""
    data = read_published(original)
    by_index = {int(it["index"]): it for it in items}
    for index, item in by_index.items():
        if index >= len(data) or str(data[index].get("vid")) != str(item["vid"]):
            found = data[index].get("vid") if index < len(data) else "nothing"
            raise ValueError(
                f"{original}: record {index} is {found!r}, the predictions say {item['vid']!r}: "
                f"not the file these records were read from"
            )
    out = []
    for index, record in enumerate(data):
        record = {**record, "bboxes": current_bboxes(record.get("bboxes") or [])}
        item = by_index.get(index, {})
        record.update({field: item.get(field) for field in ANSWER_FIELDS})
        out.append(record)
    out_path = Path(out_path)
    out_path.write_text(json.dumps(out, indent=2))
    return out_path
