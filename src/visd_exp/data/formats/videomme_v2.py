"""Video-MME-v2 (MME-Benchmarks/Video-MME-v2): `test.parquet` -> one record per row.

Format facts relied on (/work/shared/notes/benchmarks.md section 4 and (c); the official
`evaluation/test_video_mme_v2.py`, VLMEvalKit's and lmms-eval's copies of it):
  - 3,200 rows = 800 videos x a group of 4 questions, in file order: the official scorer groups rows
    by their position (`index // 4`), so the row's position in its file is kept (`benchmark.index`).
  - columns `video_id` (3-digit string "001"; an integer is re-padded as VLMEvalKit does), `url`,
    `group_type` (relevance | logic), `group_structure` (a Python literal string; for logic groups
    "[1, 2, 3, 4]", "[1, [2, 3], 4]" or "[[1, 2], 3, 4]"; not read for relevance groups),
    `question_id` ("<video_id>-<k>"), `question`, `options` (ONE string "A. ...\\nB. ...", up to H),
    `answer` (a letter A-H), `level` (1 / 2 / 3, int or string, or None), `second_head`, `third_head`.
  - the video is `<video_id>.mp4` (the official `--video-dir/<video_id>.mp4`), looked for anywhere under
    the video folder.

The prompt is the official one without subtitles or reasoning: the frames, then the text parts
"These are the frames of a video." and "Question: {question}\\n{options}\\n" + the instruction, joined
with nothing between them, as Qwen2.5-VL's chat template joins consecutive text parts. Ids: `question_id`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, require

SOURCE = "videomme_v2"
FRAMES_PROMPT = "These are the frames of a video."
INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, D, E, F, G, or H) of the correct option."
)
GROUP_TYPES = ("relevance", "logic")
LOGIC_STRUCTURES = ([1, 2, 3, 4], [1, [2, 3], 4], [[1, 2], 3, 4])
OPTION = re.compile(r"^([A-H])\.")


def prompt_text(question: str, options: str) -> str:
    return FRAMES_PROMPT + f"Question: {question}\n{options}\n" + INSTRUCTION


def option_lines(raw: Any) -> list[str]:
    """The one options string as its lines "A. ...", "B. ..." (in order, at least 2, at most H)."""
    if not isinstance(raw, str):
        raise FieldError("options", f"expected one string of lines 'A. ...', got {type(raw).__name__}")
    lines = [line.strip() for line in raw.split("\n") if line.strip()]
    if len(lines) < 2:
        raise FieldError("options", f"expected at least 2 option lines, got {raw!r}")
    for k, line in enumerate(lines):
        expected = chr(ord("A") + k)
        match = OPTION.match(line)
        if match is None or match.group(1) != expected:
            raise FieldError("options", f"line {k + 1}: expected it to start '{expected}.', got {line!r}")
    return lines


def _level(raw: Any) -> int | None:
    """1, 2 or 3 (an int, a whole float or a digit string), or None (None / "None" / NaN)."""
    if raw is None or (isinstance(raw, str) and raw.strip() == "None") or raw != raw:  # NaN != NaN
        return None
    try:
        level = int(raw) if not isinstance(raw, bool) and float(raw) == int(float(raw)) else None
    except (TypeError, ValueError):
        level = None
    if level not in (1, 2, 3):
        raise FieldError("level", f"expected 1, 2, 3 or None, got {raw!r}")
    return level


def _structure(group_type: str, raw: Any) -> str | None:
    if group_type != "logic":
        return raw if isinstance(raw, str) else None  # unused by the scorer
    if not isinstance(raw, str):
        raise FieldError("group_structure", f"expected a string such as '[1, 2, 3, 4]', got {raw!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = None
    if value not in LOGIC_STRUCTURES:
        known = ", ".join(repr(str(s)) for s in LOGIC_STRUCTURES)
        raise FieldError("group_structure", f"a logic group's structure is one of {known}; got {raw!r}")
    return raw


def _video_id(raw: Mapping) -> str:
    value = raw.get("video_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).zfill(3)  # a TSV round trip made "001" into 1 (VLMEvalKit re-pads it)
    return require(raw, "video_id", str)


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """One parquet row -> one multiple-choice record carrying its position in the file."""
    file = str(raw.get("_file", ""))
    ctx.counters[f"{SOURCE}:{file}"] += 1  # every row is counted, readable or not: positions stay the file's
    index = ctx.counters[f"{SOURCE}:{file}"] - 1
    video_id = _video_id(raw)
    group_type = require(raw, "group_type", str)
    if group_type not in GROUP_TYPES:
        raise FieldError("group_type", f"expected relevance or logic, got {group_type!r}")
    structure = _structure(group_type, raw.get("group_structure"))
    question_id = require(raw, "question_id", str)
    question = require(raw, "question", str)
    options = option_lines(raw.get("options"))
    answer = require(raw, "answer", str)
    letters = [chr(ord("A") + k) for k in range(len(options))]
    if answer not in letters:
        raise FieldError("answer", f"{answer!r} is not one of {', '.join(letters)}")
    level = _level(raw.get("level"))
    heads = {}
    for name in ("second_head", "third_head"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise FieldError(name, f"expected a string or None, got {type(value).__name__}")
        heads[name] = value
    try:
        video_path = ctx.find_video(video_id)
    except FieldError as exc:
        raise FieldError("video_id", exc.message) from None
    return [
        {
            "id": question_id,
            "task": "multiple_choice",
            "source": SOURCE,
            "video_path": video_path,
            "question": question + "\n" + "\n".join(options),
            "options": options,
            "answer": answer,
            "prompt": {
                "system": None,
                "text": prompt_text(question, raw["options"]),
                "timestamps": False,
                "images": 0,
            },
            "benchmark": {
                "file": file,
                "index": index,
                "answer": answer,
                "group_type": group_type,
                "group_structure": structure,
                "level": level,
                **heads,
                "video_id": video_id,
                "question_id": question_id,
            },
        }
    ]
