"""Rule judge: deterministic, offline feedback of the same kind an LLM judge writes.

It reads the verifier's parse of the completion and of the reference answer, scores the final answer
(option letter, temporal IoU, box IoU, number, token overlap), checks that the reasoning's times and boxes
agree with the answer and with the hidden evidence, and names ONE cause out of four:

    wrong_focus          the reasoning looked at the wrong time window or object
    too_little_evidence  no grounded claims, or reasoning too thin for the specific answer
    answer_drift         the reasoning was on track but the final answer moved away from it
    incomplete           no <answer> block (probably truncated)

The feedback is two to four sentences. Everything is pure Python over precompiled regexes (>= 1000
judgments per second; see bench/judge.py).
"""

from __future__ import annotations

import inspect
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from visd_exp.judge.base import JudgeItem, JudgeMetrics, evidence_from_sample
from visd_exp.metrics import box_iou, temporal_iou
from visd_exp.rewards.parsing import Claim, ParsedCompletion, parse_completion

CAUSES = ("wrong_focus", "too_little_evidence", "answer_drift", "incomplete")

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an the of to in on at and or is are was were be it its this that with for by as".split()
)
# A letter the reasoning commits to ("the answer is B", "choose (C)"); bare "option B" mentions are
# ignored because reasoning often walks through the options it rejects.
_LEAN_RE = re.compile(
    r"(?i:answer|correct\s+(?:option|choice)|choose|pick|select)(?:\s+is|\s+should\s+be)?\s*[:：]?\s*"
    r"[\(\[]?([A-H])(?![A-Za-z])"
)
_TASK_ALIASES = {
    "tg": "temporal_grounding",
    "stg": "spatio_temporal_grounding",
    "mc": "multiple_choice",
    "multiple-choice": "multiple_choice",
    "open_ended": "free_form",
    "ocr": "free_form",
    "numeric": "numerical",
}


@dataclass(frozen=True)
class Diagnosis:
    """The rule judge's structured verdict; ``feedback`` is what the teacher reads."""

    verdict: str  # "correct" | "partly" | "wrong" | "missing"
    cause: str | None  # one of CAUSES, None when fully correct
    sentences: tuple[str, ...]

    @property
    def feedback(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class _Evidence:
    segment: tuple[float, float] | None
    frames: tuple[tuple[float, tuple[tuple[str, tuple], ...]], ...]  # (time, ((name, boxes), ...))

    @property
    def has_boxes(self) -> bool:
        return any(objs for _, objs in self.frames)


def _evidence(item: JudgeItem) -> _Evidence:
    ev = item.evidence
    if ev is None and item.sample is not None:
        ev = evidence_from_sample(item.sample)
    if not ev:
        return _Evidence(None, ())
    seg = ev.get("segment")
    segment = (float(seg[0]), float(seg[1])) if seg else None
    frames = []
    for kf in ev.get("key_frames") or ():
        objs = tuple(
            (str(n), tuple(tuple(b) for b in boxes)) for n, boxes in (kf.get("objects") or {}).items()
        )
        frames.append((float(kf["time"]), objs))
    return _Evidence(segment, tuple(frames))


@lru_cache(maxsize=4096)
def _parse_reference(standard_answer: str) -> ParsedCompletion:
    # The four rollouts of a group share one reference: parse it once.
    return parse_completion(f"<answer>{standard_answer}</answer>")


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN_RE.findall(text.lower()) if t not in _STOPWORDS]


def _f1(pred: list[str], ref: list[str]) -> float:
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def _same_name(a: str, b: str) -> bool:
    a, b = a.strip().lower(), b.strip().lower()
    return bool(a) and bool(b) and (a == b or a in b or b in a)


def _best_iou(boxes_a: Sequence, boxes_b: Sequence) -> float:
    return max((box_iou(a, b) for a in boxes_a for b in boxes_b), default=0.0)


def _fmt_span(seg: Sequence[float]) -> str:
    return f"[{seg[0]:.1f}, {seg[1]:.1f}] s"


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return f'"{text[: limit - 3]}..."' if len(text) > limit else f'"{text}"'


_LEVEL = {"correct": "fully correct", "partly": "only partly correct", "wrong": "wrong"}


class RuleJudge:
    """Deterministic judge built on the verifier's parser (``judge=rule``)."""

    def __init__(
        self,
        tau: float = 1.0,
        tiou_full: float = 0.7,
        tiou_partial: float = 0.3,
        box_full: float = 0.5,
        box_partial: float = 0.3,
        text_full: float = 0.6,
        text_partial: float = 0.3,
        number_full: float = 0.01,
        number_partial: float = 0.1,
    ) -> None:
        self.tau = tau  # seconds: a cited time counts as "at" a key frame / inside a span within tau
        self.tiou = (tiou_full, tiou_partial)
        self.box = (box_full, box_partial)
        self.text = (text_full, text_partial)
        self.number = (number_full, number_partial)  # relative error thresholds
        self._metrics = JudgeMetrics()

    def __repr__(self) -> str:
        return f"RuleJudge(tau={self.tau}, tiou={self.tiou}, box={self.box}, text={self.text})"

    # -- Judge protocol ------------------------------------------------------------------------------

    def judge_batch(self, items: Sequence[JudgeItem]) -> list[str | None]:
        out: list[str | None] = []
        for item in items:
            t0 = time.perf_counter()
            try:
                out.append(self.diagnose(item).feedback)
            except Exception:  # a judge must never break a training step; the teacher gets no feedback
                out.append(None)
                self._metrics.add(fallbacks=1)
            self._metrics.add_latency(time.perf_counter() - t0)
        self._metrics.add(items=len(items), calls=len(items))
        return out

    def pop_metrics(self) -> dict[str, float]:
        return self._metrics.pop()

    def close(self) -> None:
        pass

    # -- diagnosis -------------------------------------------------------------------------------------

    def diagnose(self, item: JudgeItem) -> Diagnosis:
        """The verdict, the cause and the feedback sentences for one rollout."""
        parsed = parse_completion(item.completion)
        ref = _parse_reference(item.standard_answer.strip())
        task = self._task(item.task, ref)
        ev = self._with_reference(_evidence(item), ref)
        ground = self._reasoning_grounding(parsed, ev)

        if parsed.answer is None:
            if parsed.think is None and "<think>" in item.completion:
                # Truncated inside <think>: close it so the cited times and boxes can still be checked.
                ground = self._reasoning_grounding(parse_completion(item.completion + "</think>"), ev)
            return self._incomplete(ground)

        verdict, verdict_sentence, drift_hint = self._score_answer(task, parsed, ref, item, ev)
        consistency = self._consistency(task, parsed)
        if verdict == "correct":
            if len((parsed.think or "").split()) < 8:
                support = "The reasoning is too thin to show why it is correct; it should cite its evidence."
            elif ground["good"]:
                support = f"The reasoning broadly supports it, and its grounded claims agree with the evidence ({ground['detail']})."
            else:
                support = "The reasoning broadly supports it."
            sentences = [verdict_sentence, support] + ([consistency] if consistency else [])
            return Diagnosis("correct", None, tuple(sentences))

        cause, cause_sentence = self._cause(task, parsed, ground, drift_hint, consistency)
        sentences = [verdict_sentence] + ([consistency] if consistency else []) + [cause_sentence]
        return Diagnosis(verdict, cause, tuple(sentences))

    @staticmethod
    def _with_reference(ev: _Evidence, ref: ParsedCompletion) -> _Evidence:
        # The reference answer is ground truth too: its span and boxes stand in for missing evidence.
        segment = ev.segment if ev.segment is not None else ref.answer_segment
        frames = ev.frames
        if not ev.has_boxes and ref.answer_claims:
            frames = tuple(
                (c.time, ((c.name, c.boxes),)) for c in ref.answer_claims if c.time is not None and c.boxes
            )
            frames = frames or ev.frames
        return _Evidence(segment, frames)

    @staticmethod
    def _task(task: str, ref: ParsedCompletion) -> str:
        task = _TASK_ALIASES.get(task.strip().lower(), task.strip().lower())
        if task in ("temporal_grounding", "spatio_temporal_grounding", "multiple_choice", "free_form"):
            return task
        if task in ("numerical", "regression"):
            return "numerical"
        # Unknown task name: infer the answer type from the reference itself.
        if ref.answer_claims:
            return "spatio_temporal_grounding"
        if ref.answer_segment is not None:
            return "temporal_grounding"
        if ref.answer is not None and len(ref.answer.strip().rstrip(".")) == 1 and ref.answer_choice:
            return "multiple_choice"
        return "numerical" if ref.answer_number is not None else "free_form"

    # -- the final answer ------------------------------------------------------------------------------

    def _level(self, score: float, thresholds: tuple[float, float]) -> str:
        return "correct" if score >= thresholds[0] else "partly" if score >= thresholds[1] else "wrong"

    def _score_answer(
        self, task: str, parsed: ParsedCompletion, ref: ParsedCompletion, item: JudgeItem, ev: _Evidence
    ) -> tuple[str, str, bool]:
        """(verdict, sentence, drift_hint); drift_hint = the reasoning itself pointed at the reference."""
        answer = parsed.answer or ""
        think = parsed.think or ""
        if task == "multiple_choice":
            gold = ref.answer_choice or item.standard_answer.strip()[:1].upper()
            got = parsed.answer_choice
            if got is None:
                return (
                    "wrong",
                    f"The final answer {_quote(answer)} names no option letter; the reference option is {gold}.",
                    False,
                )
            if got == gold:
                return (
                    "correct",
                    f"The final answer {got} is the reference option, so it is fully correct.",
                    False,
                )
            leans = _LEAN_RE.findall(think)
            return (
                "wrong",
                f"The final answer {got} is wrong; the reference option is {gold}.",
                bool(leans) and leans[-1] == gold,
            )

        if task == "temporal_grounding":
            gold = ref.answer_segment or ev.segment
            seg = parsed.answer_segment
            if gold is None:
                return self._free_form(answer, think, item.standard_answer)
            if seg is None:
                return (
                    "wrong",
                    f"The final answer gives no parseable time span; the reference span is {_fmt_span(gold)}.",
                    False,
                )
            iou = temporal_iou(seg, gold)
            level = self._level(iou, self.tiou)
            sentence = (
                f"The answered span {_fmt_span(seg)} overlaps the reference {_fmt_span(gold)} with temporal IoU "
                f"{iou:.2f}, so the answer is {_LEVEL[level]}."
            )
            return level, sentence, False

        if task == "spatio_temporal_grounding":
            gold_claims = ref.answer_claims or tuple(
                Claim(name, boxes, t) for t, objs in ev.frames for name, boxes in objs
            )
            if not gold_claims:
                return self._free_form(answer, think, item.standard_answer)
            if not any(c.boxes for c in parsed.answer_claims):
                return "wrong", "The final answer contains no grounded object boxes, so it is wrong.", False
            miou = sum(self._match(g, parsed.answer_claims) for g in gold_claims) / len(gold_claims)
            level = self._level(miou, self.box)
            sentence = f"The answered boxes reach a mean IoU of {miou:.2f} with the reference boxes"
            gold_seg = ref.answer_segment or ev.segment
            if parsed.answer_segment is not None and gold_seg is not None:
                sentence += f" (the answered span has temporal IoU {temporal_iou(parsed.answer_segment, gold_seg):.2f})"
            return level, sentence + f", so the answer is {_LEVEL[level]}.", False

        if task == "numerical" and ref.answer_number is not None:
            gold_n, got_n = ref.answer_number, parsed.answer_number
            if got_n is None:
                return (
                    "wrong",
                    f"The final answer {_quote(answer)} is not a number; the reference is {gold_n:g}.",
                    False,
                )
            rel = abs(got_n - gold_n) / max(abs(gold_n), 1e-9)
            level = "correct" if rel <= self.number[0] else "partly" if rel <= self.number[1] else "wrong"
            drift = level != "correct" and any(
                abs(v - gold_n) <= self.number[0] * max(abs(gold_n), 1e-9)
                for v in (float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", think))
            )
            return (
                level,
                f"The final answer {got_n:g} against the reference {gold_n:g} is {_LEVEL[level]}.",
                drift,
            )

        return self._free_form(answer, think, item.standard_answer)

    def _free_form(self, answer: str, think: str, reference: str) -> tuple[str, str, bool]:
        ref_tokens = _tokens(reference)
        if not ref_tokens:
            return "wrong", "The reference answer is empty, so the final answer cannot be checked.", False
        f1 = _f1(_tokens(answer), ref_tokens)
        level = self._level(f1, self.text)
        sentence = (
            f"The final answer {_quote(answer, 60)} shares little wording with the reference {_quote(reference, 60)}"
            if level == "wrong"
            else f"The final answer {_quote(answer, 60)} overlaps the reference {_quote(reference, 60)}"
        )
        sentence += f" (token F1 {f1:.2f}), so it looks {_LEVEL[level]}."
        think_tokens = set(_tokens(think))
        recall = sum(t in think_tokens for t in ref_tokens) / len(ref_tokens)
        return level, sentence, level != "correct" and len(ref_tokens) >= 2 and recall >= self.text[0]

    def _match(self, gold: Claim, claims: Sequence[Claim]) -> float:
        """Best IoU of any claim for the gold claim: same object name when one exists, near in time."""
        named = [c for c in claims if _same_name(c.name, gold.name)] or list(claims)
        timed = [
            c for c in named if c.time is None or gold.time is None or abs(c.time - gold.time) <= self.tau
        ] or named
        return max((_best_iou(c.boxes, gold.boxes) for c in timed), default=0.0)

    # -- the reasoning ---------------------------------------------------------------------------------

    def _reasoning_grounding(self, parsed: ParsedCompletion, ev: _Evidence) -> dict:
        """How well the think block's times and boxes agree with the hidden evidence."""
        times = parsed.think_times
        claims = [c for c in parsed.think_claims if c.boxes]
        out: dict = {"n_times": len(times), "n_claims": len(claims), "time_frac": None, "box_iou": None}
        parts = []
        if times and (ev.segment is not None or ev.frames):
            if ev.segment is not None:
                s, e = ev.segment
                hits = sum(s - self.tau <= t <= e + self.tau for t in times)
                where = f"inside the evidence window {_fmt_span(ev.segment)}"
            else:
                hits = sum(any(abs(t - ft) <= self.tau for ft, _ in ev.frames) for t in times)
                where = "near a key frame"
            out["time_frac"] = hits / len(times)
            noun = "cited time" if len(times) == 1 else "cited times"
            parts.append(f"{hits} of {len(times)} {noun} {'falls' if hits == 1 else 'fall'} {where}")
        if claims and ev.has_boxes:
            out["box_iou"] = sum(self._claim_vs_frames(c, ev) for c in claims) / len(claims)
            parts.append(
                f"its boxed claims ({len(claims)}) reach mean IoU {out['box_iou']:.2f} with the key frames"
            )
        out["detail"] = " and ".join(parts)
        scores = [v >= 0.5 for v in (out["time_frac"], out["box_iou"]) if v is not None]
        out["good"] = bool(scores) and all(scores)
        out["bad"] = bool(scores) and not any(scores)
        return out

    def _claim_vs_frames(self, claim: Claim, ev: _Evidence) -> float:
        # A claim is checked against key frames within tau of its time (all frames when it has no time);
        # a claim far from every key frame scores 0, like the verifier's thinking-spatial reward.
        frames = [objs for t, objs in ev.frames if claim.time is None or abs(t - claim.time) <= self.tau]
        objs = [o for f in frames for o in f]
        named = [boxes for name, boxes in objs if _same_name(name, claim.name)] or [b for _, b in objs]
        return max((_best_iou(claim.boxes, boxes) for boxes in named), default=0.0)

    def _consistency(self, task: str, parsed: ParsedCompletion) -> str | None:
        """One sentence when the reasoning and the final answer disagree, else None."""
        think = parsed.think or ""
        if task == "multiple_choice" and parsed.answer_choice:
            leans = _LEAN_RE.findall(think)
            if leans and leans[-1] != parsed.answer_choice:
                return f"The reasoning settles on option {leans[-1]} but the final answer says {parsed.answer_choice}."
            return None
        seg = parsed.answer_segment
        if seg is not None and parsed.think_times:
            lo, hi = min(seg), max(seg)
            outside = [t for t in parsed.think_times if not lo - self.tau <= t <= hi + self.tau]
            if len(outside) * 2 >= len(parsed.think_times):
                shown = ", ".join(f"{t:.1f}" for t in outside[:3])
                return (
                    f"{len(outside)} of {len(parsed.think_times)} times cited in the reasoning ({shown} s) "
                    f"{'falls' if len(outside) == 1 else 'fall'} outside the answered span, so the reasoning does "
                    f"not back it."
                )
        if task == "spatio_temporal_grounding" and parsed.think_claims:
            far = []
            for claim in parsed.answer_claims:
                mates = [c for c in parsed.think_claims if c.boxes and _same_name(c.name, claim.name)]
                if claim.boxes and mates:
                    iou = max(_best_iou(claim.boxes, m.boxes) for m in mates)
                    if iou < 0.1:
                        far.append((claim.name, iou))
            if far:
                name, iou = far[0]
                return (
                    f"The answer's box for {name or 'the object'} is far from the boxes the reasoning cites for it "
                    f"(IoU {iou:.2f})."
                )
        return None

    # -- the cause -------------------------------------------------------------------------------------

    def _cause(
        self, task: str, parsed: ParsedCompletion, ground: dict, drift_hint: bool, consistency: str | None
    ) -> tuple[str, str]:
        grounded_task = task in ("temporal_grounding", "spatio_temporal_grounding")
        no_claims = ground["n_times"] == 0 and ground["n_claims"] == 0
        thin = len((parsed.think or "").split()) < 8
        if drift_hint or (ground["good"] and not thin):
            detail = f" ({ground['detail']})" if ground["detail"] else ""
            return "answer_drift", (
                f"Main cause: the reasoning was mostly on the right track{detail}, but the final answer "
                f"drifted away from it; the answer should state what the reasoning found."
            )
        if thin or (no_claims and grounded_task):
            what = (
                "no reasoning at all"
                if not (parsed.think or "").strip()
                else (
                    "no grounded time stamps or object boxes"
                    if no_claims
                    else "only a few words of reasoning"
                )
            )
            return "too_little_evidence", (
                f"Main cause: too little evidence, the response offers {what} to justify such a specific answer; "
                f"it should cite the moments and objects it relies on."
            )
        if ground["bad"] or grounded_task:
            if ground["box_iou"] is not None and (ground["time_frac"] is None or ground["time_frac"] >= 0.5):
                return "wrong_focus", (
                    f"Main cause: the object is mislocalised, the boxes cited in the reasoning reach only mean IoU "
                    f"{ground['box_iou']:.2f} with the key-frame boxes of the named object."
                )
            if ground["time_frac"] is not None:
                return "wrong_focus", (
                    f"Main cause: the reasoning looked at the wrong time window: {ground['detail']}."
                )
            return "wrong_focus", (
                "Main cause: the reasoning focused on the wrong moment or object for this question."
            )
        if consistency:
            return "answer_drift", (
                "Main cause: the final answer contradicts the reasoning that precedes it; it should follow "
                "from what the reasoning established."
            )
        return "too_little_evidence", (
            "Main cause: the reasoning stays too general, it does not point to evidence that singles out the "
            "reference answer."
        )

    def _incomplete(self, ground: dict) -> Diagnosis:
        sentences = [
            "No final answer was produced: the output has no <answer>...</answer> block and was probably cut "
            "off because the reasoning ran too long.",
        ]
        if ground["detail"]:
            sentences.append(f"Before it stopped, the reasoning was grounded as follows: {ground['detail']}.")
        elif ground["n_times"] or ground["n_claims"]:
            sentences.append(
                f"Before it stopped, the reasoning cited {ground['n_claims']} grounded boxes and "
                f"{ground['n_times']} time stamps."
            )
        sentences.append(
            "Main cause: the response is incomplete; the reasoning should be shorter and end with a final answer."
        )
        return Diagnosis("missing", "incomplete", tuple(sentences))


def build_rule_judge(options: Mapping) -> RuleJudge:
    """A RuleJudge from the ``judge`` config node (``name`` and ``defaults`` ignored)."""
    known = set(inspect.signature(RuleJudge).parameters)
    opts = {k: v for k, v in options.items() if k not in ("name", "defaults")}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"unknown rule-judge options {unknown}; known: {sorted(known)}")
    return RuleJudge(**opts)
