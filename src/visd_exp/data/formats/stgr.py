"""Open-o3-Video's STGR-RL.json and STGR-SFT.json (one reader for both) into the project schema.

Published facts relied on (shared/notes/formats.md, "Open-o3-Video STGR"):
- one JSON array of heterogeneous records; keys a task does not use are absent, or null after a
  `datasets` load (null counts as absent here);
- `id` (int, str accepted), `source` (selects the video root, see ReadContext.resolve_source), `task`
  (six exact strings), `video_path` relative to that root, or `image_path` for image records (`gqa`,
  visual QA), read as one-image records (data/media.py) whose `image_size` is the image's [W, H];
- `answer`: temporal QA "[6.0, 14.0]"; temporal QA (MCQ) "C\\n[11.5, 19.0]"; MCQ a letter with the
  options only inside the question text; free-form text; SFT temporal answers may be tagged
  "From <t>6.0</t>s to <t>14.0</t>s";
- `key_frames` [{"idx", "time", "path"}] (the jpg is never required), `key_items`
  {str(idx): {name: [[x1, y1, x2, y2], ...]}} NORMALISED to [0, 1];
- SFT `reasoning_process`: bare text (no <think> tags) whose `<box>` floats are normalised for videos;
  for images, the answer's and the reasoning's boxes are integer pixels of `image_size` (Open-o3-Video
  rescales them from image_size to the resized image).
Normalised boxes become pixels of the probed video's frame, which is also the record's `image_size`.
"""

from __future__ import annotations

import math
from typing import Any

from visd_exp.data.formats.base import (
    BOX_IN_TEXT,
    FieldError,
    ReadContext,
    options_from_question,
    require,
    scale_boxes_in_text,
)
from visd_exp.rewards.groundtruth import ground_truth
from visd_exp.rewards.tasks import UnknownTaskError, canonical_task, task_spec

NORM_TOLERANCE = 1e-3  # a normalised coordinate may overshoot [0, 1] by this much (then clipped)
BOX_DIGITS = 1  # key_items pixels are rounded to 1 decimal (sub-pixel precision kept on small frames)
TEMPORAL = ("temporal_grounding", "temporal_grounding_choice")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _normalised(value: float, where: str) -> float:
    if value < -NORM_TOLERANCE or value > 1 + NORM_TOLERANCE:
        raise FieldError(where, f"coordinate {value} is outside [0, 1] (STGR boxes are normalised)")
    return min(1.0, max(0.0, value))


def _key_frames(frames: Any) -> list[dict]:
    """idx and time of each key frame; the pre-extracted jpg `path` is dropped (never opened)."""
    if not isinstance(frames, list):
        raise FieldError("key_frames", f"expected a list of {{idx, time}}, got {type(frames).__name__}")
    out = []
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise FieldError(f"key_frames[{k}]", f"expected {{idx, time}}, got {type(frame).__name__}")
        idx, time = frame.get("idx"), _number(frame.get("time"))
        if isinstance(idx, float) and idx.is_integer():
            idx = int(idx)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise FieldError(f"key_frames[{k}].idx", f"expected an int, got {idx!r}")
        if time is None:
            raise FieldError(
                f"key_frames[{k}].time", f"expected a number of seconds, got {frame.get('time')!r}"
            )
        out.append({"idx": idx, "time": time})
    return out


def _key_items(items: Any, width: int, height: int) -> dict:
    """{str(idx): {name: [[x1, y1, x2, y2] in pixels of width x height]}} from normalised boxes."""
    if not isinstance(items, dict):
        raise FieldError("key_items", f"expected {{idx: {{name: [boxes]}}}}, got {type(items).__name__}")
    out: dict[str, dict[str, list[list[float]]]] = {}
    for key, objects in items.items():
        if objects is None:
            continue  # a `datasets` load unifies the keys of every record, filling the others with null
        if not isinstance(objects, dict):
            raise FieldError(f"key_items[{key}]", f"expected {{name: [boxes]}}, got {type(objects).__name__}")
        scaled_objects = {}
        for name, boxes in objects.items():
            if boxes is None:
                continue
            if isinstance(boxes, list) and len(boxes) == 4 and all(_number(v) is not None for v in boxes):
                boxes = [boxes]  # one box written without the outer list
            if not isinstance(boxes, list):
                raise FieldError(f"key_items[{key}][{name}]", f"expected a list of boxes, got {boxes!r}")
            scaled = []
            for b, box in enumerate(boxes):
                where = f"key_items[{key}][{name}][{b}]"
                values = [_number(v) for v in box] if isinstance(box, list) else []
                if len(values) != 4 or any(v is None for v in values):
                    raise FieldError(where, f"expected [x1, y1, x2, y2] numbers, got {box!r}")
                x1, y1, x2, y2 = (_normalised(v, where) for v in values)
                scaled.append(
                    [
                        round(x1 * width, BOX_DIGITS),
                        round(y1 * height, BOX_DIGITS),
                        round(x2 * width, BOX_DIGITS),
                        round(y2 * height, BOX_DIGITS),
                    ]
                )
            scaled_objects[str(name)] = scaled
        out[str(key)] = scaled_objects
    return out


def _check_text_boxes(text: str) -> None:
    """Every four-number <box> of a reasoning_process is normalised (a pixel box would be blown up)."""
    for match in BOX_IN_TEXT.finditer(text):
        try:
            values = [float(v) for v in match.group(1).split(",")]
        except ValueError:
            continue
        if len(values) == 4 and any(v < -NORM_TOLERANCE or v > 1 + NORM_TOLERANCE for v in values):
            raise FieldError("reasoning_process", f"{match.group(0)} is not normalised to [0, 1]")


def _think(text: str) -> str:
    """The bare reasoning text (tags removed, should a copy already carry them)."""
    text = text.strip()
    if text.startswith("<think>") and text.endswith("</think>"):
        text = text[len("<think>") : -len("</think>")].strip()
    return text


def _image_size(raw: dict, ctx: ReadContext, image_path: str) -> list[int]:
    """An image record's [W, H]: its `image_size`, else the image's own (probed) size."""
    size = raw.get("image_size")
    if size is not None:
        values = [_number(v) for v in size] if isinstance(size, list) else []
        if len(values) != 2 or any(v is None or v <= 0 or not v.is_integer() for v in values):
            raise FieldError("image_size", f"expected [width, height] of positive ints, got {size!r}")
        return [int(values[0]), int(values[1])]
    if ctx.probe is None:
        raise FieldError("image_size", "missing, and probing is off (the answer's box is in its pixels)")
    result = ctx.probe(image_path)
    if result.info is None:
        raise FieldError("image_path", result.error)
    return [int(result.info.width), int(result.info.height)]


def _convert_image(
    raw: dict, ctx: ReadContext, record: dict, source: str | None, relative: str
) -> list[dict]:
    """An image record (gqa visual QA): `image_path`, `image_size`, and a reasoning_process whose boxes
    stay in image_size pixels (the trainer rescales them to the image the model sees)."""
    spec = task_spec(record["task"])
    if spec.ans_tmp or spec.thk_tmp is not None or spec.uses_key_frames:
        raise FieldError("task", f"{raw['task']!r} needs a video (times or key frames), not an image_path")
    for name in ("key_frames", "key_items"):
        if raw.get(name) is not None:
            raise FieldError(name, "an image record has no key frames")
    record["image_path"] = ctx.resolve_source(source, relative)
    record["image_size"] = _image_size(raw, ctx, record["image_path"])
    reasoning = raw.get("reasoning_process")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise FieldError("reasoning_process", f"expected a string, got {type(reasoning).__name__}")
        record["reasoning_process"] = (
            f"<think>{_think(reasoning)}</think>\n<answer>{record['answer']}</answer>"
        )
    return [record]


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """One STGR record -> one project record (an image record: `image_path`); FieldError for unreadable ones."""
    if not isinstance(raw, dict):
        raise FieldError("record", f"expected a JSON object, got {type(raw).__name__}")
    image = raw.get("image_path") is not None or (
        raw.get("video_path") is None and raw.get("task") == "visual QA"
    )
    if image and raw.get("video_path") is not None:
        raise FieldError("image_path", "a record has video_path or image_path, not both")
    rid = require(raw, "id", (int, str))
    task_name = require(raw, "task")
    try:
        task = canonical_task(task_name)
    except UnknownTaskError as exc:
        raise FieldError("task", str(exc)) from None
    relative = require(raw, "image_path" if image else "video_path")
    question = require(raw, "question")
    answer = require(raw, "answer")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise FieldError("source", f"expected a string, got {type(source).__name__}")
    if image:
        base = {
            "id": str(rid),
            "task": task,
            "source": source or "stgr",
            "question": question,
            "answer": answer,
        }
        return _convert_image(raw, ctx, base, source, relative)
    video_path = ctx.resolve_source(source, relative)

    record: dict[str, Any] = {
        "id": str(rid),
        "task": task,
        "source": source or "stgr",
        "video_path": video_path,
        "question": question,
        "answer": answer,
    }

    options = options_from_question(question)
    if task == "multiple_choice":
        if len(options) < 2:
            raise FieldError("question", "multiple choice without A./B./... option lines in the question")
        record["options"] = options
    elif task == "temporal_grounding_choice" and options:
        record["options"] = options

    if task in TEMPORAL:
        # the project's own reading of Open-o3-Video answers ("[s, e]", "L\n[s, e]", "From <t>s</t>s to ...")
        segment = ground_truth({"task": task, "answer": answer}).segment
        if segment is None:
            raise FieldError("answer", f"no [start, end] interval in {answer!r}")
        record["segment"] = [float(segment[0]), float(segment[1])]

    if raw.get("key_frames") is not None:
        record["key_frames"] = _key_frames(raw["key_frames"])

    reasoning = raw.get("reasoning_process")
    if reasoning is not None and not isinstance(reasoning, str):
        raise FieldError("reasoning_process", f"expected a string, got {type(reasoning).__name__}")
    text = None if reasoning is None else _think(reasoning)
    if text is not None:
        _check_text_boxes(text)
    items = raw.get("key_items")
    needs_size = items is not None or (text is not None and BOX_IN_TEXT.search(text) is not None)

    if task == "visual_qa":
        # a video visual QA record (not published; gqa is images): the answer's box is in image_size pixels
        size = raw.get("image_size")
        if isinstance(size, list) and len(size) == 2:
            record["image_size"] = size
    if needs_size:
        width, height = ctx.frame_size(video_path)  # FieldError("video_path") when it cannot be probed
        record["image_size"] = [int(width), int(height)]
        if items is not None:
            record["key_items"] = _key_items(items, width, height)
    if text is not None:
        if needs_size:
            text = scale_boxes_in_text(text, width, height)  # integer pixels, like a model's output
        record["reasoning_process"] = f"<think>{text}</think>\n<answer>{answer}</answer>"
    return [record]
