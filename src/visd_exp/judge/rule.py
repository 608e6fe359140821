"""Rule judge: deterministic, offline feedback of the same kind an LLM judge writes.

It reads the verifier's parse of the completion and of the reference answer (reference.py: every task of
the task table, Open-o3-Video's reference forms included), scores the final answer (scoring.py: option
letter, temporal IoU, box IoU, number, token overlap), checks that the reasoning's times and boxes agree
with the answer and with the hidden evidence, and names ONE cause out of four:

    wrong_focus          the reasoning looked at the wrong time window or object
    too_little_evidence  no grounded claims, or reasoning too thin for the specific answer
    answer_drift         the reasoning was on track but the final answer moved away from it
    incomplete           no <answer> block (probably truncated)

The feedback is two to four sentences. Everything is pure Python over precompiled regexes (>= 1000
judgments per second; see bench/judge.py).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from visd_exp.judge.base import JudgeItem, JudgeMetrics
from visd_exp.judge.reference import (
    GROUNDED_KINDS,
    Evidence,
    answer_span,
    parse_reference,
    read_evidence,
    task_kind,
    with_reference,
)
from visd_exp.judge.scoring import LEAN_RE, Thresholds, best_iou, fmt_span, same_name, score_answer
from visd_exp.rewards.parsing import Claim, ParsedCompletion, parse_completion
from visd_exp.rewards.reading import block

CAUSES = ("wrong_focus", "too_little_evidence", "answer_drift", "incomplete")


def as_scored(completion: str) -> str:
    """The completion up to the end of its first answer block: the block the verifier scores
    (rewards/reading.py), so the judge diagnoses the answer that earned the reward, not a later one."""
    span = block(completion, "<answer>", "</answer>")
    return completion if span is None else completion[: span[1] + len("</answer>")]


@dataclass(frozen=True)
class Diagnosis:
    """The rule judge's structured verdict; ``feedback`` is what the teacher reads."""

    verdict: str  # "correct" | "partly" | "wrong" | "missing"
    cause: str | None  # one of CAUSES, None when fully correct
    sentences: tuple[str, ...]

    @property
    def feedback(self) -> str:
        return " ".join(self.sentences)


class RuleJudge:
    """Deterministic judge built on the verifier's parser (``judge=rule``)."""

    overlap = False  # local and fast (about a millisecond a step): called in the step, not beside it

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
        self.thresholds = Thresholds(tau, self.tiou, self.box, self.text, self.number)
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
        parsed = parse_completion(as_scored(item.completion))
        ref = parse_reference(item.standard_answer.strip())
        task = task_kind(item.task, ref)
        ev = with_reference(read_evidence(item.evidence, item.sample), ref)
        ground = self._reasoning_grounding(parsed, ev)

        if parsed.answer is None:
            if parsed.think is None and "<think>" in item.completion:
                # Truncated inside <think>: close it so the cited times and boxes can still be checked.
                ground = self._reasoning_grounding(parse_completion(item.completion + "</think>"), ev)
            return self._incomplete(ground)

        verdict, verdict_sentence, drift_hint = score_answer(task, parsed, ref, item, ev, self.thresholds)
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

    # -- the reasoning ---------------------------------------------------------------------------------

    def _reasoning_grounding(self, parsed: ParsedCompletion, ev: Evidence) -> dict:
        """How well the think block's times and boxes agree with the hidden evidence."""
        times = parsed.think_times
        claims = [c for c in parsed.think_claims if c.boxes]
        out: dict = {"n_times": len(times), "n_claims": len(claims), "time_frac": None, "box_iou": None}
        parts = []
        if times and (ev.segment is not None or ev.frames):
            if ev.segment is not None:
                s, e = ev.segment
                hits = sum(s - self.tau <= t <= e + self.tau for t in times)
                where = f"inside the evidence window {fmt_span(ev.segment)}"
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

    def _claim_vs_frames(self, claim: Claim, ev: Evidence) -> float:
        # A claim is checked against key frames within tau of its time (all frames when it has no time);
        # a claim far from every key frame scores 0, like the verifier's thinking-spatial reward.
        frames = [objs for t, objs in ev.frames if claim.time is None or abs(t - claim.time) <= self.tau]
        objs = [o for f in frames for o in f]
        named = [boxes for name, boxes in objs if same_name(name, claim.name)] or [b for _, b in objs]
        return max((best_iou(claim.boxes, boxes) for boxes in named), default=0.0)

    def _consistency(self, task: str, parsed: ParsedCompletion) -> str | None:
        """One sentence when the reasoning and the final answer disagree, else None."""
        think = parsed.think or ""
        if task in ("multiple_choice", "temporal_grounding_choice") and parsed.answer_choice:
            leans = LEAN_RE.findall(think)
            if leans and leans[-1] != parsed.answer_choice:
                return f"The reasoning settles on option {leans[-1]} but the final answer says {parsed.answer_choice}."
            if task == "multiple_choice":
                return None
        seg = answer_span(parsed)
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
                mates = [c for c in parsed.think_claims if c.boxes and same_name(c.name, claim.name)]
                if claim.boxes and mates:
                    iou = max(best_iou(claim.boxes, m.boxes) for m in mates)
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
        grounded_task = task in GROUNDED_KINDS
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
