"""What the verifier reads from a completion, under one of two grammars.

strict (the default): Open-o3-Video's output grammar, read the way its reward code reads it:
  - the first <think>...</think> and the first <answer>...</answer> (the answer stripped);
  - think timestamps are `<t>digits-and-dots</t>s` (the trailing "s" is required); if any of them is not a
    number (e.g. "1.2.3") the block has no timestamps at all;
  - a grounded claim is `<obj>NAME</obj><box>[..]</box>...<box>[..]</box>at<t>TIME</t>s` with nothing between
    the pieces (no spaces); the pattern is non-greedy and may reach across a malformed neighbour, exactly as
    the original regular expression does; a claim whose time is not a number or one of whose boxes is not
    JSON is dropped; a box that is JSON but not four numbers stays, and scores IoU 0;
  - an answer interval is `<t>S</t>s to <t>E</t>s` with S, E unsigned decimals.
lenient: the project's own parser (rewards/parsing.py): the last answer block, timestamps with or without
  the "s", spaces inside claims, "From S to E" / "S - E" intervals, keyword-led option letters.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass

from visd_exp.rewards import parsing as lenient

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Claim:
    name: str
    boxes: tuple[Box | None, ...]  # None: a box that is not four numbers (IoU 0)
    time: float | None  # None only under the lenient grammar (a claim without <t>)


@dataclass(frozen=True)
class Reading:
    text: str
    think: str | None  # content of the first think block, None when there is none
    answer: str | None  # the answer block's content (stripped under strict), None when there is none
    think_times: tuple[float, ...]
    think_claims: tuple[Claim, ...]
    think_boxes: tuple[Box | None, ...]  # every <box>[..]</box> in the think block (visual QA)
    answer_claims: tuple[Claim, ...]
    answer_segment: tuple[float, float] | None
    answer_box: Box | None  # the answer's first <box>[..]</box> (visual QA)
    lenient: lenient.ParsedCompletion | None = None  # the lenient parse, kept for letters and numbers


# --- strict: Open-o3-Video's grammar ----------------------------------------------------------------
# Open-o3-Video reads these with regular expressions that backtrack quadratically (or worse) on degenerate
# text ("<obj>" x 20,000 takes minutes). Each reader below returns exactly what its pattern returns, in
# linear time: lazy `.*?` up to a fixed terminator is a `find`; number patterns are possessive (their
# terminator starts with "<", so giving back digits can never help); the claim pattern is a dynamic
# programme over the positions of its delimiters.

_THINK_TIME_RE = re.compile(r"<t>([\d.]++)</t>s")  # <t>([\d.]+)</t>s
_INTERVAL_RE = re.compile(r"<t>(\d++\.?+\d*+)</t>s to <t>(\d++\.?+\d*+)</t>s")  # <t>(\d+\.?\d*)</t>s to ...
_NAMED_BOX_PREFIX_RE = re.compile(r"<obj>\w+</obj><box>\[")


def block(text: str, open_tag: str, close_tag: str) -> tuple[int, int] | None:
    """(start, end) of the content of re.search(open_tag + "(.*?)" + close_tag, DOTALL)."""
    i = text.find(open_tag)
    if i < 0:
        return None
    j = text.find(close_tag, i + len(open_tag))
    return None if j < 0 else (i + len(open_tag), j)


def _positions(text: str, sub: str) -> list[int]:
    out, i = [], text.find(sub)
    while i >= 0:
        out.append(i)
        i = text.find(sub, i + len(sub))
    return out


def bracket_groups(text: str) -> list[str]:
    r"""re.findall(r"\[.*?\]", text) (no DOTALL: a group never spans a newline)."""
    out = []
    for line in text.split("\n"):
        pos = 0
        while (i := line.find("[", pos)) >= 0 and (j := line.find("]", i + 1)) >= 0:
            out.append(line[i : j + 1])
            pos = j + 1
    return out


def box_tag_groups(text: str) -> list[str]:
    r"""re.findall(r"<box>(\[.*?\])</box>", text) (no DOTALL)."""
    out = []
    for line in text.split("\n"):
        pos = 0
        while (i := line.find("<box>[", pos)) >= 0 and (j := line.find("]</box>", i + 6)) >= 0:
            out.append(line[i + 5 : j + 1])
            pos = j + 7
    return out


def has_named_box(text: str) -> bool:
    r"""re.search(r"<obj>(\w+)</obj><box>(\[.*?\])</box>", text) is not None (no DOTALL)."""
    for line in text.split("\n"):
        last = line.rfind("]</box>")
        if last >= 0 and any(last >= m.end() for m in _NAMED_BOX_PREFIX_RE.finditer(line)):
            return True
    return False


def claim_spans(text: str) -> list[tuple[str, str, str]]:
    r"""(name, boxes, time) strings of re.finditer(
        r"<obj>(.*?)</obj>((?:<box>\[.*?\]</box>)+)at<t>(.*?)</t>s", text, re.DOTALL).

    The regex explores depth first: the name ends at the first "</obj>" that lets the rest match; each
    box ends at the first "]</box>" (at or after its "[" + 1) that lets the rest match, and another box
    is tried before leaving the loop (greedy `+`); the rest is "at<t>", then the time up to the first
    "</t>s". ok[k]: the box loop, having just consumed the k-th "]</box>", can finish the match.
    """
    closes = _positions(text, "]</box>")
    ends = [c + 7 for c in closes]
    last_ts = text.rfind("</t>s")

    def first_ok(e: int) -> int | None:  # the first "]</box>" a box opened at e can end on, with ok
        return next_ok[bisect_left(closes, e + 6)]

    next_ok: list[int | None] = [None] * (len(ends) + 1)
    for k in range(len(ends) - 1, -1, -1):
        e = ends[k]
        ok = (text.startswith("<box>[", e) and first_ok(e) is not None) or (
            text.startswith("at<t>", e) and last_ts >= e + 5
        )
        next_ok[k] = k if ok else next_ok[k + 1]

    obj_ends = _positions(text, "</obj>")
    next_good: list[int | None] = [None] * (len(obj_ends) + 1)
    for g in range(len(obj_ends) - 1, -1, -1):
        p = obj_ends[g] + 6
        good = text.startswith("<box>[", p) and first_ok(p) is not None
        next_good[g] = g if good else next_good[g + 1]

    out, pos = [], 0
    while (s := text.find("<obj>", pos)) >= 0:
        g = next_good[bisect_left(obj_ends, s + 5)]
        if g is None:  # no later <obj> can match either
            break
        o = obj_ends[g]
        q = ends[first_ok(o + 6)]  # type: ignore[index]
        while text.startswith("<box>[", q) and (k := first_ok(q)) is not None:
            q = ends[k]  # greedy: one more box whenever the rest can still match
        t_end = text.find("</t>s", q + 5)
        out.append((text[s + 5 : o], text[o + 6 : q], text[q + 5 : t_end]))
        pos = t_end + 5
    return out


def as_box(value: object) -> Box | None:
    """A JSON value as a box: a list of four numbers (or numeric strings), else None."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    out = []
    for v in value:
        if isinstance(v, (list, dict)) or v is None:
            return None
        try:
            out.append(float(v))
        except (TypeError, ValueError, OverflowError):  # 10**400 as JSON: the original raises here
            return None
    return (out[0], out[1], out[2], out[3])


def _json_boxes(strings: list[str]) -> list[Box | None] | None:
    boxes: list[Box | None] = []
    for s in strings:
        try:
            boxes.append(as_box(json.loads(s)))
        except (ValueError, RecursionError):
            return None
    return boxes


def strict_think_times(think: str) -> tuple[float, ...]:
    try:
        return tuple(float(m) for m in _THINK_TIME_RE.findall(think))
    except ValueError:  # one malformed number ("1.2.3") voids them all
        return ()


def strict_claims(text: str) -> tuple[Claim, ...]:
    claims = []
    for name, boxes_text, time_text in claim_spans(text):
        try:
            time = float(time_text.strip())
        except ValueError:
            continue
        boxes = _json_boxes(bracket_groups(boxes_text))
        if boxes is None:
            continue
        claims.append(Claim(name.strip(), tuple(boxes), time))
    return tuple(claims)


def strict_box_tags(text: str) -> tuple[Box | None, ...]:
    """Every <box>[..]</box> in `text` that is JSON (others skipped), in order."""
    boxes = []
    for s in box_tag_groups(text):
        try:
            boxes.append(as_box(json.loads(s)))
        except (ValueError, RecursionError):
            continue
    return tuple(boxes)


def strict_interval(answer: str) -> tuple[float, float] | None:
    m = _INTERVAL_RE.search(answer)
    if m is None:
        return None
    try:
        return float(m.group(1)), float(m.group(2))
    except ValueError:
        return None


def first_answer(text: str) -> str | None:
    r"""re.search(r"<answer>\s*(.*?)\s*</answer>", DOTALL).group(1).strip()"""
    span = block(text, "<answer>", "</answer>")
    return None if span is None else text[span[0] : span[1]].strip()


def read_strict(text: str) -> Reading:
    span = block(text, "<think>", "</think>")
    think = text[span[0] : span[1]] if span else None
    answer = first_answer(text)
    first_box = None
    groups = box_tag_groups(answer) if answer is not None else []
    if groups:
        try:
            first_box = as_box(json.loads(groups[0]))
        except (ValueError, RecursionError):
            first_box = None
    return Reading(
        text=text,
        think=think,
        answer=answer,
        think_times=strict_think_times(think) if think is not None else (),
        think_claims=strict_claims(think) if think is not None else (),
        think_boxes=strict_box_tags(think) if think is not None else (),
        answer_claims=strict_claims(answer) if answer is not None else (),
        answer_segment=strict_interval(answer) if answer is not None else None,
        answer_box=first_box,
    )


# --- lenient: the project's parser ----------------------------------------------------------------------


def _from_lenient(c: lenient.Claim) -> Claim:
    return Claim(c.name, tuple(c.boxes), c.time)


def read_lenient(text: str) -> Reading:
    p = lenient.parse_completion(text)
    claims = tuple(_from_lenient(c) for c in p.think_claims if c.boxes)
    answer_claims = tuple(_from_lenient(c) for c in p.answer_claims)
    first_box = next((b for c in p.answer_claims for b in c.boxes), None)
    return Reading(
        text=p.text,
        think=p.think,
        answer=p.answer,
        think_times=p.think_times,
        think_claims=claims,
        think_boxes=tuple(b for c in claims for b in c.boxes),
        answer_claims=answer_claims,
        answer_segment=p.answer_segment,
        answer_box=first_box,
        lenient=p,
    )


def read(text: object, parsing: str = "strict") -> Reading:
    """Read a completion under `parsing` ("strict" | "lenient"). Never raises on any text."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    reader = read_strict if parsing == "strict" else read_lenient
    try:
        return reader(text)
    except (RecursionError, MemoryError):  # pragma: no cover - pathological input
        return Reading(text, None, None, (), (), (), (), None, None)
