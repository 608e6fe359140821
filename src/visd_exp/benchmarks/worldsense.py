"""WorldSense, scored as VLMEvalKit scores it (`vlmeval/dataset/worldsense.py` `evaluate` with the
default `exact_matching` judge, and `vlmeval/dataset/utils/worldsense.py`; the WorldSense README sends
evaluation there).

Per question: `extract_characters_regex(prediction)`: strip, delete every occurrence of each answer
prefix in the list's order (case-sensitive; the list's missing commas glue "The best option is" to
"The correct option is" and "Best answer:" to "Best option:", so those four only match glued); then
'' if the text has more than 10 words and no A-D, else the FIRST A-D character anywhere ('' if none).
Score 1 if it equals the answer letter, else 0. When it gives '', VLMEvalKit falls back to
`extract_option` -> `extract_answer_from_item` with no LLM judge: its choices are the option lines of
the `question` field, which WorldSense's question never has (the candidates are a separate column),
so it returns 'Z' and the question scores 0. Unparsable answers therefore count as wrong and stay in
every denominator.

Overall = mean over all questions; Recognition / Understanding / Reasoning = mean over the questions
with that `task_domain` (the record's own field). Also: domain, sub_category, task_type, audio_class
(a question counts once under each of its labels) and each of these per duration bucket, as
`get_dimension_rating` reports them. Values in percent.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

COLUMNS = ("Overall", "Recognition", "Understanding", "Reasoning")
# VLMEvalKit's list as its Python evaluates it (implicit string concatenation where commas are missing)
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
    "Answer:",
    "Option:",
)
LETTER = re.compile(r"[ABCD]")
UNPARSABLE_RULE = (
    "VLMEvalKit exact_matching: the first A-D after the answer prefixes are removed; '' when there is "
    "none (or more than 10 words and no A-D); the fallback extract_option without a judge gives 'Z', "
    "so unparsable answers count as wrong and stay in the denominator"
)
BREAKDOWNS = ("task_domain", "domain", "sub_category", "task_type", "audio_class")


def extract_characters_regex(text: str) -> str:
    """The answer letter VLMEvalKit reads from a reply, or '' (see the module docstring)."""
    s = str(text).strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not LETTER.search(s):
        return ""
    match = LETTER.search(s)
    return match.group(0) if match else ""


def _percent(scores: Sequence[int]) -> float:
    return 100.0 * sum(scores) / len(scores)


def _breakdown(items: Sequence[tuple[Mapping, int]]) -> dict:
    """Overall and the per-label means of (benchmark fields, score) pairs."""
    groups: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in BREAKDOWNS}
    for fields, score in items:
        for name in BREAKDOWNS:
            labels = fields.get(name)
            for label in labels if isinstance(labels, list) else [labels]:
                if label is not None:
                    groups[name][str(label)].append(score)
    out: dict = {"Overall": _percent([s for _, s in items])}
    for name in BREAKDOWNS:
        out[name] = {label: _percent(scores) for label, scores in groups[name].items()}
    return out


def score(rows: Sequence[Mapping]) -> dict:
    """The report of WorldSense rows (each with `id`, `prediction` and the record's `benchmark`)."""
    items, unparsable = [], 0
    for row in rows:
        fields = row["benchmark"]
        letter = extract_characters_regex(row.get("prediction") or "")
        unparsable += letter == ""
        correct = int(letter != "" and letter == fields["answer"])
        items.append((fields, correct))
    if not items:
        return {
            "table": {},
            "categories": {},
            "counts": {"total": 0, "unparsable": 0},
            "unparsable_rule": UNPARSABLE_RULE,
        }
    overall = _breakdown(items)
    table = {"Overall": overall["Overall"]}
    for domain in COLUMNS[1:]:
        table[domain] = overall["task_domain"].get(domain)  # None: no question of it
    by_duration: dict[str, list] = defaultdict(list)
    for fields, correct in items:
        by_duration[str(fields.get("duration"))].append((fields, correct))
    categories = {name: overall[name] for name in BREAKDOWNS}
    categories["duration"] = {bucket: _breakdown(group) for bucket, group in by_duration.items()}
    return {
        "table": table,
        "categories": categories,
        "counts": {"total": len(items), "unparsable": unparsable},
        "unparsable_rule": UNPARSABLE_RULE,
    }
