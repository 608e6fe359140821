"""Video-MME-v2, scored as its official script scores it (`evaluation/test_video_mme_v2.py`: `evaluate`,
`get_final_rating`, `cal_relevance`, `cal_logic`; VLMEvalKit carries the same code).

Per question: `extract_characters_regex_v2(prediction)`: strip, delete every occurrence of each prefix
("Final Answer:", "The best answer is", ..., "Answer:", "Option:"; case-sensitive, in order); '' if the
text has more than 10 words and no A-H, else the FIRST A-H anywhere. Score 1 if it equals the answer,
0 if not, **-1 if nothing was extracted** (lmms-eval uses 0 there; not implemented).

Groups: rows are grouped by their position in the file, `index // 4` (not by video id, and not in the
order predictions come); a group's type, structure, level and heads are those of its LAST row.
- relevance: {0: 0, 1: 6.25, 2: 25, 3: 56.25, 4: 100}[sum of the 4 scores]: a -1 lowers the sum, and a
  negative sum scores 0 (the map's default).
- logic: walk the scores in order while each is truthy (as written, so a -1 CONTINUES the chain) and
  stop at the first 0; L = the number walked. "[1, 2, 3, 4]": the relevance map of L;
  "[1, [2, 3], 4]": {0, 100/12, 400/12, 700/12, 100}, and L = 1 with Q3 truthy counts as L = 2;
  "[[1, 2], 3, 4]": {0, 10, 20, 50, 100}, and L = 0 with Q2 truthy counts as L = 1.
Non-Lin Score = mean group score over all groups; Level k = over groups of level k (None skipped);
Consistency = over relevance groups; Coherence = over logic groups; Avg Acc = mean question score over
the valid (extracted) answers only, as the script prints it. Values in percent; None where a mean has no
group (the script prints 0.0). A row of a group with no prediction scores -1, as the script's '' reply
for a failed inference does (`counts.missing`).
"""

from __future__ import annotations

import ast
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

COLUMNS = ("Non-Lin Score", "Level 1", "Level 2", "Level 3", "Consistency", "Coherence", "Avg Acc")
ANSWER_PREFIXES = (
    "Final Answer:",
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
    "Answer:",
    "Option:",
)
LETTER = re.compile(r"[A-H]")
SQUARES = {0: 0.0, 1: 100.0 / 16, 2: 100.0 * 4 / 16, 3: 100.0 * 9 / 16, 4: 100.0}
CHAIN_MAPS = {
    (1, 2, 3, 4): SQUARES,
    (1, (2, 3), 4): {0: 0.0, 1: 100.0 / 12, 2: 100.0 * 4 / 12, 3: 100.0 * 7 / 12, 4: 100.0},
    ((1, 2), 3, 4): {0: 0.0, 1: 100.0 / 10, 2: 100.0 * 2 / 10, 3: 100.0 * 5 / 10, 4: 100.0},
}
UNPARSABLE_RULE = (
    "test_video_mme_v2.py: the first A-H after the prefixes are removed; '' (more than 10 words and no "
    "A-H, or none) scores -1: it stays in the group scores (lowering a relevance group's sum, continuing a "
    "logic chain as truthy) and leaves Avg Acc's denominator"
)


def extract_characters_regex_v2(text: str) -> str:
    """The answer letter the official script reads from a reply, or ''."""
    s = str(text).strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not LETTER.search(s):
        return ""
    match = LETTER.search(s)
    return match.group(0) if match else ""


def question_score(prediction: str, answer: str) -> int:
    letter = extract_characters_regex_v2(prediction)
    return int(letter == answer) if letter else -1


def relevance_score(scores: Sequence[int]) -> float:
    return SQUARES.get(sum(scores), 0.0)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def logic_score(scores: Sequence[int], structure: str) -> float:
    """cal_logic: the chain walked while scores are truthy, with the two parallel-branch promotions."""
    shape = _tuples(ast.literal_eval(structure))
    if shape not in CHAIN_MAPS:
        raise ValueError(f"unknown logic group_structure {structure!r}")
    last = -1
    for k, value in enumerate(scores):
        if not value:
            break
        last = k
    if shape == (1, (2, 3), 4) and last == 0 and scores[2]:
        last += 1
    if shape == ((1, 2), 3, 4) and last == -1 and scores[1]:
        last += 1
    return CHAIN_MAPS[shape].get(last + 1, 0.0)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score(rows: Sequence[Mapping]) -> dict:
    """The report of Video-MME-v2 rows (each with `id`, `prediction` and the record's `benchmark`)."""
    groups: dict[tuple[str, int], dict[int, tuple[Mapping, int]]] = defaultdict(dict)
    valid: list[int] = []
    for row in rows:
        fields = row["benchmark"]
        s = question_score(row.get("prediction") or "", fields["answer"])
        if s >= 0:
            valid.append(s)
        index = int(fields["index"])
        groups[(str(fields.get("file", "")), index // 4)][index % 4] = (fields, s)
    rating: dict[str, list[float]] = defaultdict(list)
    heads: dict[str, dict[str, list[float]]] = {
        "second_head": defaultdict(list),
        "third_head": defaultdict(list),
    }
    listed, missing = [], 0
    for (file, number), members in sorted(groups.items()):
        missing += 4 - len(members)
        scores = [members[k][1] if k in members else -1 for k in range(4)]
        last = members[max(members)][0]
        if last["group_type"] == "relevance":
            value = relevance_score(scores)
            rating["relevance"].append(value)
            rating["relevance_linear"].append(25.0 * sum(scores))
        else:
            value = logic_score(scores, last["group_structure"])
            rating["logic"].append(value)
        if last.get("level") is not None:
            rating[f"level_{int(last['level'])}"].append(value)
        rating["total"].append(value)
        for name in heads:
            heads[name][str(last.get(name))].append(value)
        listed.append(
            {
                "file": file,
                "group": number,
                "video_id": last.get("video_id"),
                "scores": scores,
                "score": value,
            }
        )
    if missing:
        log.warning("Video-MME-v2: %d rows of the scored groups have no prediction (scored -1)", missing)
    table = {
        "Non-Lin Score": _mean(rating["total"]),
        "Level 1": _mean(rating["level_1"]),
        "Level 2": _mean(rating["level_2"]),
        "Level 3": _mean(rating["level_3"]),
        "Consistency": _mean(rating["relevance"]),
        "Coherence": _mean(rating["logic"]),
        "Avg Acc": 100.0 * sum(valid) / len(valid) if valid else None,
    }
    categories = {name: {label: _mean(v) for label, v in by.items()} for name, by in heads.items()}
    categories["other"] = {
        "relevance_linear_score": _mean(rating["relevance_linear"]),  # the script's 25 per correct answer
        "acc_over_all_answers": 100.0 * sum(valid) / len(rows) if rows else None,  # lmms-eval's denominator
    }
    return {
        "table": table,
        "categories": categories,
        "counts": {
            "total": len(rows),
            "valid": len(valid),
            "unparsable": len(rows) - len(valid),
            "groups": len(listed),
            "missing": missing,
        },
        "unparsable_rule": UNPARSABLE_RULE,
        "groups": listed,
    }
