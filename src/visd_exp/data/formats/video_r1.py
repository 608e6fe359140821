"""Video-R1's Video-R1-260k.json (RL) and Video-R1-COT-165k.json (SFT), one reader for both, into the
project schema.

Published facts relied on (shared/notes/formats.md, "Video-R1"):
- one JSON array; `problem_id` (int), `problem` (the question, WITHOUT the options), `data_type`
  ("video" | "image"; image records are skipped), `problem_type` ("multiple choice", "numerical",
  "OCR", "free-form", "regression"), `options` (["A. ...", ...] or []), `solution`
  ("<answer>X</answer>"), `path` ("./Folder/..." relative to the dataset root), `data_source`;
- the COT file adds `process` ("<think>...</think>"); Video-R1's SFT target is process + "\\n" + solution,
  kept here as `reasoning_process`.
For multiple choice the options are appended to the question one per line (docs/DATA.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, Skip, require
from visd_exp.rewards.tasks import UnknownTaskError, canonical_task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
ANSWER_TAGS = re.compile(r"</?answer>")


def _answer(solution: str) -> str:
    """`solution` without its <answer> tags and surrounding whitespace."""
    answer = ANSWER_TAGS.sub("", solution).strip()
    if not answer:
        raise FieldError("solution", f"no answer inside {solution!r}")
    return answer


def _options(raw: dict) -> list[str]:
    options = raw.get("options")
    if options is None:
        return []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise FieldError("options", f"expected a list of strings, got {options!r}")
    return [o.strip() for o in options if o.strip()]


def _process(process: Any) -> str:
    """The COT `process`, a <think> block (wrapped when a copy lacks the tags)."""
    if not isinstance(process, str) or not process.strip():
        raise FieldError("process", f"expected a non-empty string, got {process!r}")
    process = process.strip()
    return process if "<think>" in process else f"<think>{process}</think>"


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """One Video-R1 record -> one project record; Skip for image records, FieldError for unreadable ones."""
    if not isinstance(raw, dict):
        raise FieldError("record", f"expected a JSON object, got {type(raw).__name__}")
    data_type = raw.get("data_type")
    path = raw.get("path")
    if data_type == "image" or (
        data_type is None and isinstance(path, str) and Path(path).suffix.lower() in IMAGE_SUFFIXES
    ):
        raise Skip("image record (images are not read)")
    if data_type not in (None, "video"):
        raise FieldError("data_type", f"expected 'video' or 'image', got {data_type!r}")
    pid = require(raw, "problem_id", (int, str))
    problem_type = require(raw, "problem_type")
    try:
        task = canonical_task(problem_type)
    except UnknownTaskError as exc:
        raise FieldError("problem_type", str(exc)) from None
    problem = require(raw, "problem").strip()
    path = require(raw, "path")
    answer = _answer(require(raw, "solution"))
    source = raw.get("data_source")
    if source is not None and not isinstance(source, str):
        raise FieldError("data_source", f"expected a string, got {type(source).__name__}")

    record: dict[str, Any] = {
        "id": str(pid),
        "task": task,
        "source": source or "video_r1",
        "video_path": ctx.resolve(path),
        "question": problem,
        "answer": answer,
    }
    if task == "multiple_choice":
        options = _options(raw)
        if len(options) < 2:
            raise FieldError("options", f"multiple choice needs at least 2 options, got {len(options)}")
        record["question"] = problem + "\n" + "\n".join(options)
        record["options"] = options
    if raw.get("process") is not None:
        record["reasoning_process"] = _process(raw["process"]) + "\n" + raw["solution"].strip()
    return [record]
