"""Reading a judge request written by any client: the Appendix G.2 user prompt, or the paraphrase template.

G.2 messages are read by their field labels, not by an exact template, so a client written from the
paper (different system prompt, spacing, evidence JSON layout, extra lines) is understood too:

    - Task type: ...            required, non-empty
    - Question: ...             optional
    - Standard answer: ...      required, non-empty
    - Keyframe object evidence: JSON or null (optional)
    - Student final answer: ... optional; null / "null (no <answer> tag found)" = none
    - Student full output: ...  required (may be empty), up to the last "## Required Output" line

A value runs from its label to the next label or section header ("## ..." of G.2, or the hidden-reference
line). Anything that cannot be read raises ``ProtocolError`` naming the missing label or the bad field.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence

from visd_exp.judge.base import JudgeItem
from visd_exp.judge.prompts import extract_final_answer, parse_user_message

#: (field, label) of the G.2 user prompt, in its order
G2_FIELDS = (
    ("task", "- Task type:"),
    ("question", "- Question:"),
    ("standard_answer", "- Standard answer:"),
    ("evidence", "- Keyframe object evidence:"),
    ("final_answer", "- Student final answer:"),
    ("student_output", "- Student full output:"),
)
G2_REQUIRED = ("task", "standard_answer", "student_output")
G2_SECTIONS = ("## Task And Reference Context", "## Student Submission", "## Required Output")
_HIDDEN_LINE = "- Keyframe object evidence is hidden grounding reference"
_LABEL = dict(G2_FIELDS)
_NULLS = ("", "null", "none", "n/a")


class ProtocolError(ValueError):
    """A judge request that cannot be read; the message says what is missing or malformed."""


def _line_re(text: str) -> re.Pattern:
    return re.compile(rf"^[ \t]*{re.escape(text)}[ \t]*", re.MULTILINE)


_FIELD_RES = {name: _line_re(label) for name, label in G2_FIELDS}
_STOP_RE = re.compile("|".join(rf"^[ \t]*{re.escape(h)}" for h in (*G2_SECTIONS, _HIDDEN_LINE)), re.MULTILINE)
_REQUIRED_OUTPUT_RE = re.compile(rf"^[ \t]*{re.escape(G2_SECTIONS[-1])}[ \t]*$", re.MULTILINE)


def parse_g2(text: str) -> dict[str, str]:
    """The field values of a G.2 user message (stripped); absent optional fields are left out."""
    found = {name: m for name, rx in _FIELD_RES.items() if (m := rx.search(text))}
    missing = [_LABEL[name] for name in G2_REQUIRED if name not in found]
    if missing:
        raise ProtocolError(
            f"the user message is not an Appendix G.2 judge prompt: missing the line(s) {missing}"
        )
    order = sorted(found, key=lambda name: found[name].start())
    fields = {}
    for i, name in enumerate(order):
        start = found[name].end()
        end = found[order[i + 1]].start() if i + 1 < len(order) else len(text)
        value = text[start:end]
        if name == "student_output":
            # The student output may contain anything; only the last "## Required Output" closes it.
            tails = list(_REQUIRED_OUTPUT_RE.finditer(value))
            value = value[: tails[-1].start()] if tails else value
        else:
            stop = _STOP_RE.search(value)
            value = value[: stop.start()] if stop else value
        fields[name] = value.strip()
    for name in ("task", "standard_answer"):
        if not fields[name]:
            raise ProtocolError(f"the field {_LABEL[name]!r} of the user message is empty")
    return fields


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"Keyframe object evidence: {where} must be a finite number, got {value!r}")
    return float(value)


def _numbers(value, n: int, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ProtocolError(f"Keyframe object evidence: {where} must be a list of {n} numbers, got {value!r}")
    return [_number(v, where) for v in value]


def _frame(frame, where: str) -> dict:
    if not isinstance(frame, Mapping) or "time" not in frame:
        raise ProtocolError(f"Keyframe object evidence: {where} must be an object with a 'time'")
    objects = frame.get("objects") or {}
    if not isinstance(objects, Mapping):
        raise ProtocolError(f"Keyframe object evidence: {where}.objects must map names to box lists")
    boxes = {}
    for name, value in objects.items():
        where_boxes = f"{where}.objects[{name!r}]"
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(f"Keyframe object evidence: {where_boxes} must be a list of boxes")
        if value and not isinstance(value[0], (list, tuple)):
            value = [value]  # one box written without the outer list
        boxes[str(name)] = [_numbers(b, 4, where_boxes) for b in value]
    return {"time": _number(frame["time"], f"{where}.time"), "objects": boxes}


def parse_evidence(text: str | None) -> dict | None:
    """The evidence value as the judge's evidence dict ({"segment", "key_frames"}), or None for null.

    Accepts JSON (or a Python literal) of {"segment": [s, e] | null, "key_frames": [{"time": t,
    "objects": {name: [[x1, y1, x2, y2], ...]}}]}, or just the list of key frames.
    """
    if text is None or text.strip().lower() in _NULLS:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ProtocolError(
                f"Keyframe object evidence is neither JSON nor null: {text.strip()[:80]!r}"
            ) from None
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = {"key_frames": value}
    if not isinstance(value, Mapping) or not ({"segment", "key_frames"} & set(value)):
        raise ProtocolError(
            "Keyframe object evidence must be null, a list of key frames, or an object with 'segment' "
            "and/or 'key_frames'"
        )
    segment = value.get("segment")
    segment = None if segment is None else _numbers(segment, 2, "segment")
    frames = value.get("key_frames") or []
    if not isinstance(frames, (list, tuple)):
        raise ProtocolError("Keyframe object evidence: key_frames must be a list")
    key_frames = [_frame(f, f"key_frames[{i}]") for i, f in enumerate(frames)]
    return {"segment": segment, "key_frames": key_frames} if segment or key_frames else None


def item_from_fields(fields: Mapping[str, str]) -> JudgeItem:
    """A JudgeItem from G.2 (or paraphrase) field values.

    When the full output has no <answer> block but the client sent a final answer, that answer is
    judged as the student's final answer.
    """
    completion = fields.get("student_output", "")
    final = (fields.get("final_answer") or "").strip()
    if final.lower() in _NULLS or final.lower().startswith("null ("):
        final = ""
    if final and extract_final_answer(completion) is None:
        completion = f"{completion}\n<answer>{final}</answer>"
    return JudgeItem(
        task=fields.get("task", "").strip(),
        question=fields.get("question", ""),
        standard_answer=fields.get("standard_answer", ""),
        evidence=parse_evidence(fields.get("evidence")),
        completion=completion,
    )


def user_text(body: object) -> str:
    """The text of the last user message of a chat-completions request body."""
    if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
        raise ProtocolError("the request body has no 'messages' list")
    users = [m for m in body["messages"] if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise ProtocolError("the request has no message with role 'user'")
    content = users[-1].get("content")
    if isinstance(content, list):  # OpenAI content parts
        content = "\n".join(
            p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    if not isinstance(content, str) or not content.strip():
        raise ProtocolError("the user message has no text")
    return content


def read_request(body: object, user_templates: Sequence[str] = ()) -> JudgeItem:
    """The item a chat-completions request asks to judge: G.2 first, then each exact user template.

    ``user_templates`` are template texts (e.g. the paraphrase template) tried when the message is
    not G.2. Raises ProtocolError explaining what is missing when nothing reads it.
    """
    text = user_text(body)
    try:
        return item_from_fields(parse_g2(text))
    except ProtocolError as g2_error:
        for template in user_templates:
            try:
                fields = parse_user_message(text, template)
            except ValueError:
                continue
            return item_from_fields(fields)
        if user_templates:
            raise ProtocolError(f"{g2_error} (nor does it follow the paraphrase user template)") from None
        raise
