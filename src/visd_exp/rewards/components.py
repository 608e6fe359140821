"""The six verifier reward components (VISD appendix C.1, after Open-o3-Video).

Each returns a float in [0, 1], or None when the sample cannot support it (masked out of Eq. 10).
Inputs are a ParsedCompletion, the sample's GroundTruth, the RewardConfig and training progress p.
"""

from __future__ import annotations

import math
import re

from visd_exp.metrics import box_iou, temporal_iou
from visd_exp.rewards.config import RewardConfig
from visd_exp.rewards.groundtruth import GroundTruth, KeyFrame
from visd_exp.rewards.parsing import Claim, ParsedCompletion, parse_choice, parse_number

TASK_TEMPORAL = "temporal_grounding"
TASK_SPATIO_TEMPORAL = "spatio_temporal_grounding"
NUM_REL_TOL = 1e-6  # "exact" numeric match: math.isclose with these tolerances
NUM_ABS_TOL = 1e-6
ROUGE_MAX_CHARS = 8192  # predicted free-form answers are cut here before ROUGE (LCS is quadratic)
GATE_EPS = 1e-9  # float slack on the two-sided gate |t_gt - t_pred| <= tau

# --- ans: answer correctness ---------------------------------------------------------------------------

_rouge_scorer = None


def _rouge_mean_f1(pred: str, ref: str) -> float:
    """Mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 (rouge_score's default tokenizer, no stemming)."""
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score import rouge_scorer

        _rouge_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    scores = _rouge_scorer.score(ref, pred[:ROUGE_MAX_CHARS])
    return sum(s.fmeasure for s in scores.values()) / 3.0


_OPTION_PREFIX_RE = re.compile(r"\s*[\(\[]?[A-Z][\)\]\.:]\s*")
_NON_WORD_RE = re.compile(r"[^\w]+")


def _norm_text(s: str) -> str:
    return _NON_WORD_RE.sub(" ", s.lower()).strip()


def _choice_from_options(answer: str | None, options: tuple[str, ...]) -> str | None:
    """The letter of the option whose text equals the answer text ("right" -> "B" for "B. right")."""
    if not answer or not options or len(answer) > 1000:
        return None
    want = _norm_text(answer)
    for opt in options:
        m = _OPTION_PREFIX_RE.match(opt)
        if m and _norm_text(opt[m.end() :]) == want and want:
            return parse_choice(opt[: m.end()])
    return None


def ans(p: ParsedCompletion, gt: GroundTruth) -> float | None:
    """Multiple choice: exact letter; free form: mean ROUGE-1/2/L F1; numerical: exact number;
    regression (Video-R1): 1 - min(1, |pred - gt| / |gt|). Grounding tasks and unknown tasks: None."""
    task = gt.task
    if task == "multiple_choice":
        want = parse_choice(gt.answer)
        if want is None:
            return None
        got = p.answer_choice or _choice_from_options(p.answer, gt.options)
        return 1.0 if got == want else 0.0
    if task == "free_form":
        if gt.answer is None or not gt.answer.strip():
            return None
        return _rouge_mean_f1(p.answer, gt.answer) if p.answer else 0.0
    if task in ("numerical", "regression"):
        want = parse_number(gt.answer)
        if want is None:
            return None
        got = p.answer_number
        if got is None:
            return 0.0
        if task == "numerical":
            return 1.0 if math.isclose(got, want, rel_tol=NUM_REL_TOL, abs_tol=NUM_ABS_TOL) else 0.0
        if want == 0.0:  # relative error undefined: exact match only
            return 1.0 if abs(got) <= NUM_ABS_TOL else 0.0
        rel = abs(got - want) / abs(want)
        return 1.0 - min(1.0, rel) if math.isfinite(rel) else 0.0
    return None


# --- fmt: format ---------------------------------------------------------------------------------------


def fmt(p: ParsedCompletion) -> float:
    """1.0 paired and grounded (a think claim with a box or time, or a <t> in think), 0.5 paired but
    ungrounded, 0.0 malformed. Never masked."""
    if not p.well_formed:
        return 0.0
    grounded = bool(p.think_times) or any(c.boxes or c.time is not None for c in p.think_claims)
    return 1.0 if grounded else 0.5


# --- temporal components -------------------------------------------------------------------------------


def ans_tmp(p: ParsedCompletion, gt: GroundTruth) -> float | None:
    """Temporal IoU of the answered segment vs the GT segment; only for temporal_grounding."""
    if gt.task != TASK_TEMPORAL or gt.segment is None:
        return None
    return temporal_iou(p.answer_segment, gt.segment) if p.answer_segment is not None else 0.0


def thk_tmp(p: ParsedCompletion, gt: GroundTruth, cfg: RewardConfig, progress: float) -> float | None:
    """Thinking temporal reward: segment version (Eq. 11) or point version (Eq. 12)."""
    has_seg, has_pts = gt.segment is not None, bool(gt.key_times)
    if not (has_seg or has_pts):
        return None
    use_segment = has_seg and (not has_pts or cfg.thk_tmp_mode != "point")
    times = p.think_times
    if not times:
        return 0.0

    def in_video(t: float) -> bool:
        return not cfg.outside_video_zero or (t >= 0.0 and (gt.duration is None or t <= gt.duration))

    if use_segment:
        s, e = gt.segment  # type: ignore[misc]
        hits = sum(1 for t in times if in_video(t) and s <= t <= e)  # Eq. 11: 1[s* <= t_m <= e*]
        return hits / len(times)
    two_sigma_sq = 2.0 * cfg.sigma(progress) ** 2  # Eq. 12 annealed sigma_s
    total = 0.0
    for t in times:
        if in_video(t):
            d = min(abs(t - tj) for tj in gt.key_times)  # min_j |t_m - t_j*|
            total += math.exp(-(d * d) / two_sigma_sq)  # Eq. 12
    return total / len(times)


# --- spatial components --------------------------------------------------------------------------------

_STOPWORDS = frozenset({"a", "an", "the", "of", "in", "on", "at", "to", "and", "with", "is", "object"})


def _words(name: str) -> frozenset[str]:
    return frozenset(_norm_text(name).split()) - _STOPWORDS


def _words_overlap(a: frozenset[str], b: frozenset[str]) -> bool:
    """A shared word, or a word inside another one when the shorter has >= 3 letters ("box" ~ "boxes")."""
    if a & b:
        return True
    return any(len(x) >= 3 and x in y for x in a for y in b) or any(
        len(y) >= 3 and y in x for x in a for y in b
    )


def names_match(pred: str, gt: str, mode: str) -> bool:
    """none: always; strict: equal ignoring case, punctuation and spacing; soft: equal, or the names
    overlap in a (non-stop) word or a word-substring of >= 3 letters. An empty name matches only under none."""
    if mode == "none":
        return True
    a, b = _norm_text(pred), _norm_text(gt)
    if not a or not b:
        return False
    if a == b:
        return True
    return mode == "soft" and _words_overlap(_words(a), _words(b))


def _gated(t_gt: float, t_pred: float, cfg: RewardConfig) -> bool:
    if cfg.one_sided_gate:
        return t_gt - t_pred < cfg.tau  # Open-o3-Video's original one-sided gate
    return abs(t_gt - t_pred) <= cfg.tau + GATE_EPS  # Eq. 13: |t_m - t_j*| <= tau


def match_frame(t_pred: float, frames: tuple[KeyFrame, ...], cfg: RewardConfig) -> KeyFrame | None:
    """The key frame a claim at t_pred refers to: the nearest one that passes the time gate."""
    best, best_d = None, math.inf
    for kf in frames:
        d = abs(kf.time - t_pred)
        if d < best_d and _gated(kf.time, t_pred, cfg):
            best, best_d = kf, d
    return best


def claim_frame_iou(claim: Claim, frame: KeyFrame, obj: str | None, cfg: RewardConfig) -> float:
    """max over name-matched GT boxes on `frame` (only object `obj` if given) and the claim's boxes of IoU."""
    best = 0.0
    for name, gt_boxes in frame.objects:
        if (obj is not None and name != obj) or not names_match(claim.name, name, cfg.name_match):
            continue
        for gb in gt_boxes:
            for pb in claim.boxes:
                best = max(best, box_iou(pb, gb))
    return best


def thk_spa(p: ParsedCompletion, gt: GroundTruth, cfg: RewardConfig) -> float | None:
    """Thinking spatial reward (Eq. 13) over the think claims that carry boxes."""
    if not gt.key_frames:
        return None
    claims = [c for c in p.think_claims if c.boxes]
    if not claims:
        return 0.0
    total, matched = 0.0, 0
    for c in claims:
        frame = match_frame(c.time, gt.key_frames, cfg) if c.time is not None else None
        if frame is None:  # m not in I
            continue
        matched += 1
        total += claim_frame_iou(c, frame, None, cfg)  # max_{b* in B*(t_m)} IoU(b_m, b*)
    z = len(claims) if cfg.divide_by == "all" else matched  # 1/Z
    return total / z if z else 0.0


def ans_spa(p: ParsedCompletion, gt: GroundTruth, cfg: RewardConfig) -> float | None:
    """Answer spatial reward for spatio_temporal_grounding: mean over GT (key frame, object) pairs of the
    best IoU among the answer's claims whose nearest gated key frame is that frame and whose name
    matches the object. A GT pair nobody claims scores 0 (V-STAR counts a missing box as IoU 0)."""
    if gt.task != TASK_SPATIO_TEMPORAL or not gt.key_frames:
        return None
    by_frame: dict[int, list[Claim]] = {}
    for c in p.answer_claims:
        if c.boxes and c.time is not None:
            frame = match_frame(c.time, gt.key_frames, cfg)
            if frame is not None:
                by_frame.setdefault(id(frame), []).append(c)
    scores = []
    for frame in gt.key_frames:
        for name, _ in frame.objects:
            cands = by_frame.get(id(frame), ())
            scores.append(max((claim_frame_iou(c, frame, name, cfg) for c in cands), default=0.0))
    return sum(scores) / len(scores)
