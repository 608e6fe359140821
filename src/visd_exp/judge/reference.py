"""What the rule judge compares a rollout against: the task kind, the reference answer, the hidden evidence.

Task names are the task table's (``visd_exp.rewards.tasks``: project names and Open-o3-Video / Video-R1
aliases such as "temporal QA (MCQ)"), matched exactly, then case-insensitively, then by the project's
older short names; an unknown name is inferred from the reference answer's shape. Reference answers
may be written the project's way ("From <t>6.0</t>s to <t>14.0</t>s") or Open-o3-Video's: a Python
literal span "[6.0, 14.0]", a temporal MCQ "C\\n[11.5, 19.0]", a visual-QA answer with one box.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from visd_exp.judge.base import box_scale, evidence_from_sample
from visd_exp.rewards.parsing import ParsedCompletion, parse_choice, parse_completion
from visd_exp.rewards.tasks import TASK_NAMES, UnknownTaskError, canonical_task

Box = tuple[float, float, float, float]

#: how the rule judge scores the final answer of each task in the task table
KIND_OF_TASK = {
    "temporal_grounding": "temporal_grounding",
    "temporal_grounding_choice": "temporal_grounding_choice",
    "spatio_temporal_qa": "spatio_temporal_qa",  # free text, grounding checked in the reasoning
    "spatio_temporal_grounding": "spatio_temporal_grounding",
    "multiple_choice": "multiple_choice",
    "free_form": "free_form",
    "visual_qa": "visual_qa",
    "numerical": "numerical",
    "regression": "numerical",
    "ocr": "free_form",
}
#: task kinds whose answers or reasoning are expected to cite times or boxes
GROUNDED_KINDS = frozenset(
    {"temporal_grounding", "temporal_grounding_choice", "spatio_temporal_grounding", "spatio_temporal_qa"}
)
# The project's older short names, still accepted.
_SHORT_NAMES = {
    "tg": "temporal_grounding",
    "stg": "spatio_temporal_grounding",
    "mc": "multiple_choice",
    "multiple-choice": "multiple_choice",
    "open_ended": "free_form",
    "numeric": "numerical",
}
_BY_LOWER = {name.lower(): name for name in TASK_NAMES}

_NUM = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_SPAN_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_BOX_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


@dataclass(frozen=True)
class Reference:
    """A reference answer, read every way the task table's tasks write one."""

    text: str
    parsed: ParsedCompletion  # the reference parsed as if it were an <answer> block
    segment: tuple[float, float] | None  # a <t> span or a literal [s, e]
    choice: str | None  # the option letter (the first line's, for "C\n[11.5, 19.0]")
    box: Box | None  # the first <box> (or literal [x1, y1, x2, y2]), in the reference's pixels


@dataclass(frozen=True)
class Evidence:
    segment: tuple[float, float] | None
    frames: tuple[tuple[float, tuple[tuple[str, tuple], ...]], ...]  # (time, ((name, boxes), ...))

    @property
    def has_boxes(self) -> bool:
        return any(objs for _, objs in self.frames)


def literal_span(text: str | None) -> tuple[float, float] | None:
    """The first "[s, e]" pair of numbers in ``text``."""
    m = _SPAN_RE.search(text or "")
    return (float(m.group(1)), float(m.group(2))) if m else None


def literal_box(text: str | None) -> Box | None:
    """The first "[x1, y1, x2, y2]" in ``text``."""
    m = _BOX_RE.search(text or "")
    return tuple(float(g) for g in m.groups()) if m else None  # type: ignore[return-value]


def answer_span(parsed: ParsedCompletion) -> tuple[float, float] | None:
    """The final answer's time span: "<t>s</t>s to <t>e</t>s", else a literal "[s, e]"."""
    return parsed.answer_segment or literal_span(parsed.answer)


def answer_box(parsed: ParsedCompletion) -> Box | None:
    """The final answer's first box: a <box> tag, else a literal "[x1, y1, x2, y2]"."""
    boxes = [b for c in parsed.answer_claims for b in c.boxes]
    return boxes[0] if boxes else literal_box(parsed.answer)


@lru_cache(maxsize=4096)
def parse_reference(standard_answer: str) -> Reference:
    # The rollouts of a group share one reference: parse it once.
    text = standard_answer.strip()
    parsed = parse_completion(f"<answer>{text}</answer>")
    first_line = text.split("\n", 1)[0].strip()
    choice = parse_choice(first_line) if "\n" in text else parsed.answer_choice
    return Reference(text, parsed, answer_span(parsed), choice, answer_box(parsed))


def task_kind(task: str, ref: Reference) -> str:
    """The scoring kind (a KIND_OF_TASK value) of a task name; inferred from the reference if unknown."""
    name = (task or "").strip()
    try:
        return KIND_OF_TASK[canonical_task(name)]
    except UnknownTaskError:
        pass
    if name.lower() in _BY_LOWER:
        return KIND_OF_TASK[canonical_task(_BY_LOWER[name.lower()])]
    if name.lower() in _SHORT_NAMES:
        return _SHORT_NAMES[name.lower()]
    if ref.parsed.answer_claims:
        return "spatio_temporal_grounding"
    if ref.segment is not None:
        return "temporal_grounding_choice" if ref.choice and "\n" in ref.text else "temporal_grounding"
    if len(ref.text.rstrip(".")) == 1 and ref.choice:
        return "multiple_choice"
    return "numerical" if ref.parsed.answer_number is not None else "free_form"


def reference_box(ref: Reference, sample: Mapping | None) -> Box | None:
    """The reference box in the pixels of the frame the student saw (scaled when the sample says how)."""
    if ref.box is None:
        return None
    sx, sy = box_scale(sample) if sample is not None else (1.0, 1.0)
    x1, y1, x2, y2 = ref.box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def read_evidence(evidence: Mapping | None, sample: Mapping | None) -> Evidence:
    """The item's evidence (or the sample's) as segment + key frames."""
    ev = evidence
    if ev is None and sample is not None:
        ev = evidence_from_sample(sample)
    if not ev:
        return Evidence(None, ())
    seg = ev.get("segment")
    segment = (float(seg[0]), float(seg[1])) if seg else None
    frames = []
    for kf in ev.get("key_frames") or ():
        objs = tuple(
            (str(n), tuple(tuple(b) for b in boxes)) for n, boxes in (kf.get("objects") or {}).items()
        )
        frames.append((float(kf["time"]), objs))
    return Evidence(segment, tuple(frames))


def with_reference(ev: Evidence, ref: Reference) -> Evidence:
    """The reference answer is ground truth too: its span and boxes stand in for missing evidence."""
    segment = ev.segment if ev.segment is not None else ref.segment
    frames = ev.frames
    if not ev.has_boxes and ref.parsed.answer_claims:
        claims = ref.parsed.answer_claims
        frames = tuple((c.time, ((c.name, c.boxes),)) for c in claims if c.time is not None and c.boxes)
        frames = frames or ev.frames
    return Evidence(segment, frames)
