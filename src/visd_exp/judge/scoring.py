"""The rule judge's verdict on a final answer, per task kind (see reference.KIND_OF_TASK).

``score_answer`` returns (verdict, sentence, drift_hint): verdict is "correct" | "partly" | "wrong", the
sentence says so and names the part that is off, and drift_hint is True when the reasoning itself
pointed at the reference (the cause is then answer drift). Also the small text and geometry helpers the
rest of the rule judge shares.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from visd_exp.judge.base import JudgeItem
from visd_exp.judge.reference import Evidence, Reference, answer_box, answer_span, reference_box
from visd_exp.metrics import box_iou, temporal_iou
from visd_exp.rewards.parsing import Claim, ParsedCompletion

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an the of to in on at and or is are was were be it its this that with for by as".split()
)
# A letter the reasoning commits to ("the answer is B", "choose (C)"); bare "option B" mentions are
# ignored because reasoning often walks through the options it rejects.
LEAN_RE = re.compile(
    r"(?i:answer|correct\s+(?:option|choice)|choose|pick|select)(?:\s+is|\s+should\s+be)?\s*[:：]?\s*"
    r"[\(\[]?([A-H])(?![A-Za-z])"
)
LEVEL = {"correct": "fully correct", "partly": "only partly correct", "wrong": "wrong"}

Verdict = tuple[str, str, bool]


@dataclass(frozen=True)
class Thresholds:
    tau: float = 1.0  # seconds: a cited time counts as "at" a key frame / inside a span within tau
    tiou: tuple[float, float] = (0.7, 0.3)  # (full, partial) temporal IoU
    box: tuple[float, float] = (0.5, 0.3)  # mean box IoU
    text: tuple[float, float] = (0.6, 0.3)  # token F1
    number: tuple[float, float] = (0.01, 0.1)  # relative error


def tokens(text: str) -> list[str]:
    return [t for t in _TOKEN_RE.findall(text.lower()) if t not in _STOPWORDS]


def f1(pred: list[str], ref: list[str]) -> float:
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def same_name(a: str, b: str) -> bool:
    a, b = a.strip().lower(), b.strip().lower()
    return bool(a) and bool(b) and (a == b or a in b or b in a)


def best_iou(boxes_a: Sequence, boxes_b: Sequence) -> float:
    return max((box_iou(a, b) for a in boxes_a for b in boxes_b), default=0.0)


def fmt_span(seg: Sequence[float]) -> str:
    return f"[{seg[0]:.1f}, {seg[1]:.1f}] s"


def quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return f'"{text[: limit - 3]}..."' if len(text) > limit else f'"{text}"'


def level(score: float, thresholds: tuple[float, float]) -> str:
    return "correct" if score >= thresholds[0] else "partly" if score >= thresholds[1] else "wrong"


def score_answer(
    kind: str, parsed: ParsedCompletion, ref: Reference, item: JudgeItem, ev: Evidence, th: Thresholds
) -> Verdict:
    answer, think = parsed.answer or "", parsed.think or ""
    if kind == "multiple_choice":
        return _choice(parsed, ref, item, think)
    if kind == "temporal_grounding_choice":
        return _span_and_choice(parsed, ref, item, ev, think, th)
    if kind == "temporal_grounding":
        gold = ref.segment or ev.segment
        return _span(parsed, gold, th) if gold is not None else free_form(answer, think, ref.text, th)
    if kind == "spatio_temporal_grounding":
        return _claims(parsed, ref, ev, th) or free_form(answer, think, ref.text, th)
    if kind == "visual_qa":
        return _box(parsed, ref, item, th) or free_form(answer, think, ref.text, th)
    if kind == "numerical" and ref.parsed.answer_number is not None:
        return _number(parsed, ref.parsed.answer_number, think, th)
    return free_form(answer, think, ref.text, th)


def _choice(parsed: ParsedCompletion, ref: Reference, item: JudgeItem, think: str) -> Verdict:
    gold = ref.choice or item.standard_answer.strip()[:1].upper()
    got = parsed.answer_choice
    if got is None:
        return (
            "wrong",
            f"The final answer {quote(parsed.answer or '')} names no option letter; the reference option is {gold}.",
            False,
        )
    if got == gold:
        return "correct", f"The final answer {got} is the reference option, so it is fully correct.", False
    leans = LEAN_RE.findall(think)
    return (
        "wrong",
        f"The final answer {got} is wrong; the reference option is {gold}.",
        bool(leans) and leans[-1] == gold,
    )


def _span(parsed: ParsedCompletion, gold: tuple[float, float], th: Thresholds) -> Verdict:
    seg = answer_span(parsed)
    if seg is None:
        return (
            "wrong",
            f"The final answer gives no parseable time span; the reference span is {fmt_span(gold)}.",
            False,
        )
    iou = temporal_iou(seg, gold)
    lvl = level(iou, th.tiou)
    sentence = (
        f"The answered span {fmt_span(seg)} overlaps the reference {fmt_span(gold)} with temporal IoU "
        f"{iou:.2f}, so the answer is {LEVEL[lvl]}."
    )
    return lvl, sentence, False


def _span_and_choice(
    parsed: ParsedCompletion, ref: Reference, item: JudgeItem, ev: Evidence, think: str, th: Thresholds
) -> Verdict:
    """Temporal MCQ ("From <t>11.5</t>s to <t>19.0</t>s.\\nCorrect Option: C"): the letter and the span."""
    got, gold = parsed.answer_choice, ref.choice or item.standard_answer.strip()[:1].upper()
    if got is None:
        letter = f"names no option letter (the reference option is {gold})"
    elif got == gold:
        letter = f"picks the reference option {got}"
    else:
        letter = f"picks option {got} but the reference option is {gold}"
    gold_span, seg = ref.segment or ev.segment, answer_span(parsed)
    if gold_span is None:
        span_level, span = "correct", ""
    elif seg is None:
        span_level, span = "wrong", f", and gives no parseable time span (reference {fmt_span(gold_span)})"
    else:
        iou = temporal_iou(seg, gold_span)
        span_level = level(iou, th.tiou)
        span = (
            f", and its span {fmt_span(seg)} overlaps the reference {fmt_span(gold_span)} with temporal IoU "
            f"{iou:.2f}"
        )
    letter_ok = got == gold
    lvl = (
        "correct"
        if letter_ok and span_level == "correct"
        else "wrong"
        if not letter_ok and span_level == "wrong"
        else "partly"
    )
    leans = LEAN_RE.findall(think)
    drift = not letter_ok and bool(leans) and leans[-1] == gold
    return lvl, f"The final answer {letter}{span}, so the answer is {LEVEL[lvl]}.", drift


def _claims(parsed: ParsedCompletion, ref: Reference, ev: Evidence, th: Thresholds) -> Verdict | None:
    gold_claims = ref.parsed.answer_claims or tuple(
        Claim(name, boxes, t) for t, objs in ev.frames for name, boxes in objs
    )
    if not gold_claims:
        return None
    if not any(c.boxes for c in parsed.answer_claims):
        return "wrong", "The final answer contains no grounded object boxes, so it is wrong.", False
    miou = sum(match(g, parsed.answer_claims, th.tau) for g in gold_claims) / len(gold_claims)
    lvl = level(miou, th.box)
    sentence = f"The answered boxes reach a mean IoU of {miou:.2f} with the reference boxes"
    gold_seg = ref.segment or ev.segment
    if parsed.answer_segment is not None and gold_seg is not None:
        sentence += (
            f" (the answered span has temporal IoU {temporal_iou(parsed.answer_segment, gold_seg):.2f})"
        )
    return lvl, sentence + f", so the answer is {LEVEL[lvl]}.", False


def _box(parsed: ParsedCompletion, ref: Reference, item: JudgeItem, th: Thresholds) -> Verdict | None:
    """Visual QA: the answer's first box against the reference box."""
    gold = reference_box(ref, item.sample)
    if gold is None:
        return None
    got = answer_box(parsed)
    if got is None:
        return "wrong", "The final answer contains no box for the object, so it is wrong.", False
    iou = box_iou(got, gold)
    lvl = level(iou, th.box)
    return (
        lvl,
        f"The answered box reaches IoU {iou:.2f} with the reference box, so the answer is {LEVEL[lvl]}.",
        False,
    )


def _number(parsed: ParsedCompletion, gold_n: float, think: str, th: Thresholds) -> Verdict:
    got_n = parsed.answer_number
    if got_n is None:
        return (
            "wrong",
            f"The final answer {quote(parsed.answer or '')} is not a number; the reference is {gold_n:g}.",
            False,
        )
    rel = abs(got_n - gold_n) / max(abs(gold_n), 1e-9)
    lvl = "correct" if rel <= th.number[0] else "partly" if rel <= th.number[1] else "wrong"
    drift = lvl != "correct" and any(
        abs(v - gold_n) <= th.number[0] * max(abs(gold_n), 1e-9)
        for v in (float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", think))
    )
    return lvl, f"The final answer {got_n:g} against the reference {gold_n:g} is {LEVEL[lvl]}.", drift


def free_form(answer: str, think: str, reference: str, th: Thresholds) -> Verdict:
    ref_tokens = tokens(reference)
    if not ref_tokens:
        return "wrong", "The reference answer is empty, so the final answer cannot be checked.", False
    score = f1(tokens(answer), ref_tokens)
    lvl = level(score, th.text)
    sentence = (
        f"The final answer {quote(answer, 60)} shares little wording with the reference {quote(reference, 60)}"
        if lvl == "wrong"
        else f"The final answer {quote(answer, 60)} overlaps the reference {quote(reference, 60)}"
    )
    sentence += f" (token F1 {score:.2f}), so it looks {LEVEL[lvl]}."
    think_tokens = set(tokens(think))
    recall = sum(t in think_tokens for t in ref_tokens) / len(ref_tokens)
    return lvl, sentence, lvl != "correct" and len(ref_tokens) >= 2 and recall >= th.text[0]


def match(gold: Claim, claims: Sequence[Claim], tau: float) -> float:
    """Best IoU of any claim for the gold claim: same object name when one exists, near in time."""
    named = [c for c in claims if same_name(c.name, gold.name)] or list(claims)
    timed = [
        c for c in named if c.time is None or gold.time is None or abs(c.time - gold.time) <= tau
    ] or named
    return max((best_iou(c.boxes, gold.boxes) for c in timed), default=0.0)
