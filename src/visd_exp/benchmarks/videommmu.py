"""VideoMMMU, scored as lmms-eval scores it (`tasks/videommmu/utils.py`; the VideoMMMU README says
evaluation is done in lmms-eval), with the multiple-choice parser of the task as added (74b6d95c, the
MMMU one, behind the published leaderboard; lmms-eval changed it on 2026-04-11, 9ca4445d).

Per question (`question_type` "multiple-choice" -> the MCQ parser, anything else -> the open parser):
- MCQ: an empty reply is "API Error"; otherwise strip , . ! ? ; : ' from both ends (in that order),
  pad with spaces, then candidates: letters followed by "." and (also) by ":"; if none, "(X)"; if
  none, "X " (a letter then a space: "I think" is a candidate for I); if none and more than 5 words,
  options whose text is in the reply. Several candidates: the one occurring LAST (by the same form);
  none: "No Answer Found." (wrong). Correct when it equals the answer letter.
- open: "API Error" when empty; else the reply (stripped of spaces and ".", lower-cased) is split on
  newlines (its ". X" split never fires after lower-casing), each piece's shortest tail after a key
  phrase ("is ", "so ", "answer ", ..., "=" in the last piece) kept, plus every number in them;
  numbers are rounded to 2 decimals. Correct when a number equals the gold number, or the lower-cased
  gold string is in a kept string (a one-character gold needs a space on one side).
Predictions parsed as "API Error" (empty replies) leave the denominator. Each track's accuracy is over
its remaining questions; Overall (the leaderboard's) is the mean of the three track accuracies,
reported only when all three tracks are present.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

COLUMNS = ("Overall", "Comprehension", "Adaptation", "Perception")
TRACKS = ("Perception", "Comprehension", "Adaptation")
API_ERROR = "API Error"
UNPARSABLE_RULE = (
    "lmms-eval: an empty reply (parsed 'API Error') leaves the denominator; a non-empty MCQ reply with "
    "no option found ('No Answer Found.') and an open reply with no match count as wrong"
)
KEY_PHRASES = (
    "could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ", "are ",
    "in total ", "total ", "identify ", "recognize ", "calculated as ", "counted as ", "measured as ",
    "observed as ", "concluded as ", "found to be ", "equals ", "determined to be ", "number of ",
    "value is ", "adds up to ", "have ", "has ",
)  # fmt: skip
TRIVIAL = (":", ",", ".", "!", "?", ";", "'")


def parse_multi_choice(response: str, options: Sequence[str]) -> str:
    """The MMMU parser of lmms-eval's VideoMMMU task (see the module docstring)."""
    if response in (API_ERROR, ""):
        return API_ERROR
    choices = [chr(ord("A") + i) for i in range(len(options))]
    index2ans = dict(zip(choices, options))
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = " " + response + " "
    candidates: list[str] = []
    form = None  # how the candidates were found: "period", "colon", "bracket", "space", "text"
    for choice in choices:
        if f"{choice}." in response:
            candidates.append(choice)
            form = "period"
    for choice in choices:
        if f"{choice}:" in response:
            candidates.append(choice)
            form = form or "colon"
    if not candidates:
        candidates = [c for c in choices if f"({c})" in response]
        form = "bracket" if candidates else None
    if not candidates:
        candidates = [c for c in choices if f"{c} " in response]
        form = "space" if candidates else None
    if not candidates and len(response.split()) > 5:
        candidates = [c for c in choices if index2ans[c].lower() in response.lower()]
        form = "text" if candidates else None
    if not candidates:
        return "No Answer Found."
    if len(candidates) == 1:
        return candidates[0]
    needle = {
        "period": lambda c: f"{c}.",
        "colon": lambda c: f"{c}:",
        "bracket": lambda c: f"({c})",
        "space": lambda c: f" {c} ",
    }
    if form == "text":
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    else:
        starts = [response.rfind(needle[form](c)) for c in candidates]
    return candidates[starts.index(max(starts))]  # the first of equal maxima, as np.argmax


def extract_numbers(text: str) -> list[str]:
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + simple


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list:
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def parse_open(response: str):
    """The open-question parser: a list of strings and numbers, or "API Error"."""
    if response in (API_ERROR, ""):
        return API_ERROR
    text = response.strip().strip(".").lower()
    pieces = re.split(r"\.\s(?=[A-Z])|\n", text)
    keys = []
    for index, piece in enumerate(pieces):
        phrases = KEY_PHRASES + (("=",) if index == len(pieces) - 1 else ())
        tails = [piece.split(p)[-1].strip() for p in phrases if p in piece]
        shortest = None
        for tail in tails:  # the first of the shortest, as the official loop keeps it
            if not shortest or len(tail) < len(shortest):
                shortest = tail
        if shortest and shortest.strip() not in TRIVIAL:
            keys.append(shortest)
    if not keys:
        keys = [text]
    found = list(keys)
    for key in keys:
        found.extend(extract_numbers(key))
    normalized = []
    for item in found:
        normalized.extend(normalize_str(item))
    return list(dict.fromkeys(normalized))


def eval_open(gold: str, parsed: list) -> bool:
    answers = normalize_str(gold)
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in answers):
                return True
        elif pred in answers:
            return True
    return False


def judge(prediction: str, fields: Mapping) -> tuple[str | list, bool]:
    """(parsed prediction, correct) of one question."""
    if fields["question_type"] == "multiple-choice":
        parsed = parse_multi_choice(prediction, fields["options"])
        return parsed, parsed == fields["answer"]
    parsed = parse_open(prediction)
    return parsed, parsed != API_ERROR and eval_open(fields["answer"], parsed)


def _percent(scores: Sequence[bool]) -> float:
    return 100.0 * sum(scores) / len(scores)


def score(rows: Sequence[Mapping]) -> dict:
    """The report of VideoMMMU rows (each with `id`, `prediction` and the record's `benchmark`)."""
    by_track: dict[str, list] = defaultdict(list)
    dropped = defaultdict(int)
    for row in rows:
        fields = row["benchmark"]
        parsed, correct = judge(row.get("prediction") or "", fields)
        if parsed == API_ERROR:
            dropped[fields["track"]] += 1
            continue
        by_track[fields["track"]].append((fields, correct))
    tracks = {t: _percent([c for _, c in by_track[t]]) for t in TRACKS if by_track.get(t)}
    table = {"Overall": sum(tracks.values()) / 3 if len(tracks) == 3 else None}
    table.update({t: tracks.get(t) for t in COLUMNS[1:]})
    categories: dict = {}
    for track, items in by_track.items():
        groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for fields, correct in items:
            for name in ("discipline", "subject", "question_type", "qa_type"):
                if fields.get(name) is not None:
                    groups[name][str(fields[name])].append(correct)
        categories[track] = {
            name: {label: _percent(s) for label, s in labels.items()} for name, labels in groups.items()
        }
        categories[track]["count"] = len(items)
    return {
        "table": table,
        "categories": categories,
        "counts": {
            "total": sum(len(v) for v in by_track.values()) + sum(dropped.values()),
            "unparsable": sum(dropped.values()),
            "dropped_empty": dict(dropped),
            "no_answer_found": sum(
                1
                for row in rows
                if row["benchmark"]["question_type"] == "multiple-choice"
                and parse_multi_choice(row.get("prediction") or "", row["benchmark"]["options"])
                == "No Answer Found."
            ),
        },
        "unparsable_rule": UNPARSABLE_RULE,
    }
