"""Temporal grounding benchmarks: Charades-STA (text and Time-R1's JSON) and TVGBench.

Format facts relied on (/work/shared/notes/formats.md, "Temporal grounding benchmarks"):
  - Charades-STA test: text lines `<vid> <start> <end>##<sentence>` (seconds); no duration in the
    file (the video is probed later); the video is `<vid>.mp4` somewhere under the video folder.
  - Time-R1's cached Charades-STA: a JSON OBJECT keyed by vid, each member {"duration",
    "timestamps": [[s, e], ...], "sentences": [...]} (sentence i goes with timestamps[i]; the
    sentences keep a trailing newline). read_file hands each member in as {"vid": key, **member}.
  - TVGBench (Time-R1): a JSON array of {"path": "./...", "question", "answer": "s-e", "duration",
    "question_type", "source", ...}; the question is already a grounding question.
  - Time-R1's training JSON (xiaomi-research/time-r1 dataset/timer1/annotations/train_2k5.json, read at
    7f2b5944; main.py load_json_dataset_tg reads it): a JSON array of {"video": "./dataset/timer1/videos/
    timerft_data/<name>.mp4", "duration", "timestamp": [s, e], "sentence", "qid", "video_start",
    "video_end", "difficulty", "pred"}. Some videos are clips cut from a longer one, named
    `<youtube id>_<hh:mm:ss:mmm>_<hh:mm:ss:mmm>.mp4` with video_start/video_end their place in the
    original; `duration` and `timestamp` are the clip's own. The name is kept as written (the clip file is
    the video; nothing is cut again here). Ids are the `qid`s; source "time_r1".
  - Real annotations sometimes end a little past the video's duration: kept as written here
    (validation clips and counts them), never clipped or rejected by the reader.

Ids: `<vid>#<n>` where n counts the queries about that video in file order (0-based), so the n-th
line about a video in the text file and the n-th sentence of its Time-R1 member get the same id;
TVGBench uses the video file's stem for vid. The counts live on the ReadContext (one per file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, require

NUMBER = (int, float)
SPAN_FORMAT = "From <t>start</t>s to <t>end</t>s"
_NUM = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
TVG_ANSWER = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*$")


def _next_id(ctx: ReadContext, group: str, vid: str) -> str:
    """`<vid>#<n>`: n = how many queries about `vid` this file's reader has already produced."""
    key = (group, vid)
    n = ctx.counters[key]
    ctx.counters[key] += 1
    return f"{vid}#{n}"


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FieldError(name, f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise FieldError(name, f"not a finite number: {text!r}")
    return value


def grounding_question(sentence: str) -> str:
    """A Charades-STA description phrased as a grounding question."""
    sentence = " ".join(sentence.split())
    if sentence[-1] not in ".!?":
        sentence += "."
    return (
        f"When in the video does the following happen? {sentence[0].upper()}{sentence[1:]} "
        f"Give its start and end as {SPAN_FORMAT}."
    )


def _span_record(rid: str, source: str, video_path: str, question: str, start: float, end: float) -> dict:
    return {
        "id": rid,
        "task": "temporal_grounding",
        "source": source,
        "video_path": video_path,
        "question": question,
        "answer": f"[{start}, {end}]",
        "segment": [start, end],
    }


# ----------------------------------------------------------------------------- Charades-STA


def convert_charades_line(line: str, ctx: ReadContext) -> list[dict]:
    """`<vid> <start> <end>##<sentence>` -> one temporal grounding record (no duration)."""
    head, sep, sentence = line.partition("##")
    if not sep:
        raise FieldError("line", "expected `<vid> <start> <end>##<sentence>` (no ##)")
    parts = head.split()
    if len(parts) != 3:
        raise FieldError("line", f"expected `<vid> <start> <end>` before ##, got {head.strip()!r}")
    vid, start_text, end_text = parts
    rid = _next_id(ctx, "charades", vid)  # counted before anything can fail: later ids do not shift
    start, end = _number(start_text, "start"), _number(end_text, "end")
    if not sentence.strip():
        raise FieldError("sentence", "empty")
    video_path = ctx.find_video(vid)
    return [_span_record(rid, "charades_sta", video_path, grounding_question(sentence), start, end)]


def convert_charades_json(raw: Any, ctx: ReadContext) -> list[dict]:
    """Time-R1's member {"vid", "duration", "timestamps", "sentences"} -> one record per sentence."""
    vid = require(raw, "vid", str)
    if "_value" in raw:
        kind = type(raw["_value"]).__name__
        raise FieldError(
            "<record>", f"{vid}: expected an object {{duration, timestamps, sentences}}, got {kind}"
        )
    duration = require(raw, "duration", NUMBER)
    if duration <= 0:
        raise FieldError("duration", f"expected a positive number, got {duration!r}")
    spans, sentences = require(raw, "timestamps", list), require(raw, "sentences", list)
    if len(spans) != len(sentences):
        raise FieldError("sentences", f"{len(sentences)} sentences for {len(spans)} timestamps")
    parsed = []
    for n, (span, sentence) in enumerate(zip(spans, sentences)):
        if not (
            isinstance(span, list)
            and len(span) == 2
            and all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in span)
        ):
            raise FieldError(f"timestamps[{n}]", f"expected [start, end] in seconds, got {span!r}")
        if not isinstance(sentence, str) or not sentence.strip():
            raise FieldError(f"sentences[{n}]", f"expected a non-empty string, got {sentence!r}")
        parsed.append((float(span[0]), float(span[1]), sentence.rstrip("\r\n")))
    ids = [_next_id(ctx, "charades", vid) for _ in parsed]
    video_path = ctx.find_video(vid)
    records = []
    for rid, (start, end, sentence) in zip(ids, parsed):
        record = _span_record(rid, "charades_sta", video_path, grounding_question(sentence), start, end)
        record["duration"] = float(duration)
        records.append(record)
    return records


# ----------------------------------------------------------------------------- TVGBench


def convert_tvgbench(raw: Any, ctx: ReadContext) -> list[dict]:
    """{"path", "question", "answer": "s-e", "duration", ...} -> one temporal grounding record."""
    if not isinstance(raw, Mapping):
        raise FieldError("<record>", f"expected a JSON object, got {type(raw).__name__}")
    path = require(raw, "path", str)
    rid = _next_id(ctx, "tvgbench", Path(path).stem)  # counted before anything else can fail
    question = require(raw, "question", str)
    answer = require(raw, "answer", str)
    duration = require(raw, "duration", NUMBER)
    if duration <= 0:
        raise FieldError("duration", f"expected a positive number, got {duration!r}")
    match = TVG_ANSWER.match(answer)
    if match is None:
        raise FieldError("answer", f"expected 'start-end' in seconds, got {answer!r}")
    start, end = _number(match.group(1), "answer"), _number(match.group(2), "answer")
    record = _span_record(rid, "tvgbench", ctx.resolve(path), question.strip(), start, end)
    record["duration"] = float(duration)
    return [record]


# ----------------------------------------------------------------------------- Time-R1 training JSON


def convert_time_r1(raw: Any, ctx: ReadContext) -> list[dict]:
    """{"video", "duration", "timestamp": [s, e], "sentence", "qid", ...} -> one temporal grounding record.
    The video is `video` under data.video_root (Time-R1's paths are relative to its repository root), else
    the file of that name (a clip's name included) anywhere under the root."""
    if not isinstance(raw, Mapping):
        raise FieldError("<record>", f"expected a JSON object, got {type(raw).__name__}")
    qid = require(raw, "qid", str)
    video = require(raw, "video", str)
    sentence = require(raw, "sentence", str)
    if not sentence.strip():
        raise FieldError("sentence", "empty")
    duration = require(raw, "duration", NUMBER)
    if duration <= 0:
        raise FieldError("duration", f"expected a positive number, got {duration!r}")
    span = require(raw, "timestamp", list)
    if len(span) != 2 or not all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in span):
        raise FieldError("timestamp", f"expected [start, end] in seconds, got {span!r}")
    video_path = ctx.resolve(video)
    if not Path(video_path).is_file():
        video_path = ctx.find_video(Path(video).stem)
    question = grounding_question(sentence)
    record = _span_record(qid, "time_r1", video_path, question, float(span[0]), float(span[1]))
    record["duration"] = float(duration)
    return [record]
