"""Read the supervision a verifier needs out of a data record (docs/DATA.md), by its task.

The task decides which fields matter (rewards/tasks.py). Intervals come from `segment`, or from the
answer as Open-o3-Video writes it ("[6.0, 14.0]"; "C\n[11.5, 19.0]" for the temporal multiple choice;
"From <t>6.0</t>s to <t>14.0</t>s"). Key frames keep the file's order (the time gate breaks ties in that
order). Ground-truth boxes are rescaled from `image_size` pixels to `frame_size` pixels (the frame the
model saw); without `frame_size` they stay in `image_size` pixels. A field a component needs but the
record lacks masks that component (returns None), so K(x) never silently scores a missing annotation.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from visd_exp.rewards.reading import as_box, box_tag_groups, strict_interval
from visd_exp.rewards.tasks import TaskSpec, task_spec

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class KeyFrame:
    time: float
    objects: tuple[tuple[str, tuple[Box, ...]], ...]  # (object name, its GT boxes in frame_size pixels)


@dataclass(frozen=True)
class GroundTruth:
    spec: TaskSpec
    answer: str | None
    letter: str | None  # the option letter (choice, choice_keyed)
    options: tuple[str, ...]
    segment: tuple[float, float] | None  # the evidence interval, start <= end
    key_times: tuple[float, ...]  # every key-frame time, file order (Eq. 12)
    key_frames: tuple[KeyFrame, ...]  # every key frame with a time, file order, with its boxes (Eq. 13)
    ref_box: Box | None  # visual QA: the reference answer's box in frame pixels
    duration: float | None

    @property
    def task(self) -> str:
        return self.spec.name


def _finite(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _pair(x: Any) -> tuple[float, float] | None:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__") or len(x) != 2:
        return None
    a, b = _finite(x[0]), _finite(x[1])
    return None if a is None or b is None else (a, b)


def _int(x: Any) -> int | None:
    try:
        return int(str(x).strip())
    except (TypeError, ValueError):
        return None


def _scale(sample: Mapping) -> tuple[float, float]:
    image, frame = _pair(sample.get("image_size")), _pair(sample.get("frame_size"))
    if image is None or frame is None or image[0] <= 0 or image[1] <= 0:
        return 1.0, 1.0
    return frame[0] / image[0], frame[1] / image[1]


def _scaled(box: Box | None, sx: float, sy: float) -> Box | None:
    if box is None or not all(math.isfinite(v) for v in box):
        return None
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _interval_text(text: str) -> tuple[float, float] | None:
    """ "[6.0, 14.0]" (a Python/JSON literal) or "From <t>6.0</t>s to <t>14.0</t>s"."""
    text = text.strip()
    if text.startswith("["):
        try:
            return _pair(ast.literal_eval(text))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return strict_interval(text)


def _segment(sample: Mapping, spec: TaskSpec, answer: str | None) -> tuple[float, float] | None:
    seg = _pair(sample.get("segment"))
    if seg is None and answer is not None and (spec.ans_tmp or spec.thk_tmp == "segment"):
        lines = answer.split("\n")
        text = lines[1] if spec.answer == "choice_keyed" and len(lines) > 1 else answer
        seg = _interval_text(text)
    return None if seg is None or seg[1] < seg[0] else seg


def _letter(spec: TaskSpec, answer: str | None) -> str | None:
    if answer is None:
        return None
    if spec.answer == "choice":
        return answer.strip() or None
    if spec.answer == "choice_keyed":
        return answer.split("\n")[0].strip() or None
    return None


def _objects(objects: Any, sx: float, sy: float) -> tuple[tuple[str, tuple[Box, ...]], ...]:
    if not isinstance(objects, Mapping):
        return ()
    out = []
    for name, boxes in objects.items():
        if not isinstance(boxes, (list, tuple)):
            continue
        if len(boxes) == 4 and all(_finite(c) is not None for c in boxes):
            boxes = [boxes]  # a single box written without the outer list
        valid = tuple(
            b for b in (_scaled(as_box(list(b)), sx, sy) for b in boxes if isinstance(b, (list, tuple))) if b
        )
        if valid:
            out.append((str(name), valid))
    return tuple(out)


def _key_frames(sample: Mapping) -> tuple[KeyFrame, ...]:
    frames = sample.get("key_frames")
    if not isinstance(frames, (list, tuple)):
        return ()
    items = sample.get("key_items")
    by_idx = {}
    if isinstance(items, Mapping):
        by_idx = {_int(k): v for k, v in items.items() if _int(k) is not None}
    sx, sy = _scale(sample)
    out = []
    for kf in frames:
        if not isinstance(kf, Mapping):
            continue
        t = _finite(kf.get("time"))
        if t is None:
            continue
        out.append(KeyFrame(t, _objects(by_idx.get(_int(kf.get("idx"))), sx, sy)))
    return tuple(out)


def _ref_box(sample: Mapping, answer: str | None) -> Box | None:
    """Visual QA: the first <box>[..]</box> in the reference answer, in image_size pixels, rescaled."""
    if answer is None:
        return None
    groups = box_tag_groups(answer)
    if not groups:
        return None
    try:
        box = as_box(json.loads(groups[0]))
    except (ValueError, RecursionError):
        return None
    return _scaled(box, *_scale(sample))


def ground_truth(sample: Mapping) -> GroundTruth:
    """Everything the reward components need from one record. An unknown task raises UnknownTaskError."""
    spec = task_spec(sample.get("task"))
    answer = sample.get("answer")
    answer = None if answer is None else str(answer)
    options = sample.get("options")
    key_frames = _key_frames(sample) if spec.uses_key_frames else ()
    duration = _finite(sample.get("duration"))
    return GroundTruth(
        spec=spec,
        answer=answer,
        letter=_letter(spec, answer),
        options=tuple(str(o) for o in options) if isinstance(options, (list, tuple)) else (),
        segment=_segment(sample, spec, answer),
        key_times=tuple(kf.time for kf in key_frames),
        key_frames=key_frames,
        ref_box=_ref_box(sample, answer) if spec.ans_spa == "box" or spec.thk_spa == "box" else None,
        duration=duration if duration is not None and duration > 0 else None,
    )
