"""WorldSense (honglyhly/WorldSense): `worldsense_qa.json` -> one multiple-choice record per QA.

Format facts relied on (/work/shared/notes/benchmarks.md section 1; VLMEvalKit
`vlmeval/dataset/worldsense.py`, the reproduction the WorldSense README points to):
  - ONE JSON object keyed by video id; read_file hands each member in as {"vid": key, **member}.
    A member: `video_id`, `video_duration` ("60s"), `duration` (a bucket: "<1min" ... ">8min"),
    `domain`, `sub_category`, `audio_class` (a list: Speech / Event / Music), `video_caption`, and
    one object per question under every key CONTAINING "task" (`task0`, `task1`, ...), as
    VLMEvalKit selects them: {`task_domain` (Recognition / Understanding / Reasoning), `task_type`,
    `question`, `answer` (a letter), `candidates` (["A. ...", "B. ...", ...], already lettered;
    sometimes 3)}.
  - the video is `<video_id>.mp4` (VLMEvalKit: `videos/<id>.mp4`), searched for under the video
    folder as V-STaR's and Charades-STA's are; its audio track is not used (frames only).

The prompt is VLMEvalKit's without subtitles or audio: its SYS text, the frames, FRAMES_TMPL_NOSUB,
then "Question: {question}\\n{candidates, one per line}\\nAnswer: ". The frames come first here (the
project renders all text after them); VLMEvalKit sends SYS before the frames, in the same user turn.
Ids: `<video_id>/<task key>` (e.g. `dvOkwKAs/task0`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, require

SOURCE = "worldsense"
SYS = (
    "Carefully watch this video and pay attention to every detail. "
    "Based on your observations, select the best option that accurately addresses the question."
)
FRAMES_TMPL_NOSUB = (
    "\nThese are the frames of a video. "
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\n"
)
TASK_DOMAINS = ("Recognition", "Understanding", "Reasoning")
CANDIDATE = re.compile(r"^([A-Z])\.")


def looks_like(first: Any) -> bool:
    """The whole file parsed as one object whose first member is a WorldSense video entry."""
    if not isinstance(first, Mapping) or not first:
        return False
    member = next(iter(first.values()))
    return (
        isinstance(member, Mapping)
        and "video_id" in member
        and any("task" in key and isinstance(value, Mapping) for key, value in member.items())
    )


def _prompt_text(question: str, candidates: list[str]) -> str:
    return SYS + FRAMES_TMPL_NOSUB + "Question: {}\nAnswer: ".format(question + "\n" + "\n".join(candidates))


def _candidates(task: str, raw: Any) -> list[str]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise FieldError(f"{task}.candidates", f"expected a list of at least 2 options, got {raw!r}")
    for k, option in enumerate(raw):
        expected = chr(ord("A") + k)
        match = CANDIDATE.match(option) if isinstance(option, str) else None
        if match is None or match.group(1) != expected:
            raise FieldError(
                f"{task}.candidates[{k}]", f"expected a string starting '{expected}.', got {option!r}"
            )
    return list(raw)


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """One video member -> one multiple-choice record per `task*` key, in the member's order."""
    vid = require(raw, "vid", str)
    if "_value" in raw:
        raise FieldError("<record>", f"{vid}: expected a video object, got {type(raw['_value']).__name__}")
    video_id = require(raw, "video_id", str)
    bucket = require(raw, "duration", str)
    domain = require(raw, "domain", str)
    sub_category = require(raw, "sub_category", str)
    audio_class = require(raw, "audio_class", list)
    if not all(isinstance(a, str) for a in audio_class):
        raise FieldError("audio_class", f"expected a list of strings, got {audio_class!r}")
    tasks = [key for key in raw if "task" in key]
    if not tasks:
        raise FieldError("task0", f"{vid}: no question (no key containing 'task')")
    parsed = []
    for key in tasks:
        task = raw[key]
        if not isinstance(task, Mapping):
            raise FieldError(key, f"expected a question object, got {type(task).__name__}")
        fields = {}
        for name in ("task_domain", "task_type", "question", "answer"):
            try:
                fields[name] = require(task, name, str)
            except FieldError as exc:
                raise FieldError(f"{key}.{exc.field}", exc.message) from None
        if fields["task_domain"] not in TASK_DOMAINS:
            raise FieldError(
                f"{key}.task_domain",
                f"expected one of {', '.join(TASK_DOMAINS)}, got {fields['task_domain']!r}",
            )
        candidates = _candidates(key, task.get("candidates"))
        letters = [chr(ord("A") + k) for k in range(len(candidates))]
        if fields["answer"] not in letters:
            raise FieldError(f"{key}.answer", f"{fields['answer']!r} is not one of {', '.join(letters)}")
        parsed.append((key, fields, candidates))
    video_path = ctx.find_video(video_id)
    records = []
    for key, fields, candidates in parsed:
        records.append(
            {
                "id": f"{video_id}/{key}",
                "task": "multiple_choice",
                "source": SOURCE,
                "video_path": video_path,
                "question": fields["question"] + "\n" + "\n".join(candidates),
                "options": candidates,
                "answer": fields["answer"],
                "prompt": {
                    "system": None,
                    "text": _prompt_text(fields["question"], candidates),
                    "timestamps": False,
                    "images": 0,
                },
                "benchmark": {
                    "answer": fields["answer"],
                    "options": candidates,
                    "task_domain": fields["task_domain"],
                    "task_type": fields["task_type"],
                    "domain": domain,
                    "sub_category": sub_category,
                    "audio_class": list(audio_class),
                    "duration": bucket,
                    "video_id": video_id,
                },
            }
        )
    return records
