"""V-STaR (V-STaR-Bench/V-STaR): one published record -> its five single-turn queries.

Format facts relied on (docs in /work/shared/notes/formats.md, the official scripts):
  - current release: a JSON array; legacy release: JSON Lines; the records are the same otherwise.
  - fields: `vid` (the video is `<vid>.mp4` anywhere under the video folder), `fps`, `width`,
    `height`, `frame_count` (duration = frame_count / fps), `question` + `answer` (free text),
    `temporal_question` + `timestamps` [s, e] (seconds), `spatial_question`, `spatial_question_2`,
    `object` (the queried object's name) and `bboxes` in PIXELS of width x height:
      current: [{"timestamp": whole second, "frame_index": int, "xmin", "ymin", "xmax", "ymax"}]
      legacy:  [{"<second>_<frame index>": {"xmin", "ymin", "xmax", "ymax"}}]
  - the official inference asks five single-turn questions: what; chain 1: when (the video's
    length stated), then where (told the whole seconds ceil(s)..floor(e), boxes keyed by second);
    chain 2: where (no time given), then when (given the ground-truth boxes without their times).

Wording (`data.vstar_prompts`, ReadContext.options): `project` (the default) asks in the project's
words under its system prompt (data/prompts.build_messages), where-answers as the project's claims
naming the record's `object`; `official` and `open_o3` give each record the `prompt` of V-STaR's own
inference_demo.py or of Open-o3-Video's V-STaR evaluation (formats/vstar_prompts.py, which names the
files and commits), whose where-answers are JSON {"<sec>": [x1, y1, x2, y2]} and which name no object
beyond the published questions.

Records out (the evaluator reads exactly these): ids `<vid>#<k>/what|when1|where1|where2|when2`,
k = the record's 0-based position among the records this file's reader was handed; every record
carries source "vstar", video_path, duration, image_size and the `vstar` block
{"vid", "index", "query", "chain", "prompts"}. Normalised boxes ([0, 1]) are refused, never read as pixels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, require
from visd_exp.data.formats.vstar_prompts import MODES, query_prompts

SOURCE = "vstar"
NUMBER = (int, float)
CORNERS = ("xmin", "ymin", "xmax", "ymax")
TEMPORAL, SPATIAL = "temporal_grounding", "spatio_temporal_grounding"
SPAN_FORMAT = "From <t>start</t>s to <t>end</t>s"


def _next_index(ctx: ReadContext) -> int:
    """The record's 0-based position among those handed to this reader for this file (kept on ctx)."""
    k = ctx.counters["vstar"]
    ctx.counters["vstar"] += 1
    return k


def _num(value: float) -> str:
    """12 for 12.0, 12.5 as is: compact numbers for boxes written into text."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _seconds(t: float) -> str:
    return f"{float(t):.1f}"


def _box_text(box: list) -> str:
    return "[" + ",".join(_num(v) for v in box) + "]"


def _corners(raw: Any, where: str) -> list:
    """[xmin, ymin, xmax, ymax] of one published box (numbers as written)."""
    if not isinstance(raw, Mapping):
        raise FieldError(where, f"expected {{xmin, ymin, xmax, ymax}}, got {type(raw).__name__}")
    box = []
    for name in CORNERS:
        value = raw.get(name)
        if not isinstance(value, NUMBER) or isinstance(value, bool):
            raise FieldError(f"{where}.{name}", "missing" if value is None else f"not a number: {value!r}")
        box.append(value)
    return box


def _parse_bboxes(raw: Any) -> list[tuple[float, int, list]]:
    """(second, frame index, pixel box) of each ground-truth box, current or legacy layout."""
    if not isinstance(raw, list) or not raw:
        raise FieldError("bboxes", "missing or empty (the where queries need the ground-truth boxes)")
    boxes = []
    for n, item in enumerate(raw):
        where = f"bboxes[{n}]"
        if not isinstance(item, Mapping):
            raise FieldError(where, f"expected an object, got {type(item).__name__}")
        if "xmin" in item or "timestamp" in item or "frame_index" in item:  # current release
            t, idx = item.get("timestamp"), item.get("frame_index")
            if not isinstance(t, NUMBER) or isinstance(t, bool):
                raise FieldError(f"{where}.timestamp", "missing" if t is None else f"not a number: {t!r}")
            if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                raise FieldError(
                    f"{where}.frame_index", "missing" if idx is None else f"not an int >= 0: {idx!r}"
                )
            boxes.append((float(t), idx, _corners(item, where)))
            continue
        if len(item) != 1:  # legacy release: {"<second>_<frame>": {corners}}
            raise FieldError(
                where,
                f"expected {{timestamp, frame_index, xmin..}} or {{'<t>_<frame>': box}}, got keys {sorted(item)}",
            )
        ((key, corners),) = item.items()
        second, sep, frame = str(key).partition("_")
        try:
            t, idx = float(second), int(frame)
        except ValueError:
            raise FieldError(where, f"key {key!r} is not '<second>_<frame index>'") from None
        if not sep or idx < 0:
            raise FieldError(where, f"key {key!r} is not '<second>_<frame index>'")
        boxes.append((t, idx, _corners(corners, f"{where}[{key}]")))
    if all(0 <= v <= 1 for _, _, box in boxes for v in box):
        raise FieldError(
            "bboxes",
            "every box lies within [0, 1]: normalised coordinates, but V-STaR boxes are pixels of width x height",
        )
    return boxes


def _timestamps(raw: Mapping) -> tuple[float, float]:
    value = require(raw, "timestamps", list)
    if len(value) != 2 or not all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in value):
        raise FieldError("timestamps", f"expected [start, end] in seconds, got {value!r}")
    return float(value[0]), float(value[1])


def _duration(raw: Mapping) -> float:
    frames, fps = require(raw, "frame_count", NUMBER), require(raw, "fps", NUMBER)
    if fps <= 0:
        raise FieldError("fps", f"expected a positive number, got {fps!r}")
    return frames / fps


def _image_size(raw: Mapping) -> list[int]:
    size = []
    for name in ("width", "height"):
        value = require(raw, name, NUMBER)
        if value <= 0 or not float(value).is_integer():
            raise FieldError(name, f"expected a positive whole number of pixels, got {value!r}")
        size.append(int(value))
    return size


# ----------------------------------------------------------------------------- question wording


def when_question(question: str, duration: float) -> str:
    return (
        f"{question.strip()} The video is {duration:.1f} seconds long. "
        f"Give the start and end of that moment as {SPAN_FORMAT}."
    )


def where_question(question: str, name: str, segment: tuple[float, float] | None) -> str:
    """Boxes of `name` keyed by whole second; `segment` narrows the search to its whole seconds."""
    claim = f"<obj>{name}</obj><box>[x1,y1,x2,y2]</box>at<t>seconds</t>s"
    if segment is None:
        look = f"Find the {name} in the video."
    else:
        first, last = math.ceil(segment[0]), math.floor(segment[1])
        if first <= last:
            look = f"Look at the video from second {first} to second {last}."
        else:  # a span within one second: no whole second inside it
            look = f"Look at the video from {_seconds(segment[0])}s to {_seconds(segment[1])}s."
    return (
        f"{question.strip()} {look} For each whole second where the {name} is visible, give its box "
        f"(corners in pixels of the frame) as {claim}, one claim per second."
    )


def when_given_boxes_question(question: str, duration: float, size: list[int], boxes: list[list]) -> str:
    listed = ", ".join(_box_text(box) for box in boxes)
    count = f"{len(boxes)} box" if len(boxes) == 1 else f"{len(boxes)} boxes"
    return (
        f"{question.strip()} The video is {duration:.1f} seconds long and {size[0]}x{size[1]} pixels. "
        f"The object is located at these {count} [x1,y1,x2,y2] in pixels, in time order: {listed}. "
        f"Give the start and end of that moment as {SPAN_FORMAT}."
    )


# ----------------------------------------------------------------------------- records


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """The five queries of one V-STaR record (what, when1, where1, where2, when2), in that order."""
    k = _next_index(ctx)  # counted before anything can fail: k is the record's place in the file
    mode = str(ctx.options.get("vstar_prompts") or "project")
    if mode not in MODES:
        raise ValueError(f"data.vstar_prompts={mode!r}: expected one of {', '.join(MODES)}")
    if not isinstance(raw, Mapping):
        raise FieldError("<record>", f"expected a JSON object, got {type(raw).__name__}")
    vid = require(raw, "vid", str)
    duration = _duration(raw)
    size = _image_size(raw)
    start, end = _timestamps(raw)
    name = require(raw, "object", str).strip()
    questions = {
        key: require(raw, key, str)
        for key in ("question", "temporal_question", "spatial_question", "spatial_question_2")
    }
    answer = require(raw, "answer", str)
    boxes = _parse_bboxes(raw.get("bboxes"))
    video_path = ctx.find_video(vid)

    span = f"[{start}, {end}]"
    claims = " ".join(
        f"<obj>{name}</obj><box>{_box_text(box)}</box>at<t>{_seconds(t)}</t>s" for t, _, box in boxes
    )
    key_frames: list[dict] = []
    key_items: dict[str, dict[str, list]] = {}
    for t, idx, box in boxes:
        if str(idx) not in key_items:
            key_frames.append({"idx": idx, "time": t})
            key_items[str(idx)] = {name: []}
        key_items[str(idx)][name].append(list(box))
    timed = {"segment": [start, end]}
    boxed = {"segment": [start, end], "key_frames": key_frames, "key_items": key_items}
    q = questions
    where1 = where_question(q["spatial_question"], name, (start, end))
    where2 = where_question(q["spatial_question_2"], name, None)
    when2 = when_given_boxes_question(q["temporal_question"], duration, size, [b for _, _, b in boxes])
    queries = [  # (id suffix, task, query, chain, question, answer, task fields)
        ("what", "free_form", "what", 0, q["question"].strip(), answer, {}),
        ("when1", TEMPORAL, "when", 1, when_question(q["temporal_question"], duration), span, timed),
        ("where1", SPATIAL, "where", 1, where1, claims, boxed),
        ("where2", SPATIAL, "where", 2, where2, claims, boxed),
        ("when2", TEMPORAL, "when", 2, when2, span, timed),
    ]
    prompts: dict[str, dict] = {}
    if mode != "project":  # the pipeline's own text; `question` is then the published question
        published = {"what": "question", "when1": "temporal_question", "when2": "temporal_question"}
        published.update(where1="spatial_question", where2="spatial_question_2")
        prompts = query_prompts(mode, raw, [b for _, _, b in boxes], size, (start, end))
        queries = [(s, t, qu, c, q[published[s]].strip(), a, f) for s, t, qu, c, _, a, f in queries]
    records = []
    for suffix, task, query, chain, question, answer_text, fields in queries:
        record = {
            "id": f"{vid}#{k}/{suffix}",
            "task": task,
            "source": SOURCE,
            "video_path": video_path,
            "question": question,
            "answer": answer_text,
            **copy.deepcopy(fields),  # records must not share mutable fields
            "image_size": list(size),
            "duration": duration,
            "vstar": {"vid": vid, "index": k, "query": query, "chain": chain, "prompts": mode},
        }
        if suffix in prompts:
            record["prompt"] = prompts[suffix]
        records.append(record)
    return records
