"""FFR's frozen teacher (Eq. 5): an error type and a minimal evidence patch for a FAILED rollout; every
patch then goes through the leak check (ffr_patch.py).

    RuleTeacher   offline, deterministic: the error type from the rollout's reward components, the patch
                  from the record's evidence (segment, key frames and their boxes), coarsened so that it
                  points at WHERE to look without saying WHAT is there
    HttpTeacher   an OpenAI-compatible chat model (GLM-4.5V in the paper) over the judge's HTTP client
                  (judge/http.py: connection pool, retries, keys from the environment only), asked for
                  {"error_type": ..., "patch": ...} under explicit no-leakage instructions

Error types follow the paper's appendix A.5: temporal (wrong moment, order or span), spatial (wrong reading
of the frame content: object, position), misconception (the question's intent misread).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from visd_exp.algorithms.ffr_patch import ERROR_TYPES, MAX_PATCH_CHARS, Diagnosis, leak_reason
from visd_exp.judge.base import JudgeItem, evidence_from_sample
from visd_exp.judge.replies import json_object
from visd_exp.metrics import temporal_iou

__all__ = ["ERROR_TYPES", "Diagnosis", "HttpTeacher", "RuleTeacher", "build_ffr_teacher", "leak_reason"]


# ------------------------------------------------------------------------------------------ rule teacher


def _duration(sample: Mapping) -> float | None:
    for key in ("video_duration", "duration"):
        value = sample.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _lowest(values: list[float]) -> float | None:
    return min(values) if values else None


class RuleTeacher:
    """Offline teacher: error type from the components, a coarse window and region from the evidence.

    Error type: the lowest of the rollout's temporal terms (ans_tmp, thk_tmp) and the lowest of its spatial
    terms (ans_spa, thk_spa), over those the task has; the lower of the two that is below `low` names the
    error (ties: temporal); none below `low` (or none present): misconception.

    Window: the evidence span (GT segment, else the key-frame times) widened by a margin on each side and
    rounded outwards to whole seconds, clamped to the video. The margin grows until the window, answered
    verbatim, would NOT count as correct (temporal IoU with the span below the correctness threshold), so
    a temporal-grounding student still has to find the interval inside it; a window that cannot be made
    that coarse (the evidence spans the whole video) is left out. Region: the part of the frame (thirds)
    holding the centre of the key-frame boxes, in words; objects, colours and counts are never named.
    Every candidate patch (most specific first) goes through `leak_reason`; the first that passes is
    returned, None when none does.
    """

    def __init__(self, threshold: float = 0.5, low: float = 0.5):
        self.threshold = min(1.0, max(1e-6, float(threshold)))
        self.low = float(low)

    def error_type(self, score: Mapping) -> str:
        temporal = _lowest([score[k] for k in ("ans_tmp", "thk_tmp") if score.get(k) is not None])
        spatial = _lowest([score[k] for k in ("ans_spa", "thk_spa") if score.get(k) is not None])
        low = [
            (v, name)
            for v, name in ((temporal, "temporal"), (spatial, "spatial"))
            if v is not None and v < self.low
        ]
        return min(low, key=lambda x: x[0])[1] if low else "misconception"

    def window(self, sample: Mapping) -> tuple[float, float] | None:
        evidence = evidence_from_sample(sample) or {}
        span = evidence.get("segment")
        if span is None:
            times = [f["time"] for f in evidence.get("key_frames") or []]
            span = [min(times), max(times)] if times else None
        if span is None:
            return None
        s, e = float(span[0]), float(span[1])
        duration = _duration(sample)
        top = math.ceil(duration) if duration is not None else math.inf
        length = max(e - s, 0.0)
        margin = max(1.0, length * (1.0 / self.threshold - 1.0) / 2.0 + 0.5)
        while True:
            lo, hi = max(0.0, math.floor(s - margin)), min(top, math.ceil(e + margin))
            verbatim = temporal_iou((lo, hi), (s, e)) if length > 0 else 0.0
            if verbatim < self.threshold and not (abs(lo - s) < 1e-6 and abs(hi - e) < 1e-6):
                return float(lo), float(hi)
            if lo <= 0.0 and hi >= top:
                return None  # the evidence fills the video: any window would be the answer
            margin += 1.0

    @staticmethod
    def frames_in(sample: Mapping, lo: float, hi: float) -> tuple[int, int] | None:
        inside = [i + 1 for i, t in enumerate(sample.get("frame_times") or []) if lo <= float(t) <= hi]
        return (inside[0], inside[-1]) if inside else None

    @staticmethod
    def region(sample: Mapping) -> str | None:
        evidence = evidence_from_sample(sample) or {}
        boxes = [b for f in evidence.get("key_frames") or [] for bs in f["objects"].values() for b in bs]
        size = sample.get("frame_size") or sample.get("image_size")
        if not boxes or not size:
            return None
        cx = sum((b[0] + b[2]) / 2 for b in boxes) / len(boxes) / float(size[0])
        cy = sum((b[1] + b[3]) / 2 for b in boxes) / len(boxes) / float(size[1])
        col = ("left", "centre", "right")[min(2, max(0, int(cx * 3)))]
        row = ("upper", "middle", "lower")[min(2, max(0, int(cy * 3)))]
        return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"

    def candidates(self, error_type: str, sample: Mapping) -> list[str]:
        """Patches for `error_type`, most specific first (window with frames, window, none)."""
        window = self.window(sample)
        spans: list[str | None] = []
        if window is not None:
            lo, hi = window
            frames = self.frames_in(sample, lo, hi)
            where = f"between {lo:g} s and {hi:g} s"
            spans += [f"{where} (frames {frames[0]}-{frames[1]})", where] if frames else [where]
        spans.append(None)
        if error_type == "spatial":
            region = self.region(sample)
            places = ([f"in the {region} part of the frame"] if region else []) + ["in the frames"]
            return [
                f"Re-locate the object the question asks about {place}"
                + (f", {span}" if span else "")
                + ", and re-read its position frame by frame before answering."
                for place in places
                for span in spans
            ]
        if error_type == "temporal":
            return [
                f"Re-examine the frames {span}: the moments the question depends on lie inside this window. "
                "Find where they begin and end yourself."
                if span
                else "Re-examine the order of the frames: find when the moments the question depends on begin "
                "and end before answering."
                for span in spans
            ]
        return [
            "Re-read the question: it asks for one specific thing in the form it requests; check each part of "
            f"your answer against what the video shows{f' {span}' if span else ''} rather than against what "
            "you expect."
            for span in spans
        ]

    def diagnose(self, sample: Mapping, score: Mapping, completion: str) -> Diagnosis | None:
        error_type = self.error_type(score)
        for patch in self.candidates(error_type, sample):
            if leak_reason(patch, sample) is None:
                return Diagnosis(error_type, patch)
        return None

    def diagnose_batch(self, samples, scores, completions) -> list[Diagnosis | None]:
        return [self.diagnose(s, sc, c) for s, sc, c in zip(samples, scores, completions)]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ HTTP teacher

SYSTEM_PROMPT = """\
You are a frozen teacher helping a student model that answered a question about a video and got it WRONG.
You see the question, the reference answer, hidden grounding evidence (a time segment, key frames with
object boxes in pixels) and the student's output. Find the student's main error and write a minimal
evidence patch: where in the video the student should look again. The student will see your patch next to
the unchanged question and answer again, so the patch must make it re-discover the evidence, not copy it.

Error types (choose one):
- temporal: the student looked at the wrong moment, got an order or a duration wrong
- spatial: the student misread the frame content: the wrong object, position or region
- misconception: the student misread what the question asks for

Never leak the answer. Forbidden in the patch:
- the answer itself, the correct option letter ("C", "(C)", "option C") or the correct option's text
- the final state, result or outcome the question asks about
- the exact start and end of the answer's time span, or a single "answer frame": give a time RANGE that is
  clearly wider than the evidence (e.g. "between 2 s and 9 s", "frames 3-8") and let the student narrow it
- names of objects, colours, counts or attributes that the question asks about; point to a region of the
  frame instead (e.g. "the upper-left part of the frame")
Blind test: if a reader who cannot see the video could infer the answer from your patch alone, make it less
specific. One to three sentences.

BAD: "There are exactly 3 people in frame 15."  GOOD: "Recount the subjects within frames 13-17."
BAD: "The answer is C, the yellow sphere."     GOOD: "Check which paths the static cylinder intersects."
BAD: "The event happens from 4.0 s to 7.0 s."   GOOD: "The event lies somewhere between 2 s and 9 s."

Reply with one JSON object only: {"error_type": "temporal" | "spatial" | "misconception", "patch": "..."}"""

USER_PROMPT = """\
Task type: {task}
Question: {question}
Reference answer (hidden from the student): {answer}
Hidden evidence: {evidence}
Frames the student saw (Frame 1, 2, ... at these seconds): {frames}
Student output:
{completion}"""


def parse_diagnosis(content: str | None) -> Diagnosis | None:
    """{"error_type", "patch"} out of a reply (strict JSON, else the first {...} object in it)."""
    obj = json_object(content)
    if not isinstance(obj, dict):
        return None
    error_type = str(obj.get("error_type", "")).strip().lower()
    patch = obj.get("patch")
    if isinstance(patch, Mapping):  # a structured patch (key frames, temporal markers, regions): as lines
        patch = "; ".join(f"{k}: {v}" for k, v in patch.items())
    if error_type not in ERROR_TYPES or not isinstance(patch, str) or not patch.strip():
        return None
    return Diagnosis(error_type, patch.strip()[:MAX_PATCH_CHARS].rstrip())


def _http_client_class():
    from visd_exp.judge.http import HttpJudge

    class TeacherClient(HttpJudge):
        """The judge's HTTP client (pool, retries, keys, errors) with the teacher's messages; its reply content
        comes back verbatim."""

        def messages(self, item: JudgeItem) -> list[dict]:
            user = USER_PROMPT.format(
                task=item.task,
                question=item.question.strip(),
                answer=item.standard_answer,
                evidence=json.dumps(item.evidence) if item.evidence else "null",
                frames=json.dumps((item.sample or {}).get("frame_times")),
                completion=item.completion.strip() or "(empty)",
            )
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

        def parse_reply(self, content: str | None) -> str | None:
            return content or None  # the reply's content as it is: the teacher parses {"error_type", "patch"}

    return TeacherClient


class HttpTeacher:
    """The OpenAI-compatible teacher: one request per failed rollout, concurrent, through the judge client.

    A reply that is not a valid {"error_type", "patch"} object, or a request that fails after the client's
    retries, gives no diagnosis (that rollout stays unpatched; counted as ffr/teacher_failed).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        max_tokens: int = 256,
        **client_kwargs,
    ):
        self.client = _http_client_class()(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            timeout=float(timeout_s),
            max_tokens=int(max_tokens),
            max_feedback_chars=100_000,  # the whole reply: the teacher parses and cuts the patch itself
            max_fallback_rate=client_kwargs.pop("max_fallback_rate", None),
            name="ffr_teacher",
            **client_kwargs,
        )

    def diagnose_batch(self, samples, scores, completions) -> list[Diagnosis | None]:
        items = [
            JudgeItem(
                task=s["task"],
                question=s["question"],
                standard_answer=str(s.get("answer")),
                evidence=evidence_from_sample(s),
                completion=c,
                sample=s,
            )
            for s, c in zip(samples, completions)
        ]
        return [parse_diagnosis(reply) for reply in self.client.judge_batch(items)] if items else []

    def close(self) -> None:
        self.client.close()


def build_ffr_teacher(cfg, threshold: float):
    """`algorithm.ffr.teacher`: kind rule (offline) | openai (any OpenAI-compatible base_url)."""
    kind = str(cfg.get("kind", "rule")).lower()
    if kind == "rule":
        return RuleTeacher(threshold)
    if kind in ("openai", "http", "vllm"):
        if not cfg.get("base_url") or not cfg.get("model"):
            raise ValueError("algorithm.ffr.teacher.kind=openai needs base_url and model")
        return HttpTeacher(
            cfg.base_url,
            cfg.model,
            cfg.get("api_key_env"),
            cfg.get("timeout_s", 60),
            cfg.get("max_tokens", 256),
        )
    raise ValueError(f"algorithm.ffr.teacher.kind={kind!r}: rule or openai")
