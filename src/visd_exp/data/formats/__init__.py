"""Published data files read as they are published, into the project's record schema (docs/DATA.md).

    loaded = read_file("STGR-RL.json", video_root="/data/stgr")    # format detected from content
    loaded.entries    # [(line, record | FieldError | JSONDecodeError)], line = where the record starts
    loaded.skipped    # Counter: reason -> records read but not used (e.g. image records)

Formats (`data.format`, `--format`): project (JSONL of docs/DATA.md), stgr (Open-o3-Video
STGR-RL / STGR-SFT), video_r1 (Video-R1-260k / COT-165k), vstar (V-STaR, JSON or legacy JSONL),
charades_sta (the `<vid> <start> <end>##<sentence>` text), charades_sta_json (Time-R1's JSON
object keyed by video, pretty-printed or on one line), tvgbench (Time-R1's TVGBench JSON), time_r1
(Time-R1's training JSON: video, duration, timestamp, sentence, qid). Each reader lives in its own
module.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, Skip, source_roots_mapping
from visd_exp.data.formats.parquet import detect as detect_parquet
from visd_exp.data.formats.parquet import files as parquet_files
from visd_exp.data.formats.parquet import iter_rows as iter_parquet

log = logging.getLogger(__name__)

FORMATS = ("project", "stgr", "video_r1", "vstar", "charades_sta", "charades_sta_json", "tvgbench")
FORMATS += ("worldsense",)
FORMATS += ("videommmu",)
FORMATS += ("videomme",)
FORMATS += ("videomme_v2",)
FORMATS += ("longvideo_reason",)
FORMATS += ("time_r1",)


@dataclass
class Loaded:
    """One data file read: its records (or why each could not be read) and what was skipped."""

    path: str
    format: str
    entries: list[tuple[int, Any]]
    read: int = 0  # published records read (a V-STaR record gives several queries)
    skipped: Counter = field(default_factory=Counter)


# ----------------------------------------------------------------------------- raw elements with lines


def _iter_json_array(text: str) -> Iterator[tuple[int, Any]]:
    """(line where it starts, value) of each element of a top-level JSON array, in linear time;
    a malformed element ends the scan with a JSONDecodeError entry at its line."""
    decoder = json.JSONDecoder()
    i, line, last = text.index("[") + 1, 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, last
        line += text.count("\n", last, pos)
        last = pos
        return line

    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            yield line_at(n), json.JSONDecodeError("unterminated array (no closing ])", text, n)
            return
        if text[i] == "]":
            return
        start_line = line_at(i)
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield start_line, exc
            return
        yield start_line, value


def _iter_json_object(text: str) -> Iterator[tuple[int, Any]]:
    """Time-R1's form: (line, {"vid": key, **value}) for each member of a top-level JSON object."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        yield exc.lineno, exc
        return
    # lines: find each key's position in order (keys are unique, members come in file order)
    pos, line = 0, 1  # where the previous key was found, and its line (counted incrementally: linear time)
    for key, value in whole.items():
        found = text.find(json.dumps(key, ensure_ascii=False), pos)
        if found < 0:  # written with \u escapes
            found = text.find(json.dumps(key), pos)
        if found >= 0:
            line += text.count("\n", pos, found)
            pos = found
        yield line, {"vid": key, **value} if isinstance(value, dict) else {"vid": key, "_value": value}


def _iter_lines(text: str, as_json: bool) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not as_json:
            yield lineno, line
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, json.JSONDecodeError(exc.msg, line, exc.pos)


# ----------------------------------------------------------------------------- detection


def _first_value(text: str) -> Any:
    """The first record of the file (array element, JSONL line or object), or None."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        for _, value in _iter_json_array(stripped):
            return value
        return None
    if stripped.startswith("{"):
        first_line = stripped.splitlines()[0]
        try:
            return json.loads(first_line)
        except json.JSONDecodeError:
            try:
                whole = json.loads(stripped)
            except json.JSONDecodeError:
                return None
            return whole
    return None


STGR_TASKS = (
    "temporal QA",
    "temporal QA (MCQ)",
    "temporal-spatial free-form QA",
    "visual QA",
    "General video QA MCQ",
    "General video QA Free-form",
)


def detect_format(path: str | Path, text: str | None = None) -> str:
    """The format of a data file from its content (the first record's keys). JSON that fits no published
    format is read as the project's schema (validation names what is missing); text that is neither JSON
    nor Charades-STA is a ValueError."""
    path = Path(path)
    if parquet_files(path):  # parquet: by its columns (formats/parquet.py)
        return detect_parquet(path)
    text = path.read_text(encoding="utf-8", errors="replace") if text is None else text
    stripped = text.lstrip()
    if not stripped:
        raise ValueError(f"{path}: empty data file")
    head = stripped[0]
    if head not in "[{":
        first = stripped.splitlines()[0]
        if "##" in first and len(first.split("##")[0].split()) == 3:
            return "charades_sta"
        raise ValueError(
            f"{path}:1: not JSON, JSONL or Charades-STA text (`<vid> <start> <end>##<sentence>`)"
        )
    first = _first_value(stripped)
    if head == "{" and _worldsense_like(first):
        return "worldsense"
    if head == "{" and isinstance(first, dict) and (not _is_jsonl(stripped) or _one_line(stripped)):
        # Time-R1's Charades-STA object, pretty-printed or on one line as json.dump writes it (a one-line
        # object is taken for it only in its shape: every member {timestamps, sentences, ...})
        members = list(first.values())
        if members and all(isinstance(v, dict) and "timestamps" in v and "sentences" in v for v in members):
            return "charades_sta_json"
    if isinstance(first, dict):
        keys = set(first)
        if "vid" in keys and ({"temporal_question", "bboxes"} & keys):
            return "vstar"
        if {"video", "timestamp", "sentence", "qid"} <= keys:  # Time-R1's training JSON
            return "time_r1"
        if {"problem", "videos", "answer"} <= keys and "solution" not in keys:  # before Video-R1's
            return "longvideo_reason"
        if {"problem", "problem_type"} <= keys:
            return "video_r1"
        if {"path", "question", "answer"} <= keys and "video_path" not in keys:
            return "tvgbench"
        if first.get("task") in STGR_TASKS and (
            head == "[" or not isinstance(first.get("id"), str) or "image_path" in keys
        ):
            return "stgr"
    # Otherwise the project's own schema: its validation then names each missing or wrong field
    # (a first record lacking `question` is a problem on line 1, not an undetectable file).
    return "project"


def _worldsense_like(first: Any) -> bool:
    from visd_exp.data.formats.worldsense import looks_like

    return looks_like(first)


def _one_line(text: str) -> bool:
    """The whole file is one line (trailing whitespace aside)."""
    return len(text.strip().splitlines()) == 1


def _is_jsonl(text: str) -> bool:
    """One JSON object per line (the first line parses on its own)."""
    try:
        return isinstance(json.loads(text.splitlines()[0]), dict)
    except json.JSONDecodeError:
        return False


# ----------------------------------------------------------------------------- reading


def _converter(fmt: str) -> Callable[[Any, ReadContext], list[dict]]:
    if fmt == "stgr":
        from visd_exp.data.formats.stgr import convert
    elif fmt == "video_r1":
        from visd_exp.data.formats.video_r1 import convert
    elif fmt == "vstar":
        from visd_exp.data.formats.vstar import convert
    elif fmt == "charades_sta":
        from visd_exp.data.formats.grounding import convert_charades_line as convert
    elif fmt == "charades_sta_json":
        from visd_exp.data.formats.grounding import convert_charades_json as convert
    elif fmt == "tvgbench":
        from visd_exp.data.formats.grounding import convert_tvgbench as convert
    elif fmt == "worldsense":
        from visd_exp.data.formats.worldsense import convert
    elif fmt == "videommmu":
        from visd_exp.data.formats.videommmu import convert
    elif fmt == "videomme":
        from visd_exp.data.formats.videomme import convert
    elif fmt == "videomme_v2":
        from visd_exp.data.formats.videomme_v2 import convert
    elif fmt == "longvideo_reason":
        from visd_exp.data.formats.longvideo_reason import convert
    elif fmt == "time_r1":
        from visd_exp.data.formats.grounding import convert_time_r1 as convert
    else:
        raise ValueError(f"unknown data format {fmt!r} (one of {', '.join(FORMATS)})")
    return convert


def _raw_elements(fmt: str, text: str) -> Iterator[tuple[int, Any]]:
    stripped_start = len(text) - len(text.lstrip())
    head = text[stripped_start : stripped_start + 1]
    if fmt == "charades_sta":
        return _iter_lines(text, as_json=False)
    if fmt == "charades_sta_json":
        return _iter_json_object(text)
    if fmt == "worldsense":  # one object keyed by video id, as Time-R1's Charades-STA JSON
        return _iter_json_object(text)
    if head == "[":
        return _iter_json_array(text)
    return _iter_lines(text, as_json=True)


def _project_record(record: Any, ctx: ReadContext) -> Any:
    """A project record as it is, its video (or image) path resolved (against video_root or the file's
    directory)."""
    for key in ("video_path", "image_path"):
        if isinstance(record, dict) and isinstance(record.get(key), str) and record[key].strip():
            record[key] = ctx.resolve(record[key])
    return record


def read_file(
    path: str | Path,
    fmt: str | None = None,
    video_root: str | Path | None = None,
    source_roots: Mapping[str, str] | str | None = None,
    probe: Callable[[str], object] | None = None,
    options: Mapping[str, object] | None = None,
) -> Loaded:
    """Every record of a data file in the project schema, with the line where each starts. `options`:
    the readers' data options, e.g. {"vstar_prompts": "official"} (formats/vstar.py)."""
    path = Path(path)
    parquet = parquet_files(path) != []  # a .parquet file, or a folder of them (VideoMMMU's tracks)
    if not path.is_file() and not parquet:
        raise FileNotFoundError(f"{path}: data file not found")
    text = "" if parquet else path.read_text(encoding="utf-8", errors="replace")
    fmt = fmt or (detect_parquet(path) if parquet else detect_format(path, text))
    root = Path(video_root) if video_root else (path if path.is_dir() else path.parent)
    if video_root and not root.is_dir():
        raise FileNotFoundError(f"data.video_root={root}: no such directory")
    ctx = ReadContext(
        path=path,
        video_root=root,
        source_roots=source_roots_mapping(source_roots),
        probe=probe,
        options=dict(options or {}),
    )
    loaded = Loaded(str(path), fmt, [])
    convert = None if fmt == "project" else _converter(fmt)
    for lineno, raw in iter_parquet(path) if parquet else _raw_elements(fmt, text):
        if isinstance(raw, json.JSONDecodeError):
            loaded.entries.append((lineno, raw))
            continue
        loaded.read += 1
        if convert is None:
            loaded.entries.append((lineno, _project_record(raw, ctx)))
            continue
        try:
            records = convert(raw, ctx)
        except Skip as skip:
            loaded.skipped[skip.reason] += 1
            continue
        except FieldError as exc:
            loaded.entries.append((lineno, exc))
            continue
        loaded.entries.extend((lineno, record) for record in records)
    return loaded
