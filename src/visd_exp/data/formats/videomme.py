"""Video-MME (v1; lmms-lab/Video-MME): `videomme/test-00000-of-00001.parquet` -> one record per row.

Format facts relied on (/work/shared/notes/benchmarks.md section 5 and (c); the Video-MME README and
lmms-eval `tasks/videomme`):
  - columns `video_id` ("001"), `duration` (a category: short / medium / long), `domain`,
    `sub_category`, `url`, `videoID` (the YouTube id, which names the video file), `question_id`
    ("001-1"; 3 per video), `task_type`, `question`, `options` (a list, already lettered "A. ..."),
    `answer` (a letter).
  - the video is `<videoID>.mp4` (some are .MP4 / .mkv), looked for anywhere under the video folder
    (lmms-eval: `videomme/data/<videoID>.mp4`).

The prompt is the official one without subtitles (the Video-MME README, "Without subtitles"): the
instruction, the question, the options one per line, then "The best answer is:". Ids: `question_id`.
"""

from __future__ import annotations

import re
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, require

SOURCE = "videomme"
INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
DURATIONS = ("short", "medium", "long")
OPTION = re.compile(r"^([A-Z])\.")


def prompt_text(question: str, options: list[str]) -> str:
    return "\n".join([INSTRUCTION, question, *options, "The best answer is:"])


def lettered_options(raw: Any, field: str = "options") -> list[str]:
    """A list of at least 2 strings starting "A.", "B.", ... in order (FieldError naming the bad one)."""
    if not isinstance(raw, list) or len(raw) < 2:
        raise FieldError(field, f"expected a list of at least 2 options, got {raw!r}")
    for k, option in enumerate(raw):
        expected = chr(ord("A") + k)
        match = OPTION.match(option) if isinstance(option, str) else None
        if match is None or match.group(1) != expected:
            raise FieldError(f"{field}[{k}]", f"expected a string starting '{expected}.', got {option!r}")
    return list(raw)


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """One parquet row -> one multiple-choice record."""
    fields = {
        name: require(raw, name, str)
        for name in (
            "video_id",
            "duration",
            "domain",
            "sub_category",
            "videoID",
            "question_id",
            "task_type",
            "question",
            "answer",
        )
    }
    if fields["duration"] not in DURATIONS:
        raise FieldError("duration", f"expected one of {', '.join(DURATIONS)}, got {fields['duration']!r}")
    options = lettered_options(raw.get("options"))
    letters = [chr(ord("A") + k) for k in range(len(options))]
    if fields["answer"] not in letters:
        raise FieldError("answer", f"{fields['answer']!r} is not one of {', '.join(letters)}")
    try:
        video_path = ctx.find_video(fields["videoID"])
    except FieldError as exc:
        raise FieldError("videoID", exc.message) from None
    return [
        {
            "id": fields["question_id"],
            "task": "multiple_choice",
            "source": SOURCE,
            "video_path": video_path,
            "question": fields["question"] + "\n" + "\n".join(options),
            "options": options,
            "answer": fields["answer"],
            "prompt": {
                "system": None,
                "text": prompt_text(fields["question"], options),
                "timestamps": False,
                "images": 0,
            },
            "benchmark": {
                "answer": fields["answer"],
                "options": options,
                "duration": fields["duration"],
                "domain": fields["domain"],
                "sub_category": fields["sub_category"],
                "task_type": fields["task_type"],
                "video_id": fields["video_id"],
                "videoID": fields["videoID"],
            },
        }
    ]
