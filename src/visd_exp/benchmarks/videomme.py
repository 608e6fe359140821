"""Video-MME (v1), scored as its official script scores it (`eval_your_results.py` of
thanku-all/parse_answer, which the Video-MME README links; read at afd52cf, its last commit).

Per question: `extract_characters_regex(response)`: strip, delete every occurrence of each answer
prefix in the list's order (case-sensitive; the list's missing commas glue "The best option is" to
"The correct option is" and "Best answer:" to "Best option:", so those four only match glued); then
'' if the text has more than 10 words and no A-D, else the FIRST A-D character anywhere ('' if none).
Only extracted answers count: a '' answer is not "answered" and leaves every denominator; accuracy =
correct / answered. lmms-eval's videomme task instead counts it wrong (not implemented).

Overall = correct / answered over all questions; Short / Medium / Long = the same per `duration`.
Categories: domain, sub_category and task_type over all durations, and each of them per duration, as
the script prints them. Values in percent; None where nothing was answered (the script prints 0).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

COLUMNS = ("Overall", "Short", "Medium", "Long")
DURATIONS = ("short", "medium", "long")
# the official list as its Python evaluates it (implicit string concatenation where commas are missing)
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)
LETTER = re.compile(r"[ABCD]")
UNPARSABLE_RULE = (
    "Video-MME eval_your_results.py: the first A-D after the answer prefixes are removed; '' when there "
    "is none (or more than 10 words and no A-D); a '' answer is not 'answered' and leaves the "
    "denominator (accuracy = correct / answered)"
)
BREAKDOWNS = ("domain", "sub_category", "task_type")


def extract_characters_regex(text: str) -> str:
    """The answer letter the official script reads from a reply, or '' (see the module docstring)."""
    s = str(text).strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not LETTER.search(s):
        return ""
    match = LETTER.search(s)
    return match.group(0) if match else ""


def _accuracy(scores: Sequence[int | None]) -> float | None:
    """Correct / answered in percent (None: an unparsable answer); None when nothing was answered."""
    answered = [s for s in scores if s is not None]
    return 100.0 * sum(answered) / len(answered) if answered else None


def _breakdown(items: Sequence[tuple[Mapping, int | None]]) -> dict:
    """{category: {label: accuracy}} of (fields, correct or None) pairs, every label present listed."""
    out = {}
    for name in BREAKDOWNS:
        groups: dict[str, list[int | None]] = defaultdict(list)
        for fields, correct in items:
            groups[str(fields[name])].append(correct)
        out[name] = {label: _accuracy(scores) for label, scores in groups.items()}
    return out


def score(rows: Sequence[Mapping]) -> dict:
    """The report of Video-MME rows (each with `id`, `prediction` and the record's `benchmark`)."""
    items: list[tuple[Mapping, int | None]] = []
    for row in rows:
        fields = row["benchmark"]
        letter = extract_characters_regex(row.get("prediction") or "")
        items.append((fields, None if letter == "" else int(letter == fields["answer"])))
    by_duration = {d: [item for item in items if item[0]["duration"] == d] for d in DURATIONS}
    table = {"Overall": _accuracy([c for _, c in items])}
    for column, duration in zip(COLUMNS[1:], DURATIONS, strict=True):
        table[column] = _accuracy([c for _, c in by_duration[duration]])
    categories = _breakdown(items)
    categories["duration"] = {d: _breakdown(group) for d, group in by_duration.items() if group}
    unparsable = sum(c is None for _, c in items)
    return {
        "table": table,
        "categories": categories,
        "counts": {"total": len(items), "answered": len(items) - unparsable, "unparsable": unparsable},
        "unparsable_rule": UNPARSABLE_RULE,
    }
