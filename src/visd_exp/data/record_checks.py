"""What can be wrong with one record of the project schema (docs/DATA.md), field by field.

Each checker returns (field, message) pairs; data.validate turns them into `file:line: field: message`
lines. `clip_to_duration` is the one repair: real annotations often end a little past the probed
video (Charades-STA, V-STaR), so an end within CLIP_TOLERANCE of the duration is clipped and counted,
never rejected; further past it is an error (the wrong video, or the wrong unit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visd_exp.data.formats.base import BOX_IN_TEXT
from visd_exp.data.media import is_image_record, media_field
from visd_exp.data.probing import ProbeResult
from visd_exp.data.task_checks import CHAIN_TASKS, check_task_supervision
from visd_exp.rewards.tasks import TASK_NAMES

# The reward's task table (project names, Open-o3-Video's and Video-R1's spellings) and V-STaR-style
# chained questions (what-when-where, what-where-when): the synthetic test split.
TASKS = (*TASK_NAMES, *CHAIN_TASKS)
REQUIRED_STRINGS = ("id", "task", "question", "answer")  # and video_path, or image_path (media.py)
OPTIONAL_STRINGS = ("source", "reasoning_process")
# An option's own letter: "A. left", "(B) right", "C: up", "D) down".
OPTION_LETTER = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]")
# How far past the probed duration an interval end or key-frame time may lie and still be clipped:
# the larger of 5 s and 10% of the video (annotation rounding and container/stream length differences).
CLIP_TOLERANCE_S, CLIP_TOLERANCE_FRAC = 5.0, 0.10


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python; `true` is never a time or a coordinate.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _resolve(video_path: str, base_dir: Path) -> str:
    video = Path(video_path)
    return str(video if video.is_absolute() else base_dir / video)


# Each checker returns a list of (field, message) for one record.
Issues = list[tuple[str, str]]


def check_strings(record: dict) -> Issues:
    """The required fields are non-empty strings; the optional text fields are strings when present."""
    issues = []
    for name in REQUIRED_STRINGS:
        value = record.get(name)
        if name not in record:
            issues.append((name, "missing"))
        elif not isinstance(value, str):
            issues.append((name, f"expected a non-empty string, got {_type_name(value)}"))
        elif not value.strip():
            issues.append((name, "empty string"))
    issues += check_media_path(record)
    for name in OPTIONAL_STRINGS:
        if record.get(name) is not None and not isinstance(record[name], str):
            issues.append((name, f"expected a string, got {_type_name(record[name])}"))
    task = record.get("task")
    if isinstance(task, str) and task.strip() and task not in TASKS:
        issues.append(("task", f"unknown task {task!r} (valid: {', '.join(repr(t) for t in TASKS)})"))
    return issues


def check_media_path(record: dict) -> Issues:
    """Exactly one visual input: `video_path`, or `image_path` for an image record (media.py)."""
    image = record.get("image_path")
    if image is None:
        value = record.get("video_path")
        if "video_path" not in record:
            return [("video_path", "missing (an image record has image_path instead)")]
        if not isinstance(value, str):
            return [("video_path", f"expected a non-empty string, got {_type_name(value)}")]
        return [] if value.strip() else [("video_path", "empty string")]
    if record.get("video_path") is not None:
        return [("image_path", "a record has video_path or image_path, not both")]
    if not isinstance(image, str):
        return [("image_path", f"expected a non-empty string, got {_type_name(image)}")]
    return [] if image.strip() else [("image_path", "empty string")]


def option_letters(options: Sequence[str]) -> list[str]:
    """Each option's own letter ("A. left" -> "A"), or A, B, C, ... by position when it has none."""
    letters = []
    for k, option in enumerate(options):
        match = OPTION_LETTER.match(option)
        letters.append(match.group(1).upper() if match else chr(ord("A") + k))
    return letters


def check_options(record: dict) -> Issues:
    """options: a list of strings or null; multiple choice needs >= 2 and an answer among the letters."""
    options = record.get("options")
    is_mc = record.get("task") == "multiple_choice"
    if options is None:
        return [("options", "multiple choice needs a list of at least 2 options")] if is_mc else []
    if not isinstance(options, list):
        return [("options", f"expected a list of strings or null, got {_type_name(options)}")]
    bad = [k for k, option in enumerate(options) if not isinstance(option, str)]
    if bad:
        return [(f"options[{k}]", f"expected a string, got {_type_name(options[k])}") for k in bad]
    if not is_mc:
        return []
    if len(options) < 2:
        return [("options", f"multiple choice needs at least 2 options, got {len(options)}")]
    answer = record.get("answer")
    letters = option_letters(options)
    if isinstance(answer, str) and answer.strip() and answer.strip().rstrip(".").upper() not in letters:
        return [("answer", f"{answer!r} is not one of the option letters {', '.join(letters)}")]
    return []


def check_duration(record: dict) -> Issues:
    duration = record.get("duration")
    if duration is not None and not (_is_number(duration) and duration > 0):
        return [("duration", f"expected a positive number, got {duration!r}")]
    return []


def check_image_size(record: dict) -> Issues:
    size = record.get("image_size")
    if size is None:
        return []
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return [("image_size", f"expected [width, height] of positive ints, got {size!r}")]
    return []


def check_segment(record: dict, duration: float | None) -> Issues:
    """segment: null or [start, end] with 0 <= start < end (<= duration when known)."""
    segment = record.get("segment")
    if segment is None:
        return []
    if not (isinstance(segment, list) and len(segment) == 2 and all(_is_number(v) for v in segment)):
        return [("segment", f"expected [start, end] in seconds or null, got {segment!r}")]
    start, end = segment
    if start < 0:
        return [("segment", f"start {start} is negative")]
    if start >= end:
        return [("segment", f"start {start} is not before end {end}")]
    if duration is not None and end > duration:
        return [
            ("segment", f"end {end} is past the video's duration {duration:g} (more than clipping allows)")
        ]
    if duration is not None and start >= duration:
        return [("segment", f"start {start} is not inside the video ({duration:g} s)")]
    return []


def check_key_frames(record: dict, duration: float | None) -> Issues:
    """key_frames: a list of {idx: int >= 0, time: number in [0, duration]}."""
    frames = record.get("key_frames")
    if frames is None:
        return []
    if not isinstance(frames, list):
        return [("key_frames", f"expected a list of {{idx, time}}, got {_type_name(frames)}")]
    issues = []
    for k, frame in enumerate(frames):
        where = f"key_frames[{k}]"
        if not isinstance(frame, dict):
            issues.append((where, f"expected {{idx, time}}, got {_type_name(frame)}"))
            continue
        idx, time = frame.get("idx"), frame.get("time")
        if not (_is_int(idx) and idx >= 0):
            issues.append((f"{where}.idx", f"expected an int >= 0, got {idx!r}"))
        if not _is_number(time):
            issues.append((f"{where}.time", f"expected a number of seconds, got {time!r}"))
        elif time < 0 or (duration is not None and time > duration):  # beyond clipping
            bound = f"[0, {duration:g}]" if duration is not None else ">= 0"
            issues.append((f"{where}.time", f"{time} is outside the video ({bound})"))
    return issues


def _key_frame_ids(record: dict) -> set[str] | None:
    """str(idx) of the listed key frames; None when key_frames is unusable (then keys are not checked)."""
    frames = record.get("key_frames")
    if frames is None:
        return set()
    if not isinstance(frames, list):
        return None
    return {str(f["idx"]) for f in frames if isinstance(f, dict) and _is_int(f.get("idx"))}


def check_box(box: Any, size: tuple[int, int] | None) -> str | None:
    """Why a box [x1, y1, x2, y2] is bad, or None."""
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        return f"expected [x1, y1, x2, y2] numbers, got {box!r}"
    x1, y1, x2, y2 = box
    if x1 >= x2 or y1 >= y2:
        return f"{box} needs x1 < x2 and y1 < y2"
    if size is not None and (x1 < 0 or y1 < 0 or x2 > size[0] or y2 > size[1]):
        return f"{box} is outside the {size[0]}x{size[1]} frame"
    return None


def check_key_items(record: dict) -> Issues:
    """key_items: {str(idx) of a key frame: {name: [[x1, y1, x2, y2], ...]}}, boxes inside image_size."""
    items = record.get("key_items")
    if items is None:
        return []
    if not isinstance(items, dict):
        return [("key_items", f"expected a mapping from key frame idx to objects, got {_type_name(items)}")]
    issues = []
    size = None  # an invalid image_size is reported on its own; boxes are then checked for order only
    if record.get("image_size") is None:
        if items:
            issues.append(("image_size", "missing; needed to check the boxes of key_items"))
    elif not check_image_size(record):
        size = tuple(record["image_size"])
    frame_ids = _key_frame_ids(record)
    for key, objects in items.items():
        where = f"key_items[{key}]"
        if frame_ids is not None and key not in frame_ids:
            issues.append((where, f"{key!r} is not the idx of a listed key frame"))
        if not isinstance(objects, dict):
            issues.append((where, f"expected {{name: [boxes]}}, got {_type_name(objects)}"))
            continue
        for name, boxes in objects.items():
            if not isinstance(boxes, list):
                issues.append((f"{where}[{name}]", f"expected a list of boxes, got {_type_name(boxes)}"))
                continue
            for b, box in enumerate(boxes):
                message = check_box(box, size)
                if message:
                    issues.append((f"{where}[{name}][{b}]", message))
    return issues


def clip_tolerance(duration: float) -> float:
    return max(CLIP_TOLERANCE_S, CLIP_TOLERANCE_FRAC * duration)


def clip_to_duration(record: dict, duration: float | None) -> int:
    """Clip, in place, an interval end and key-frame times lying a little past `duration` (within
    clip_tolerance); returns how many values were clipped. Values further out are left for the checks."""
    if duration is None or not isinstance(record, dict):
        return 0
    limit = duration + clip_tolerance(duration)
    clipped = 0
    segment = record.get("segment")
    if isinstance(segment, list) and len(segment) == 2 and all(_is_number(v) for v in segment):
        start, end = segment
        if start < duration < end <= limit:
            record["segment"] = [start, float(duration)]
            clipped += 1
    for frame in record.get("key_frames") or []:
        if isinstance(frame, dict) and _is_number(frame.get("time")) and duration < frame["time"] <= limit:
            frame["time"] = float(duration)
            clipped += 1
    return clipped


def _all_within_unit(boxes: list) -> bool:
    numbers = [v for box in boxes for v in box]
    return bool(numbers) and all(0.0 <= v <= 1.0 for v in numbers)


def _text_boxes(text: Any) -> list[list[float]]:
    boxes = []
    for match in BOX_IN_TEXT.finditer(text if isinstance(text, str) else ""):
        try:
            values = [float(v) for v in match.group(1).split(",")]
        except ValueError:
            continue
        if len(values) == 4:
            boxes.append(values)
    return boxes


NORMALISED = (
    "every box lies within [0, 1]: normalised coordinates in a pixel field (boxes here are pixels of "
    "image_size; read published files with their reader, e.g. --format stgr, which rescales them)"
)


def check_pixel_boxes(record: dict) -> Issues:
    """A pixel-box field whose boxes ALL lie within [0, 1] holds normalised boxes taken as pixels: they
    pass every bounds check and silently score ~0 spatial reward. key_items, and the boxes written in the
    answer and in reasoning_process."""
    issues = []
    items = record.get("key_items")
    if isinstance(items, dict):
        boxes = [
            box
            for objects in items.values()
            if isinstance(objects, dict)
            for group in objects.values()
            if isinstance(group, list)
            for box in group
            if isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
        ]
        if _all_within_unit(boxes):
            issues.append(("key_items", NORMALISED))
    for name in ("answer", "reasoning_process"):
        if _all_within_unit(_text_boxes(record.get(name))):
            issues.append((name, NORMALISED.replace("pixel field", "pixel field (its <box> tags)")))
    return issues


def check_video(record: dict, base_dir: Path, cache: dict[str, ProbeResult] | None) -> Issues:
    """The probed video or image (from `cache`) exists and decodes; nothing to say when not probing."""
    field = media_field(record)
    path = record.get(field)
    if cache is None or not isinstance(path, str) or not path.strip():
        return []
    result = cache.get(_resolve(path, base_dir))
    return [(field, result.error)] if result is not None and result.error else []


def known_duration(record: dict, base_dir: Path, cache: dict[str, ProbeResult] | None) -> float | None:
    """The record's own duration when valid, else the probed video's, else None (an image has none)."""
    if not check_duration(record) and record.get("duration") is not None:
        return float(record["duration"])
    if is_image_record(record):
        return None
    video_path = record.get("video_path")
    if cache is not None and isinstance(video_path, str) and video_path.strip():
        result = cache.get(_resolve(video_path, base_dir))
        if result is not None and result.info is not None:
            return result.info.duration
    return None


def check_record(record: Any, base_dir: Path, cache: dict[str, ProbeResult] | None = None) -> Issues:
    """Everything wrong with one parsed JSON value (all fields, not just the first problem)."""
    if not isinstance(record, dict):
        return [("<record>", f"expected a JSON object, got {_type_name(record)}")]
    duration = known_duration(record, base_dir, cache)
    return [
        *check_strings(record),
        *check_video(record, base_dir, cache),
        *check_options(record),
        *check_duration(record),
        *check_image_size(record),
        *check_segment(record, duration),
        *check_key_frames(record, duration),
        *check_key_items(record),
        *check_pixel_boxes(record),
        *(check_task_supervision(record) if not check_strings(record) else []),
    ]
