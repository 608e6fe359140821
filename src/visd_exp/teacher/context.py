"""The privileged block r = (a*, e, f) written as text after the question (VISD section 3.2, Eq. 2).

Evidence boxes are in the pixel space of the frames the student saw (the judge's evidence already is).
"""

from __future__ import annotations

from collections.abc import Mapping


def _fmt(x: float) -> str:
    return f"{float(x):.1f}"


def evidence_text(evidence: Mapping | None) -> str:
    """'segment 2.0-5.0 s; at 3.0 s: red square [8,8,32,32]; ...' or 'none'."""
    if not evidence:
        return "none"
    parts = []
    if evidence.get("segment"):
        s, e = evidence["segment"]
        parts.append(f"segment {_fmt(s)}-{_fmt(e)} s")
    for frame in evidence.get("key_frames") or []:
        objects = ", ".join(
            f"{name} " + " ".join("[" + ",".join(str(round(v)) for v in box) + "]" for box in boxes)
            for name, boxes in (frame.get("objects") or {}).items()
        )
        parts.append(
            f"at {_fmt(frame['time'])} s: {objects}" if objects else f"key frame {_fmt(frame['time'])} s"
        )
    return "; ".join(parts) if parts else "none"


def privileged_block(answer: str, evidence: Mapping | None, feedback: str | None) -> str:
    """Text the teacher sees and the student does not: verified answer, evidence, judge feedback (if any)."""
    lines = [
        "Reference for grading (hidden from the student):",
        f"Verified answer: {answer}",
        f"Evidence: {evidence_text(evidence)}",
    ]
    if feedback:
        lines.append(f"Feedback on this response: {feedback.strip()}")
    return "\n".join(lines)
