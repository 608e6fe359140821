"""FFR's evidence patch (Eq. 5) and the leak check every patch passes before the student sees it.

Diagnosis     an error type (temporal, spatial, misconception: the paper's appendix A.5) and a minimal
              evidence patch: time ranges and regions, never the answer
leak_reason   why a patch gives the answer away (None when it does not): the correct option's letter or
              text, the answer's interval, a box on the reference box, or the answer string itself
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from visd_exp.metrics import box_iou
from visd_exp.rewards.tasks import UnknownTaskError

ERROR_TYPES = ("temporal", "spatial", "misconception")
MAX_PATCH_CHARS = 600


@dataclass(frozen=True)
class Diagnosis:
    error_type: str  # one of ERROR_TYPES
    patch: str  # the minimal evidence patch: time ranges and regions, never the answer


# ------------------------------------------------------------------------------------------ leak check

_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_BOX_RE = re.compile(
    r"[\[(]\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*[\])]"
)
_OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Z])\s*[.):]\s*")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", str(text).lower()).split())


def _has_phrase(haystack_norm: str, phrase_norm: str) -> bool:
    return bool(phrase_norm) and f" {phrase_norm} " in f" {haystack_norm} "


def _letter_leaks(patch: str, letter: str) -> bool:
    """The correct option letter used AS an option: "C", "(C)", "C)", "C.", "option C", "answer is C"."""
    if patch.strip().strip(".()").strip() == letter:
        return True
    # after a keyword the letter may be lower case, except "a" and "i" ("answer a question")
    L = re.escape(letter) if letter in ("A", "I") else f"[{letter}{letter.lower()}]"
    keyed = rf"\b(?i:(?:correct\s+)?(?:option|choice|letter|answer)(?:\s+is|\s*[:=])?)\s*\(?{L}\b"
    if re.search(keyed, patch) or re.search(rf"\(\s*{letter}\s*\)|\b{letter}\s*[.):](?!\d)", patch):
        return True
    # A bare capital letter as a word is an option reference, except "A" and "I" (ordinary English words).
    return letter not in ("A", "I") and re.search(rf"(?<![\w'-]){letter}(?![\w'-])", patch) is not None


def _option_text(options: Sequence[str], letter: str) -> str | None:
    """The correct option's text: the option written "C. text" / "(C) text", else the letter's position."""
    prefixed = [(m, o) for o in options if (m := _OPTION_PREFIX_RE.match(o))]
    if prefixed:
        return next((o[m.end() :] for m, o in prefixed if m.group(1) == letter), None)
    k = ord(letter) - ord("A")
    return options[k] if 0 <= k < len(options) else None


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBER_RE.findall(text)]


def _answer_leaks(patch_norm: str, patch: str, answer: str) -> bool:
    norm = _norm(answer)
    words = norm.split()
    if not words:
        return False
    if len(words) >= 3:
        return norm in patch_norm  # a phrase of a few words: any occurrence
    try:  # a number: only stated as a value ("is 3", "exactly 3", "count is 3"), not a frame index
        value = float(answer.strip().replace(",", ""))
    except ValueError:
        # one or two words (a colour, a name): as whole words; a lone letter is handled as an option
        return (len(norm) > 1) and _has_phrase(patch_norm, norm)
    stated = r"\b(?:is|are|was|were|equals?|exactly|total(?:\s+of)?|count(?:\s+is)?|answer(?:\s+is)?)\s*:?\s*"
    return any(
        math.isclose(float(m.group(1)), value, abs_tol=1e-9)
        for m in re.finditer(stated + r"(\d+(?:\.\d+)?)", patch, flags=re.IGNORECASE)
    )


def leak_reason(patch: str, sample: Mapping, tol: float = 0.25) -> str | None:
    """Why `patch` gives away the answer of `sample` (None: it does not).

    Rejected: the correct option letter as an option; the correct option's text; the GT interval (both of
    its ends, each within `tol` seconds, among the patch's numbers); the answer string (normalised: as a
    substring when it has three words or more, as whole words when one or two, a number only when stated
    as a value); for tasks whose answer is a box, a box with IoU >= 0.5 with a GT box.
    """
    from visd_exp.rewards.groundtruth import ground_truth

    try:
        gt = ground_truth(sample)
        letter, options, segment = gt.letter, gt.options, gt.segment
        answer_boxes = []
        if gt.spec.ans_spa or gt.spec.thk_spa == "box":  # the answer is (or holds) boxes
            answer_boxes = [b for kf in gt.key_frames for _, boxes in kf.objects for b in boxes]
            answer_boxes += [gt.ref_box] if gt.ref_box else []
        answer = gt.answer if gt.spec.answer not in ("choice", "choice_keyed") else None
    except UnknownTaskError:  # a task outside the table (V-STaR chains): the raw fields
        letter, options, answer_boxes = None, tuple(sample.get("options") or ()), []
        segment = tuple(sample["segment"]) if sample.get("segment") else None
        answer = sample.get("answer")
    patch_norm = _norm(patch)
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*[.):]?", (letter or "").strip())  # "C", "(C)", "C."
    if m:
        letter = m.group(1).upper()
        if _letter_leaks(patch, letter):
            return "option letter"
        text = _option_text(options, letter)
        if text and len(_norm(text)) > 1 and _has_phrase(patch_norm, _norm(text)):
            return "option text"
    if segment is not None:
        numbers = _numbers(patch)
        hits_s = [i for i, x in enumerate(numbers) if abs(x - segment[0]) <= tol]
        hits_e = [i for i, x in enumerate(numbers) if abs(x - segment[1]) <= tol]
        if hits_s and hits_e and (segment[0] == segment[1] or len(set(hits_s) | set(hits_e)) >= 2):
            return "interval"
    if answer and _answer_leaks(patch_norm, patch, str(answer)):
        return "answer string"
    for m in _BOX_RE.finditer(patch):
        box = [float(v) for v in m.groups()]
        if any(box_iou(box, b) >= 0.5 for b in answer_boxes):
            return "answer box"
    return None
