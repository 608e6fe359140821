"""Parse a completion `<think>...</think><answer>...</answer>` into claims, timestamps and answers.

Grammar of a grounded claim (Open-o3-Video style), inside <think> or a spatio-temporal <answer>:

    <obj>red square</obj><box>[12,30,38,56]</box><box>[...]</box> at <t>3.0</t>s

A claim starts at an <obj> tag (or at a <box> not attached to a previous claim, name ""); the <box> tags
that follow it (separated by nothing but whitespace/commas) are its boxes; a <t> that follows (after an
optional "at") is its time and closes it. Every valid <t> in the think block is also a think timestamp.

`parse_completion` never raises and runs in linear time: tags are found with one precompiled regex whose
content is bounded ([^<]{0,256}), gaps between tags are only inspected when short (<= 48 chars), the
well-formedness regex only runs once each block tag is known to occur exactly once, and the remaining
patterns backtrack at most a bounded amount per start. Non-finite or overflowing numbers are dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Claim:
    name: str  # text inside <obj>...</obj>, stripped ("" if none)
    boxes: tuple[Box, ...]  # every <box>[x1,y1,x2,y2]</box> of this claim
    time: float | None  # the <t>sec</t> after "at", None if missing


@dataclass(frozen=True)
class ParsedCompletion:
    text: str
    think: str | None  # content of the first <think>...</think>, None if absent/unclosed
    answer: str | None  # content of the LAST <answer>...</answer>, None if absent/unclosed
    well_formed: bool  # exactly one <think>..</think> then one <answer>..</answer>, only whitespace around
    think_claims: tuple[Claim, ...]
    think_times: tuple[float, ...]  # every valid <t>number</t> inside the think block
    answer_claims: tuple[Claim, ...]
    answer_segment: tuple[float, float] | None  # (start, end) as written; end may be < start
    answer_choice: str | None  # multiple-choice letter
    answer_number: float | None


# --- precompiled patterns -------------------------------------------------------------------------------

_NUM = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"  # ASCII digits only
_NUM_RE = re.compile(_NUM)
_TAG_RE = re.compile(r"<(obj|box|t)>([^<]{0,256})</\1>")
_TIME_RE = re.compile(rf"\s*({_NUM})\s*(?:s|sec|secs|seconds)?\s*", re.IGNORECASE)
_WELL_FORMED_RE = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)
_MAX_GAP = 48  # gaps longer than this never join tags into one claim / segment
_BOX_GAP_RE = re.compile(r"[\s,;:]*")
_TIME_GAP_RE = re.compile(r"[\s,;:]*(?:(?:at|@)\s*)?", re.IGNORECASE)
_SEGMENT_GAP_RE = re.compile(
    r"\s*(?:s(?:ec(?:onds?)?)?\b)?\s*(?:to|until|till|and|-|–|—|~)\s*", re.IGNORECASE
)

# Multiple-choice letters, tried in order on the stripped answer.
_CHOICE_ALONE_RE = re.compile(r"[\(\[]?([A-Z])[\)\]]?\.?")  # X, X., (X), [X], X)
# Keyword-led letters; the keyword is case-insensitive, the letter must be upper case ("answer: a cat" is
# not a choice). Explicit "correct option/answer" and "answer" win over a bare "option X" mention.
_CHOICE_KEYED_RES = tuple(
    re.compile(rf"(?i:{kw})(?:\s+is)?\s*[:：]?[ \t]{{0,8}}[\(\[]?([A-Z])(?![A-Za-z])")
    for kw in (r"correct\s+(?:option|answer|choice)|answer", r"option|choice")
)
_CHOICE_LEADING_RE = re.compile(r"[\(\[]?([A-Z])(?:[\)\]]|[\.:](?!\d))")  # "B. right", "(B) right", "B: ..."
_THOUSANDS_RE = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_NUMBER_ALONE_RE = re.compile(rf"\s*\$?({_NUM})\s*%?\.?\s*")


def _to_float(s: str) -> float | None:
    """float(s) if s is a finite number, else None (1e400 -> inf -> None; 'nan' -> None)."""
    try:
        v = float(s)
    except (ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _parse_time(content: str) -> float | None:
    m = _TIME_RE.fullmatch(content)
    return _to_float(m.group(1)) if m else None


def _parse_box(content: str) -> Box | None:
    nums = _NUM_RE.findall(content)
    if len(nums) != 4:
        return None
    vals = [_to_float(n) for n in nums]
    if any(v is None for v in vals):
        return None
    return (vals[0], vals[1], vals[2], vals[3])  # type: ignore[return-value]


def _gap_ok(text: str, start: int, end: int, pattern: re.Pattern[str]) -> bool:
    return end - start <= _MAX_GAP and pattern.fullmatch(text, start, end) is not None


def _scan(text: str) -> tuple[tuple[Claim, ...], tuple[float, ...], list[tuple[str, object, int, int]]]:
    """One pass over the tags of `text`: grouped claims, valid timestamps, and the raw tag tokens."""
    claims: list[Claim] = []
    times: list[float] = []
    tokens: list[tuple[str, object, int, int]] = []
    cur: dict | None = None  # open claim: name, boxes, end (position after its last tag)

    def close() -> None:
        nonlocal cur
        if cur is not None:
            claims.append(Claim(cur["name"], tuple(cur["boxes"]), cur["time"]))
            cur = None

    for m in _TAG_RE.finditer(text):
        kind, content = m.group(1), m.group(2)
        start, end = m.span()
        if kind == "obj":
            close()
            cur = {"name": content.strip(), "boxes": [], "time": None, "end": end}
            tokens.append((kind, content, start, end))
        elif kind == "box":
            box = _parse_box(content)
            if cur is None or not _gap_ok(text, cur["end"], start, _BOX_GAP_RE):
                close()
                cur = {"name": "", "boxes": [], "time": None, "end": end}
            if box is not None:
                cur["boxes"].append(box)
            cur["end"] = end
            tokens.append((kind, box, start, end))
        else:  # "t"
            t = _parse_time(content)
            if t is not None:
                times.append(t)
            if cur is not None and _gap_ok(text, cur["end"], start, _TIME_GAP_RE):
                cur["time"] = t
                close()
            tokens.append((kind, t, start, end))
    close()
    return tuple(claims), tuple(times), tokens


def _segment(text: str, tokens: list[tuple[str, object, int, int]]) -> tuple[float, float] | None:
    """First "<t>s</t>s to <t>e</t>s" (also "From ... to", "between ... and", "-") in the answer."""
    for (k1, v1, _, e1), (k2, v2, s2, _) in zip(tokens, tokens[1:]):
        if k1 == "t" and k2 == "t" and v1 is not None and v2 is not None:
            if _gap_ok(text, e1, s2, _SEGMENT_GAP_RE):
                return (v1, v2)  # type: ignore[return-value]
    return None


def parse_choice(answer: str | None) -> str | None:
    """Multiple-choice letter from an answer: X, X., (X), [X], "Answer: X", "Correct Option: X", "X. text"."""
    if answer is None:
        return None
    a = answer.strip()
    if len(a) == 1 and a.isalpha() and a.isascii():
        return a.upper()
    m = _CHOICE_ALONE_RE.fullmatch(a)
    if m:
        return m.group(1)
    for pattern in _CHOICE_KEYED_RES:
        m = pattern.search(a)
        if m:
            return m.group(1)
    m = _CHOICE_LEADING_RE.match(a)
    if m:
        return m.group(1)
    return None


def parse_number(answer: str | None) -> float | None:
    """A numeric answer: the whole answer if it is one number ("1,234", "3.5", "$4", "12%"), else the only
    number in the text; None when there is no number, several, or it is not finite."""
    if answer is None:
        return None
    a = _THOUSANDS_RE.sub("", answer.strip())
    m = _NUMBER_ALONE_RE.fullmatch(a)
    if m:
        return _to_float(m.group(1))
    found = _NUM_RE.findall(a)
    if len(found) == 1:
        return _to_float(found[0])
    return None


def _block(text: str, open_tag: str, close_tag: str, last: bool) -> str | None:
    if last:
        j = text.rfind(close_tag)
        i = text.rfind(open_tag, 0, j) if j >= 0 else -1
    else:
        i = text.find(open_tag)
        j = text.find(close_tag, i + len(open_tag)) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    return text[i + len(open_tag) : j]


def _well_formed(text: str) -> bool:
    counts = [text.count(tag) for tag in ("<think>", "</think>", "<answer>", "</answer>")]
    if counts != [1, 1, 1, 1]:
        return False
    return _WELL_FORMED_RE.fullmatch(text) is not None


def _parse(text: str) -> ParsedCompletion:
    think = _block(text, "<think>", "</think>", last=False)
    answer = _block(text, "<answer>", "</answer>", last=True)
    think_claims, think_times = ((), ())
    if think is not None:
        think_claims, think_times, _ = _scan(think)
    answer_claims: tuple[Claim, ...] = ()
    segment = None
    if answer is not None:
        answer_claims, _, tokens = _scan(answer)
        segment = _segment(answer, tokens)
    return ParsedCompletion(
        text=text,
        think=think,
        answer=answer,
        well_formed=_well_formed(text),
        think_claims=think_claims,
        think_times=think_times,
        answer_claims=answer_claims,
        answer_segment=segment,
        answer_choice=parse_choice(answer),
        answer_number=parse_number(answer),
    )


def _empty(text: str) -> ParsedCompletion:
    return ParsedCompletion(text, None, None, False, (), (), (), None, None, None)


def parse_completion(text: str) -> ParsedCompletion:
    """Parse a model completion. Never raises: anything unparseable yields empty fields."""
    if not isinstance(text, str):
        try:
            text = "" if text is None else str(text)
        except Exception:
            return _empty("")
    try:
        return _parse(text)
    except Exception:  # last-resort guard; the parser is written not to get here
        return _empty(text)
