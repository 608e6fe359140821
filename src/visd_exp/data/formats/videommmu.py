"""VideoMMMU (lmms-lab/VideoMMMU): the three track parquets -> one record per row.

Format facts relied on (/work/shared/notes/benchmarks.md section 2; lmms-eval `tasks/videommmu`):
  - `Perception/`, `Comprehension/`, `Adaptation/`, each `test-00000-of-00001.parquet`; the track is
    the folder (the same `id` is in all three). data_file is one track's parquet or the folder of all.
  - columns `id` ("{split}_{Subject}_{n}", Subject may hold "_"), `question`, `options` (bare texts,
    [] for open questions), `answer` (a letter, or the value of an open question), `question_type`
    ("multiple-choice" / "open"; anything else, e.g. the string "None", goes down the open path),
    `link_selected`, `qa_type`, and in Adaptation `image` = {bytes, path}.
  - the video is `<Discipline>/<id>.mp4`, the discipline from the subject as lmms-eval's
    get_cache_dir maps it; an unknown subject is an error, as there.

Prompts: lmms-eval's _default_template_yaml (HEAD, unchanged since the task was added in 74b6d95c but
for an empty mcq_post_prompt). The Adaptation image is sent as one still image after the video
frames (record["images"], a data: URI of the parquet's bytes; prompt["images"] = 1), as VLMEvalKit
and EasyVideoR1 attach it; lmms-eval passes only the video, whose last frame shows the same image.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from visd_exp.data.formats.base import FieldError, ReadContext, require

SOURCE = "videommmu"
TRACKS = ("Perception", "Comprehension", "Adaptation")
PRE_PROMPT = "You should watch and learn the video content. Then apply what you learned to "
PERCEPTION_AND_COMPREHENSION_PROMPT = "\nPlease ignore the Quiz question in last frame of the video."
MCQ_PROMPT = (
    "answer the following multi-choice question. The image for this question is at the end of the video.\n"
)
OPEN_ENDED_PROMPT = (
    "answer the following open-ended question. The image for this question is at the end of the video.\n"
)
DISCIPLINES = {
    "Art": ("Art", "Art_Theory", "Design", "Music"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Humanities": ("History", "Literature", "Sociology", "Psychology"),
    "Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
    "Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
}
DISCIPLINE_OF = {subject: d for d, subjects in DISCIPLINES.items() for subject in subjects}


def subject_of(rid: str) -> str:
    """lmms-eval's extract_subset_name: "{split}_{Subject}_{n}" -> Subject."""
    split = rid.split("_")[0]
    match = re.search(rf"^{re.escape(split)}_(.+?)_\d+$", rid)
    if match is None:
        raise FieldError("id", f"expected '{{split}}_{{Subject}}_{{n}}', got {rid!r}")
    return match.group(1)


def parse_options(options: list[str]) -> str:
    """lmms-eval's parse_options: "A. opt" lines, unless every option already starts with its letter."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if all(option.startswith(f"{letter}.") for option, letter in zip(options, letters)):
        return "\n".join(options)
    return "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options))


def prompt_text(track: str, question: str, options: list[str], question_type: str) -> str:
    if track != "Adaptation":
        return f"{question}\n{parse_options(options)}{PERCEPTION_AND_COMPREHENSION_PROMPT}"
    if question_type == "multiple-choice":
        return f"{PRE_PROMPT}{MCQ_PROMPT}{question}\n{parse_options(options)}"
    return f"{PRE_PROMPT}{OPEN_ENDED_PROMPT}{question}"


def _track(raw: Mapping, ctx: ReadContext) -> str:
    parts = PurePath(raw.get("_path") or ctx.path).parts
    for part in reversed(parts[:-1]):
        for track in TRACKS:
            if part.lower() == track.lower():
                return track
    raise FieldError(
        "<track>",
        "cannot tell the track: the parquet must lie under a Perception/, Comprehension/ or Adaptation/ "
        "folder, as published",
    )


def _image_uri(raw: Any) -> str:
    """The Adaptation image ({bytes, path}) as a data: URI, checked to decode."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("bytes"), bytes) or not raw["bytes"]:
        raise FieldError(
            "image", f"expected {{bytes, path}} with the image's bytes, got {type(raw).__name__}"
        )
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw["bytes"])) as image:
            image.load()
            kind = (image.format or "png").lower()
    except Exception as exc:  # PIL raises OSError / UnidentifiedImageError
        raise FieldError("image", f"cannot decode the image bytes ({type(exc).__name__}: {exc})") from None
    return f"data:image/{kind};base64," + base64.b64encode(raw["bytes"]).decode("ascii")


def _convert(raw: Mapping, ctx: ReadContext) -> list[dict]:
    track = _track(raw, ctx)
    rid = require(raw, "id", str)
    question = require(raw, "question", str)
    answer = require(raw, "answer", str)
    question_type = require(raw, "question_type", str)
    options = raw.get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise FieldError("options", f"expected a list of strings, got {options!r}")
    subject = subject_of(rid)
    if subject not in DISCIPLINE_OF:
        raise FieldError("id", f"subject {subject!r} of {rid!r} is not one of lmms-eval's subjects")
    mcq = question_type == "multiple-choice"
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if mcq and (len(options) < 2 or answer not in letters):
        raise FieldError("answer", f"{answer!r} is not one of the option letters {', '.join(letters)}")
    record = {
        "id": f"{track}/{rid}",
        "task": "multiple_choice" if mcq else "free_form",
        "source": SOURCE,
        "video_path": ctx.resolve(f"{DISCIPLINE_OF[subject]}/{rid}.mp4"),
        "question": question + ("\n" + parse_options(options) if mcq else ""),
        "answer": answer,
        "prompt": {
            "system": None,
            "text": prompt_text(track, question, options, question_type),
            "timestamps": False,
        },
        "benchmark": {
            "track": track,
            "answer": answer,
            "options": list(options),
            "question_type": question_type,
            "subject": subject,
            "discipline": DISCIPLINE_OF[subject],
            "qa_type": raw.get("qa_type"),
            "video_id": rid,
        },
    }
    if mcq:
        record["options"] = [f"{letter}. {option}" for letter, option in zip(letters, options)]
    if track == "Adaptation" and raw.get("image") is not None:
        record["images"] = [_image_uri(raw["image"])]
        record["prompt"]["images"] = 1
    elif track == "Adaptation":
        raise FieldError("image", "missing (every Adaptation row carries its image)")
    return [record]


def convert(raw: Any, ctx: ReadContext) -> list[dict]:
    """One parquet row -> one record; an error names the track file when a folder is read."""
    try:
        return _convert(raw, ctx)
    except FieldError as exc:
        if ctx.path.is_dir() and isinstance(raw, Mapping) and raw.get("_file"):
            raise FieldError(exc.field, f"{exc.message} (in {raw['_file']})") from None
        raise
