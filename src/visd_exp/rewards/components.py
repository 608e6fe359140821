"""The six verifier reward components (VISD appendix C.1, Eq. 10-13; Open-o3-Video where the paper is silent).

Each takes the completion's Reading, the record's GroundTruth and the RewardConfig, and returns a float in
[0, 1], or None when the task does not support it (K(x), rewards/tasks.py) or the record lacks the
annotation it needs (masked out of Eq. 10).
"""

from __future__ import annotations

import math
import re

from visd_exp.metrics import box_iou, temporal_iou
from visd_exp.rewards import answers
from visd_exp.rewards.config import RewardConfig
from visd_exp.rewards.groundtruth import GroundTruth, KeyFrame
from visd_exp.rewards.reading import Claim, Reading, block, has_named_box

GATE_EPS = 1e-9  # float slack on the two-sided gate |t_gt - t_pred| <= tau

# --- ans: answer correctness ---------------------------------------------------------------------------


def ans(r: Reading, gt: GroundTruth, cfg: RewardConfig) -> float | None:
    kind, lenient = gt.spec.answer, cfg.parsing == "lenient"
    if kind is None or gt.answer is None:
        return None
    if kind == "choice":
        return answers.choice(r.answer, gt.letter, lenient, gt.options) if gt.letter else None
    if kind == "choice_keyed":
        return answers.choice_keyed(r.answer, gt.letter, lenient) if gt.letter else None
    if kind == "rouge":
        if not gt.answer.strip():
            return None
        return answers.rouge_mean_f1(r.answer, gt.answer.strip(), cfg.rouge_stemmer) if r.answer else 0.0
    if kind == "number":
        return answers.number(r.answer, gt.answer, lenient)
    if kind == "regression":
        return answers.regression(r.answer, gt.answer, lenient)
    if kind == "ocr":
        return answers.ocr(r.answer, gt.answer)
    raise ValueError(f"unknown answer type {kind!r}")  # the task table is closed: a bug, not bad data


# --- fmt: format ---------------------------------------------------------------------------------------


def fmt(text: str, requirement: str) -> float:
    """Open-o3-Video's tiers: 0 unless a think and an answer block exist, <think>/</think> and
    <answer>/</answer> are equally many, and <obj>, <t>, <box> are paired inside the (first) think block;
    then 1.0 if the task's grounding requirement is met (tasks.py: none | times | claims | claims_or_box),
    else 0.5 (well formed but ungrounded)."""
    think = block(text, "<think>", "</think>")
    if think is None or block(text, "<answer>", "</answer>") is None:
        return 0.0
    if text.count("<think>") != text.count("</think>") or text.count("<answer>") != text.count("</answer>"):
        return 0.0
    inner = text[think[0] : think[1]]
    n_obj, n_t, n_box = inner.count("<obj>"), inner.count("<t>"), inner.count("<box>")
    if (n_obj, n_t, n_box) != (inner.count("</obj>"), inner.count("</t>"), inner.count("</box>")):
        return 0.0  # unpaired inner tags
    if requirement == "none":
        return 1.0
    if requirement == "times":
        grounded = n_t >= 2
    else:
        grounded = n_obj > 0 and n_t > 0 and n_box > 0
        if requirement == "claims_or_box" and has_named_box(text):  # <obj>word</obj><box>[..]</box>
            grounded = True
    return 1.0 if grounded else 0.5


# --- temporal components -------------------------------------------------------------------------------


def ans_tmp(r: Reading, gt: GroundTruth) -> float | None:
    """Temporal IoU of the answered interval vs the GT interval (a reversed interval scores 0)."""
    if not gt.spec.ans_tmp or gt.segment is None:
        return None
    return temporal_iou(r.answer_segment, gt.segment) if r.answer_segment is not None else 0.0


def thk_tmp(r: Reading, gt: GroundTruth, cfg: RewardConfig, progress: float) -> float | None:
    """Thinking temporal reward: the segment version (Eq. 11) or the point version (Eq. 12), by task."""
    kind = gt.spec.thk_tmp
    if kind is None or (kind == "segment" and gt.segment is None) or (kind == "point" and not gt.key_times):
        return None
    times = r.think_times
    if not times:
        return 0.0

    def in_video(t: float) -> bool:
        return not cfg.outside_video_zero or (t >= 0.0 and (gt.duration is None or t <= gt.duration))

    if kind == "segment":
        s, e = gt.segment  # type: ignore[misc]
        hits = sum(1 for t in times if in_video(t) and s <= t <= e)  # Eq. 11: 1[s* <= t_m <= e*]
        return hits / len(times)
    two_sigma_sq = 2.0 * cfg.sigma(progress) ** 2  # Eq. 12, sigma_s annealed with training progress
    total = 0.0
    for t in times:
        if in_video(t) and math.isfinite(t):
            d = min(abs(t - tj) for tj in gt.key_times)  # min_j |t_m - t_j*|
            total += math.exp(-(d * d) / two_sigma_sq)  # Eq. 12
    return total / len(times)


# --- spatial components --------------------------------------------------------------------------------

_STOPWORDS = frozenset({"a", "an", "the", "of", "in", "on", "at", "to", "and", "with", "is", "object"})
_NON_WORD_RE = re.compile(r"[^\w]+")


def _norm(s: str) -> str:
    return _NON_WORD_RE.sub(" ", s.lower()).strip()


def _words(name: str) -> frozenset[str]:
    return frozenset(_norm(name).split()) - _STOPWORDS


def names_match(pred: str, gt: str, mode: str) -> bool:
    """none: always; strict: equal ignoring case, punctuation and spacing; soft: equal, or the names share
    a (non-stop) word, or one word contains another of >= 3 letters. An empty name matches only under none."""
    if mode == "none":
        return True
    a, b = _norm(pred), _norm(gt)
    if not a or not b:
        return False
    if a == b:
        return True
    if mode != "soft":
        return False
    wa, wb = _words(a), _words(b)
    return bool(wa & wb) or any(len(x) >= 3 and (x in y or y in x) for x in wa for y in wb)


def gated(t_gt: float, t_pred: float, cfg: RewardConfig) -> bool:
    if cfg.one_sided_gate:
        return t_gt - t_pred < cfg.tau  # Open-o3-Video's gate: any claim later than t_gt - tau passes
    return abs(t_gt - t_pred) <= cfg.tau + GATE_EPS  # Eq. 13: |t_m - t_j*| <= tau


def match_frame(t_pred: float | None, frames: tuple[KeyFrame, ...], cfg: RewardConfig) -> KeyFrame | None:
    """The key frame a claim at t_pred refers to: the nearest that passes the gate (ties: file order)."""
    if t_pred is None or not math.isfinite(t_pred):
        return None
    best, best_d = None, math.inf
    for kf in frames:
        d = abs(kf.time - t_pred)
        if gated(kf.time, t_pred, cfg) and d < best_d:
            best, best_d = kf, d
    return best


def _best_iou(gt_box, claim: Claim) -> float:
    return max((box_iou(b, gt_box) for b in claim.boxes), default=0.0)


def claim_frame_iou(claim: Claim, frame: KeyFrame, cfg: RewardConfig, obj: str | None = None) -> float:
    """A claim against a key frame's GT boxes (only object `obj` if given; names checked per cfg).

    box_match=max (Eq. 13): max over the frame's GT boxes b* and the claim's boxes of IoU.
    box_match=object_mean (Open-o3-Video): per object, the mean over its GT boxes of the best claim box;
    then the max over objects."""
    best = 0.0
    for name, gt_boxes in frame.objects:
        if (obj is not None and name != obj) or not names_match(claim.name, name, cfg.name_match):
            continue
        per_box = [_best_iou(gb, claim) for gb in gt_boxes]
        value = max(per_box) if cfg.box_match == "max" else sum(per_box) / len(per_box)
        best = max(best, value)
    return best


def thk_spa(r: Reading, gt: GroundTruth, cfg: RewardConfig) -> float | None:
    """Thinking spatial reward: Eq. 13 over the think block's claims, or (visual QA) the best think box."""
    kind = gt.spec.thk_spa
    if kind is None:
        return None
    if kind == "box":
        if gt.ref_box is None:
            return None
        if r.think is None or r.answer is None:
            return 0.0
        return max((box_iou(b, gt.ref_box) for b in r.think_boxes), default=0.0)
    if not gt.key_frames:
        return None
    if r.think is None or r.answer is None or not r.think_claims:
        return 0.0
    total, matched = 0.0, 0
    for c in r.think_claims:
        frame = match_frame(c.time, gt.key_frames, cfg)
        if frame is None:  # m not in I
            continue
        matched += 1
        total += claim_frame_iou(c, frame, cfg)  # max_{b* in B*(t_m)} IoU(b_m, b*)
    z = len(r.think_claims) if cfg.divide_by == "all" else matched  # 1/Z
    return total / z if z else 0.0


def ans_spa(r: Reading, gt: GroundTruth, cfg: RewardConfig) -> float | None:
    """Answer spatial reward. box (visual QA): IoU of the answer's first box with the reference box.
    claims (answer-with-boxes): mean over GT (key frame, object) pairs of the best IoU among the answer's
    claims gated to that frame; a pair nobody claims scores 0 (V-STaR counts a missing box as IoU 0)."""
    kind = gt.spec.ans_spa
    if kind is None:
        return None
    if kind == "box":
        if gt.ref_box is None:
            return None
        return box_iou(r.answer_box, gt.ref_box) if r.answer_box is not None else 0.0
    pairs = [(kf, name) for kf in gt.key_frames for name, _ in kf.objects]
    if not pairs:
        return None
    by_frame: dict[int, list[Claim]] = {}
    for c in r.answer_claims:
        frame = match_frame(c.time, gt.key_frames, cfg) if c.boxes else None
        if frame is not None:
            by_frame.setdefault(id(frame), []).append(c)
    scores = [
        max((claim_frame_iou(c, kf, cfg, name) for c in by_frame.get(id(kf), ())), default=0.0)
        for kf, name in pairs
    ]
    return sum(scores) / len(scores)
