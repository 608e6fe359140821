"""Answer correctness r_ans, one scorer per answer type of the task table (rewards/tasks.py).

Strict rules are Open-o3-Video's (choice, choice_keyed, rouge) and Video-R1's (number, regression, ocr);
`lenient=True` swaps in the project's forgiving readers for letters and numbers.
"""

from __future__ import annotations

import math
import re

from visd_exp.rewards.parsing import parse_choice, parse_number

NUM_REL_TOL = 1e-6  # lenient numerical match: math.isclose with these tolerances
NUM_ABS_TOL = 1e-6

_scorers: dict[bool, object] = {}


def rouge_mean_f1(pred: str, ref: str, stemmer: bool = True) -> float:
    """Mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 (rouge_score's tokenizer; Porter stemming by default, as
    Open-o3-Video and Video-R1 score free-form answers)."""
    scorer = _scorers.get(stemmer)
    if scorer is None:
        from rouge_score import rouge_scorer

        scorer = _scorers[stemmer] = rouge_scorer.RougeScorer(
            ["rouge1", "rouge2", "rougeL"], use_stemmer=stemmer
        )
    scores = scorer.score(ref, pred)
    return min(1.0, max(0.0, sum(s.fmeasure for s in scores.values()) / 3.0))


def letter_forms(letter: str) -> tuple[str, ...]:
    """The written forms of an option letter that count as that letter: X, X., (X), [X]."""
    return (letter, f"{letter}.", f"({letter})", f"[{letter}]")


def choice(answer: str | None, letter: str, lenient: bool, options: tuple[str, ...] = ()) -> float:
    """Multiple choice. Strict: the whole answer is the letter in one of `letter_forms`.
    Lenient: any letter `parse_choice` finds ("Answer: B", "B. right"), or the text of an option."""
    if answer is None:
        return 0.0
    if not lenient:
        return 1.0 if answer.strip() in letter_forms(letter) else 0.0
    want = parse_choice(letter) or letter
    got = parse_choice(answer) or choice_from_options(answer, options)
    return 1.0 if got == want else 0.0


def choice_keyed(answer: str | None, letter: str, lenient: bool) -> float:
    """Temporal multiple choice (Open-o3-Video): the text after "Correct Option:" (up to a second one) is
    the letter in one of `letter_forms`. Lenient: any keyword-led letter ("Correct option is B")."""
    if answer is None:
        return 0.0
    if lenient:
        return 1.0 if parse_choice(answer) == (parse_choice(letter) or letter) else 0.0
    parts = answer.split("Correct Option:")
    if len(parts) < 2:
        return 0.0
    return 1.0 if parts[1].strip() in letter_forms(letter) else 0.0


def _video_r1_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def number(answer: str | None, reference: str, lenient: bool) -> float:
    """Video-R1's numerical rule: both or neither written with a decimal mark ("." or ","), then equal
    after rounding to 2 places. Lenient: the numbers equal within 1e-6 however they are written."""
    if answer is None:
        return 0.0
    if lenient:
        got, want = parse_number(answer), parse_number(reference)
        if got is None or want is None:
            return 0.0
        return 1.0 if math.isclose(got, want, rel_tol=NUM_REL_TOL, abs_tol=NUM_ABS_TOL) else 0.0
    ref = reference.strip()
    if ("." in ref or "," in ref) != ("." in answer or "," in answer):
        return 0.0
    got, want = _video_r1_number(answer), _video_r1_number(ref)
    if got is None or want is None:
        return 0.0
    try:
        return 1.0 if round(want, 2) == round(got, 2) else 0.0
    except (OverflowError, ValueError):  # round(inf) / round(nan)
        return 0.0


def regression(answer: str | None, reference: str, lenient: bool) -> float:
    """Video-R1's regression reward: 1 - min(1, (|pred - gt| + 1e-9) / (|gt| + 1e-9)). Strict keeps its
    quirk that a reference of 0 scores 0 even when answered exactly; lenient scores that exact answer 1."""
    if answer is None:
        return 0.0
    got = parse_number(answer) if lenient else _video_r1_number(answer)
    want = parse_number(reference) if lenient else _video_r1_number(reference.strip())
    if got is None or want is None:
        return 0.0
    if lenient and want == 0.0:
        return 1.0 if abs(got) <= NUM_ABS_TOL else 0.0
    rel = (abs(got - want) + 1e-9) / (abs(want) + 1e-9)
    if not math.isfinite(rel):
        return 0.0
    return 1.0 - min(1.0, max(0.0, rel))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / max(1, number of reference words) (whitespace tokens)."""
    ref, hyp = reference.split(), hypothesis.split()
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = prev[j - 1] if r == h else 1 + min(prev[j], cur[j - 1], prev[j - 1])
        prev = cur
    return prev[-1] / max(1, len(ref))


def ocr(answer: str | None, reference: str) -> float:
    """Video-R1's OCR reward: 1 - word error rate, clipped to [0, 1]."""
    if answer is None:
        answer = ""
    return min(1.0, max(0.0, 1.0 - word_error_rate(reference.strip(), answer)))


_OPTION_PREFIX_RE = re.compile(r"\s*[\(\[]?[A-Z][\)\]\.:]\s*")
_NON_WORD_RE = re.compile(r"[^\w]+")


def _norm_text(s: str) -> str:
    return _NON_WORD_RE.sub(" ", s.lower()).strip()


def choice_from_options(answer: str | None, options: tuple[str, ...]) -> str | None:
    """The letter of the option whose text equals the answer text ("right" -> "B" for "B. right")."""
    if not answer or not options or len(answer) > 1000:
        return None
    want = _norm_text(answer)
    for opt in options:
        m = _OPTION_PREFIX_RE.match(opt)
        if m and want and _norm_text(opt[m.end() :]) == want:
            return parse_choice(opt[: m.end()])
    return None
