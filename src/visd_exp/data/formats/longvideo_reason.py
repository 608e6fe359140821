"""LongVideo-Reason eval (HF LongVideo-Reason/longvideo-reason, split `test`; NVlabs/Long-RL `eval/eval.py`):
one JSON record per question (a JSONL file, a JSON array, or the split's parquet) -> one record each.

Format facts relied on (/work/shared/notes/benchmarks.md section 3 and (c)):
  - keys `problem_id` (int), `problem` (the question WITH its options embedded as "\\nA. ..." lines),
    `data_type` ("video"), `problem_type` (e.g. "goal"; optional here), `reasoning` (SFT text, unused),
    `videos` ("longvila_videos/<id>.mp4", may be .webm / .mkv), `answer` ("<answer>B</answer>").
    No `solution` key: that is what tells it from Video-R1's files, which also have problem/problem_type.
  - the video is `--video-dir/<videos>` (eval.py joins them), so data.video_root is the folder holding
    `longvila_videos/`; when the file is not there, `<id>.<ext>` is looked for anywhere under the root.

The prompt is eval.py's QUESTION_TEMPLATE_VIDEO as the user text after the frames (no system message).
The gold answer is eval.py's: the text inside the first <answer>...</answer> of `answer` (one line; no
DOTALL), stripped, or the whole `answer` stripped. Ids: `problem_id` (else the record's position).
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, Skip, options_from_question, require
from visd_exp.data.record_checks import option_letters

SOURCE = "longvideo_reason"
QUESTION_TEMPLATE_VIDEO = (
    "You are a helpful assistant. The user asks a question, and then you solves it.\n\n"
    "Please first think deeply about the question based on the given video, and then provide the final "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n\n"
    " Question: {question}"
)
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>")


def gold_answer(answer: str) -> str:
    """eval.py's ground truth: inside the first <answer> tag (same line), else the whole text, stripped."""
    match = ANSWER_TAG.search(answer)
    return match.group(1).strip() if match else answer.strip()


def _video(raw: Any, ctx: ReadContext) -> str:
    videos = raw.get("videos")
    if isinstance(videos, list) and len(videos) == 1:
        videos = videos[0]
    if not isinstance(videos, str) or not videos.strip():
        raise FieldError(
            "videos", f"expected a video path such as 'longvila_videos/<id>.mp4', got {videos!r}"
        )
    path = ctx.resolve(videos)
    if os.path.isfile(path):
        return path
    try:
        return ctx.find_video(PurePosixPath(videos).stem)
    except FieldError:
        raise FieldError(
            "videos",
            f"no {path} and no {PurePosixPath(videos).name} under {ctx.video_root} (data.video_root)",
        ) from None


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """One published record -> one record: multiple choice when the problem's options hold the gold letter."""
    ctx.counters[SOURCE] += 1
    if raw.get("data_type", "video") != "video":
        raise Skip(f"data_type {raw.get('data_type')!r} (only videos are evaluated)")
    problem = require(raw, "problem", str)
    answer = gold_answer(require(raw, "answer", str))
    if not answer:
        raise FieldError("answer", f"no answer inside {raw['answer']!r}")
    problem_type = raw.get("problem_type")
    if problem_type is not None and not isinstance(problem_type, str):
        raise FieldError("problem_type", f"expected a string, got {type(problem_type).__name__}")
    problem_id = raw.get("problem_id")
    rid = str(problem_id) if problem_id is not None else str(ctx.counters[SOURCE])
    options = options_from_question(problem)
    multiple_choice = bool(options) and answer in option_letters(options)
    record = {
        "id": rid,
        "task": "multiple_choice" if multiple_choice else "free_form",
        "source": SOURCE,
        "video_path": _video(raw, ctx),
        "question": problem,
        "answer": answer,
        "prompt": {
            "system": None,
            "text": QUESTION_TEMPLATE_VIDEO.format(question=problem),
            "timestamps": False,
            "images": 0,
        },
        "benchmark": {"answer": answer, "problem_type": problem_type, "problem_id": problem_id},
    }
    if multiple_choice:
        record["options"] = options
    return [record]
