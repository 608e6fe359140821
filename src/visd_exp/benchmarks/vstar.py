"""V-STaR: score the five queries of each published record and export the official results file.

Every rule below is V-STaR-Bench/V-STaR ``eval.py`` (``evaluate_json``, ``calculate_temporal_iou``,
``calculate_spatial_metrics``, ``calculate_bbox_iou``, ``print_stats``) and ``inference_demo.py`` (the
results file's ``answer_*`` fields), re-implemented here:

- Records: published record k (0-based position in the file) with ``vid`` is read into five rows,
  ``vstar = {vid, index: k, query, chain}``: what (chain 0, free text), when chain 1 and 2 (an interval),
  where chain 1 and 2 (grounded claims). Rows are grouped by ``vstar.index``; a missing row scores 0.
- Answer: one 0-3 rating per record from the answer judge (answer_judge.py); unparseable = 0 in the mean
  rating and not correct; correct iff rating >= 2; accuracy = correct / records, shared by both chains.
  An empty answer is rated 0 without asking (eval.py skips such a record).
- Temporal, per chain: IoU of the predicted [s, e] with the ground-truth ``timestamps``; intersection
  max(0, min(e) - max(s)), union max(e) - min(s) (= metrics.temporal_iou on well-formed intervals; a
  missing, malformed or reversed interval scores 0). Reported: mean IoU and R1@{0.3, 0.5, 0.7}.
- Spatial, per chain: the prediction is {"<whole second>": box or [boxes]} in original video pixels. For
  each ground-truth box (one per ``bboxes`` entry, keyed by str(its timestamp)): the best IoU over the boxes
  predicted at that key, 0 when the key is missing (no object-name matching); per record mIoU = mean over
  its boxes, AP@t = share of its boxes with IoU >= t, t in {0.1, 0.3, 0.5, 0.7, 0.9}; an empty prediction
  gives 0 for all; then means over records.
- AM / LGM per chain and mAM / mLGM: metrics.vstar_summary (the same formulas as print_stats; the only
  difference is that each LGM term is clamped at 1 - 1e-6 where eval.py would fail with log(0)).

Predictions come from the project's parser (rewards/parsing.py): the answer text; the answer's interval
(else its two numbers, like inference_demo.extract_timestamps); the answer's claims, each box rescaled from ``frame_size`` (the frame the model saw) to ``image_size``
(original pixels), keyed by the claim's time rounded half up to a whole second. Deviations from eval.py,
all for malformed input only: a box with x2 <= x1 or y2 <= y1 scores 0 (metrics.box_iou); a judge reply
outside 0-3 is unparseable; ground-truth timestamps that are whole numbers written as floats are keyed
"3", not "3.0", and the export writes them as integers so eval.py keys them the same way.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from visd_exp.benchmarks.answer_judge import CORRECT_AT, AnswerItem
from visd_exp.metrics import box_iou, recall_at_iou, temporal_iou, vstar_summary
from visd_exp.rewards.parsing import parse_completion

SOURCE = "vstar"
QUERIES = (("what", 0), ("when", 1), ("when", 2), ("where", 1), ("where", 2))
R1_THRESHOLDS = (0.3, 0.5, 0.7)
AP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
ANSWER_FIELDS = ("answer_vqa", "answer_temporal", "answer_temporal_2", "answer_spatial", "answer_spatial_2")
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
_TWO_NUMBERS = re.compile(r"\b\d+(?:\.\d+)?\b")  # inference_demo.extract_timestamps


def _number(value):
    """An integer when the value is a whole number (3.0 -> 3), else the float."""
    value = float(value)
    return int(value) if value.is_integer() else value


def second_key(timestamp) -> str:
    """Key of a ground-truth box: str(its timestamp) as eval.py writes it (whole numbers without ".0")."""
    return str(_number(timestamp))


def claim_key(time: float) -> str:
    """Key of a predicted claim: its time rounded half up to the nearest whole second."""
    return str(math.floor(float(time) + 0.5))


# ----------------------------------------------------------------------------- predictions from rows


def answer_text(row: Mapping) -> str:
    """The predicted answer text: the parsed <answer> block, else the completion without its tags."""
    answer = row.get("parsed_answer")
    if answer is None:
        answer = parse_completion(row.get("prediction") or "").answer
    if answer is None:
        text = (row.get("prediction") or "").split("</think>")[-1]
        answer = text.replace("<answer>", " ").replace("</answer>", " ")
    return " ".join(answer.split())


def predicted_segment(row: Mapping) -> list[float] | None:
    """The answer's <t> interval; else, as inference_demo.extract_timestamps reads a reply, the answer's
    two numbers when it holds exactly two ("[2.0, 5.0]", "2 - 5 seconds")."""
    parsed = parse_completion(row.get("prediction") or "")
    if parsed.answer_segment is not None:
        return [float(parsed.answer_segment[0]), float(parsed.answer_segment[1])]
    numbers = _TWO_NUMBERS.findall(answer_text(row))
    return [float(numbers[0]), float(numbers[1])] if len(numbers) == 2 else None


def predicted_boxes(row: Mapping) -> dict[str, list]:
    """{"<sec>": [x1, y1, x2, y2] or [[...], ...]} in image_size pixels from the answer's claims (unscaled
    when frame_size or image_size is unknown)."""
    image, frame = row.get("image_size"), row.get("frame_size")
    known = image and frame and all(v > 0 for v in (*image, *frame))
    sx, sy = (image[0] / frame[0], image[1] / frame[1]) if known else (1.0, 1.0)
    by_key: dict[str, list[list[float]]] = {}
    for claim in parse_completion(row.get("prediction") or "").answer_claims:
        if claim.time is None:
            continue  # a box with no time has no key to be scored under
        for x1, y1, x2, y2 in claim.boxes:
            box = [round(x1 * sx, 2), round(y1 * sy, 2), round(x2 * sx, 2), round(y2 * sy, 2)]
            by_key.setdefault(claim_key(claim.time), []).append(box)
    return {k: boxes[0] if len(boxes) == 1 else boxes for k, boxes in by_key.items()}


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
    """IoU with a predicted box, or the best over a list of boxes (calculate_bbox_iou)."""
    if not predicted or not isinstance(predicted, (list, tuple)):
        return 0.0
    candidates = [predicted] if isinstance(predicted[0], (int, float)) else predicted
    return max((box_iou(box, gt_box) for box in candidates if isinstance(box, (list, tuple))), default=0.0)


def spatial_scores(bboxes: Sequence[Mapping], predicted: Mapping | None) -> tuple[float, dict[float, float]]:
    """(mIoU, {t: AP@t}) of one record (calculate_spatial_metrics)."""
    if not predicted:
        return 0.0, {t: 0.0 for t in AP_THRESHOLDS}
    ious = [
        best_box_iou([gt[k] for k in BOX_KEYS], predicted.get(second_key(gt["timestamp"]))) for gt in bboxes
    ]
    if not ious:
        return 0.0, {t: 0.0 for t in AP_THRESHOLDS}
    return sum(ious) / len(ious), {t: sum(iou >= t for iou in ious) / len(ious) for t in AP_THRESHOLDS}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def score_items(items: Sequence[Mapping], ratings: Sequence[int | None]) -> dict:
    """The V-STaR report of eval.py-shaped items and their ratings (None = unparseable)."""
    n = len(items)
    all_ratings = [r if r is not None else 0 for r in ratings]
    valid = [r for r in ratings if r is not None]
    correct = sum(r >= CORRECT_AT for r in valid)
    accuracy = correct / n if n else 0.0
    report: dict = {
        "num_records": n,
        "answer": {
            "accuracy": accuracy,
            "correct": correct,
            "mean_rating": _mean(all_ratings),
            "mean_valid_rating": _mean(valid),
            "unparseable": len(ratings) - len(valid),
        },
    }
    chains = {}
    for chain, suffix in ((1, ""), (2, "_2")):
        tious = [segment_iou(it.get("answer_temporal" + suffix), it.get("timestamps")) for it in items]
        spatial = [spatial_scores(it.get("bboxes") or [], it.get("answer_spatial" + suffix)) for it in items]
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
    """Ratings of the items' answers: empty answers are 0 without a request, the rest go to the judge."""
    ask = [i for i, it in enumerate(items) if (it.get("answer_vqa") or "").strip()]
    asked = judge.rate(
        [AnswerItem(items[i]["question"], items[i]["answer"], items[i]["answer_vqa"]) for i in ask]
    )
    ratings: list[int | None] = [0] * len(items)
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
