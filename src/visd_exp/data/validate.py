"""Validate JSONL data files (docs/DATA.md) before training: every problem, with file, line and field.

    python -m visd_exp.data.validate train.jsonl [val.jsonl ...] [--lenient] [--max-problems 50] [--no-probe]

Strict (default): one line per problem `file:line: field: what is wrong`, exit 1 when there is any.
Lenient: the same lines as warnings and "kept K of N records, skipped S", exit 0 (the training loop
drops the bad lines). A missing data file: exit 2. Videos are probed (header plus one decoded frame
in the middle, to catch truncated files) once per distinct path.

    report = validate_file(path)            # ValidationReport: .ok, .problems, .valid_lines
    records, report = load_valid_records(path)   # the good records, shaped like load_records()
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visd_exp.data.frames import VideoInfo
from visd_exp.data.task_checks import CHAIN_TASKS, check_task_supervision
from visd_exp.rewards.tasks import TASK_NAMES

# The reward's task table (project names, Open-o3-Video's and Video-R1's spellings) and V-STaR-style
# chained questions (what-when-where, what-where-when): the synthetic test split.
TASKS = (*TASK_NAMES, *CHAIN_TASKS)
REQUIRED_STRINGS = ("id", "task", "video_path", "question", "answer")
OPTIONAL_STRINGS = ("source", "reasoning_process")
PROGRESS_MIN_VIDEOS = 20  # below this a progress bar is only noise
# An option's own letter: "A. left", "(B) right", "C: up", "D) down".
OPTION_LETTER = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass
class ValidationReport:
    """The outcome for one file: `problems` holds at most the cap, `omitted` counts the rest."""

    path: str
    total: int
    valid_lines: list[int]
    problems: list[Problem]
    truncated: bool
    omitted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_problems(self) -> int:
        return len(self.problems) + self.omitted

    @property
    def skipped(self) -> int:
        return self.total - len(self.valid_lines)


# ----------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class ProbeResult:
    """A probed video: its info, or why it cannot be used."""

    info: VideoInfo | None
    error: str | None


def probe(path: str | Path) -> ProbeResult:
    """Header in approximate seek mode plus ONE decoded frame in the middle (truncated files fail there)."""
    from torchcodec.decoders import VideoDecoder

    path = Path(path)
    if not path.is_file():
        return ProbeResult(None, f"video file not found: {path}")
    try:
        decoder = VideoDecoder(str(path), seek_mode="approximate")
        meta = decoder.metadata
        duration = meta.duration_seconds
        if duration is None or not math.isfinite(duration) or duration <= 0:
            return ProbeResult(None, f"video has no usable duration ({duration}): {path}")
        decoder.get_frame_played_at(duration / 2)
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError/IndexError with internals
        return ProbeResult(None, f"cannot decode video {path}: {_short_error(exc)}")
    info = VideoInfo(float(duration), int(meta.width), int(meta.height), float(meta.average_fps or 0.0))
    return ProbeResult(info, None)


def _short_error(exc: Exception) -> str:
    # Drop torchcodec's "Decoder, /path/to/file.cpp:52, " prefix: the C++ location helps nobody here.
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return f"{type(exc).__name__}: {text[:200]}"


def probe_all(paths: Iterable[str], cache: dict[str, ProbeResult]) -> None:
    """Probe each path not yet in `cache`; a tqdm bar when there are many."""
    todo = sorted(set(paths) - set(cache))
    if len(todo) > PROGRESS_MIN_VIDEOS:
        from tqdm import tqdm

        todo = tqdm(todo, desc="probing videos", unit="video", file=sys.stderr)
    for path in todo:
        cache[path] = probe(path)


# ----------------------------------------------------------------------------- value checks


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
    for name in OPTIONAL_STRINGS:
        if record.get(name) is not None and not isinstance(record[name], str):
            issues.append((name, f"expected a string, got {_type_name(record[name])}"))
    task = record.get("task")
    if isinstance(task, str) and task.strip() and task not in TASKS:
        issues.append(("task", f"unknown task {task!r} (valid: {', '.join(repr(t) for t in TASKS)})"))
    return issues


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
        return [("segment", f"end {end} is past the video's duration {duration:g}")]
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
        elif time < 0 or (duration is not None and time > duration):
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


def check_video(record: dict, base_dir: Path, cache: dict[str, ProbeResult] | None) -> Issues:
    """The probed video (from `cache`) exists and decodes; nothing to say when not probing."""
    video_path = record.get("video_path")
    if cache is None or not isinstance(video_path, str) or not video_path.strip():
        return []
    result = cache.get(_resolve(video_path, base_dir))
    return [("video_path", result.error)] if result is not None and result.error else []


def known_duration(record: dict, base_dir: Path, cache: dict[str, ProbeResult] | None) -> float | None:
    """The record's own duration when valid, else the probed video's, else None."""
    if not check_duration(record) and record.get("duration") is not None:
        return float(record["duration"])
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
        *(check_task_supervision(record) if not check_strings(record) else []),
    ]


# ----------------------------------------------------------------------------- files


@dataclass
class _Collector:
    """Problems up to a cap (the rest only counted) and the lines that had any."""

    path: str
    cap: int
    problems: list[Problem] = field(default_factory=list)
    omitted: int = 0
    bad_lines: set[int] = field(default_factory=set)

    def add(self, line: int, where: str, message: str) -> None:
        self.bad_lines.add(line)
        if len(self.problems) < self.cap:
            self.problems.append(Problem(self.path, line, where, message))
        else:
            self.omitted += 1


def read_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed JSON or a JSONDecodeError) for each non-blank line."""
    entries = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entries.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                entries.append((lineno, exc))
    return entries


def validate_records(
    entries: Sequence[tuple[int, Any]],
    path: str,
    base_dir: str | Path,
    probe_videos: bool = True,
    max_problems: int = 50,
    cache: dict[str, ProbeResult] | None = None,
) -> ValidationReport:
    """Check parsed (line, record) pairs of one file; a JSONDecodeError in place of a record is a problem."""
    base_dir = Path(base_dir)
    if probe_videos:
        cache = {} if cache is None else cache
        videos = [
            _resolve(r["video_path"], base_dir)
            for _, r in entries
            if isinstance(r, dict) and isinstance(r.get("video_path"), str) and r["video_path"].strip()
        ]
        probe_all(videos, cache)
    else:
        cache = None
    out = _Collector(path, max(0, max_problems))
    first_line_of: dict[str, int] = {}
    for lineno, record in entries:
        if isinstance(record, json.JSONDecodeError):
            out.add(lineno, "<json>", f"{record.msg} at column {record.colno}")
            continue
        for where, message in check_record(record, base_dir, cache):
            out.add(lineno, where, message)
        record_id = record.get("id") if isinstance(record, dict) else None
        if isinstance(record_id, str) and record_id.strip():
            if record_id in first_line_of:
                out.add(
                    lineno, "id", f"duplicate id {record_id!r} (first on line {first_line_of[record_id]})"
                )
            else:
                first_line_of[record_id] = lineno
    valid = [lineno for lineno, _ in entries if lineno not in out.bad_lines]
    return ValidationReport(path, len(entries), valid, out.problems, out.omitted > 0, out.omitted)


def validate_file(
    path: str | Path,
    probe_videos: bool = True,
    max_problems: int = 50,
    cache: dict[str, ProbeResult] | None = None,
) -> ValidationReport:
    """Validate one JSONL file; FileNotFoundError when it is missing. Pass `cache` to share probes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    return validate_records(read_lines(path), str(path), path.parent, probe_videos, max_problems, cache)


def load_valid_records(
    path: str | Path, report: ValidationReport | None = None, **kwargs
) -> tuple[list[dict], ValidationReport]:
    """The records on the valid lines, shaped like load_records() (video_path resolved, `_where`)."""
    path = Path(path)
    report = report if report is not None else validate_file(path, **kwargs)
    keep = set(report.valid_lines)
    records = []
    for lineno, record in read_lines(path):
        if lineno in keep:
            record["video_path"] = _resolve(record["video_path"], path.parent)
            record["_where"] = f"{path}:{lineno}"
            records.append(record)
    return records, report


class DataValidationError(ValueError):
    """Strict validation failed: the message lists every problem (up to the cap), one per line."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [str(p) for p in report.problems]
        if report.truncated:
            lines.append(f"... and {report.omitted} more")
        super().__init__(
            f"{report.path}: {report.num_problems} problem(s) in {report.total} records "
            "(data.validation=lenient skips bad records instead):\n" + "\n".join(lines)
        )


# ----------------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m visd_exp.data.validate", description="Check JSONL data files before training."
    )
    parser.add_argument("files", nargs="+", help="JSONL data files")
    parser.add_argument("--lenient", action="store_true", help="warn, keep the good records and exit 0")
    parser.add_argument("--max-problems", type=int, default=50, help="print at most this many problems")
    parser.add_argument("--no-probe", action="store_true", help="skip opening and decoding the videos")
    return parser.parse_args(argv)


def _print_problems(reports: Sequence[ValidationReport], cap: int, prefix: str) -> None:
    """At most `cap` problem lines over all files, then "... and N more"."""
    shown = 0
    for report in reports:
        for problem in report.problems:
            if shown < cap:
                print(f"{prefix}{problem}")
                shown += 1
    remaining = sum(r.num_problems for r in reports) - shown
    if remaining > 0:
        print(f"{prefix}... and {remaining} more")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        for f in missing:
            print(f"error: {f}: data file not found", file=sys.stderr)
        return 2
    cache: dict[str, ProbeResult] = {}  # shared: splits often point at the same videos
    cap = max(0, args.max_problems)
    reports = [validate_file(f, not args.no_probe, cap, cache) for f in args.files]
    total = sum(r.total for r in reports)
    kept = sum(len(r.valid_lines) for r in reports)
    problems = sum(r.num_problems for r in reports)
    files = f"{len(reports)} file{'s' if len(reports) != 1 else ''}"
    videos = f", {len(cache)} videos probed" if not args.no_probe else ""
    if problems == 0:
        print(f"OK: {total} records in {files}{videos}")
        return 0
    _print_problems(reports, cap, "warning: " if args.lenient else "")
    if args.lenient:
        print(f"kept {kept} of {total} records, skipped {total - kept} ({problems} problems in {files})")
        return 0
    print(f"FAILED: {problems} problems in {total - kept} of {total} records ({files}{videos})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
