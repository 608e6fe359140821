"""LongVideo-Reason, scored as NVlabs/Long-RL `eval/eval.py` scores it (`accuracy_reward`,
`format_reward`; read at 97abc84).

Per question, the student answer: when the reply contains "Therefore the final answer is:", the text
of the first `<answer>Therefore the final answer is: (.*?)</answer>`; otherwise that of the first
`<answer>(.*?)</answer>`; both without DOTALL (an answer spanning lines does not match), stripped. With
no match the WHOLE reply, stripped, is the answer. Correct when it equals the gold answer exactly (the
gold is the text inside the record's own <answer> tag). A reply with no matching tag is counted here as
unparsable: it is wrong unless the whole reply equals the gold, and it stays in the denominator.
eval.py first tries math_verify (parse + verify of reply and gold); that step is not implemented.

Acc = mean over all questions (eval.py's `accuracy`), in percent. Also: by problem_type (eval.py
computes none), and `format_accuracy`: replies matching `<think>.*?</think>\\s*<answer>.*?</answer>`
from the start (DOTALL).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

COLUMNS = ("Acc",)
FINAL = "Therefore the final answer is:"
FINAL_TAG = re.compile(r"<answer>Therefore the final answer is: (.*?)</answer>")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>")
FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
UNPARSABLE_RULE = (
    "Long-RL eval.py: with no <answer>...</answer> on one line (or no '<answer>Therefore the final answer "
    "is: ...</answer>' when the reply has that phrase) the whole reply is compared; such replies are "
    "wrong unless the whole reply equals the gold, and they stay in the denominator"
)


def student_answer(reply: str) -> tuple[str, bool]:
    """(the answer eval.py compares, whether a tag matched)."""
    match = (FINAL_TAG if FINAL in reply else ANSWER_TAG).search(reply)
    return (match.group(1).strip(), True) if match else (reply.strip(), False)


def _percent(values: Sequence[int]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def score(rows: Sequence[Mapping]) -> dict:
    """The report of LongVideo-Reason rows (each with `id`, `prediction` and the record's `benchmark`)."""
    correct, formatted, unparsable = [], [], 0
    by_type: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        fields = row["benchmark"]
        reply = row.get("prediction") or ""
        answer, tagged = student_answer(reply)
        unparsable += not tagged
        ok = int(answer == fields["answer"])
        correct.append(ok)
        formatted.append(int(FORMAT.match(reply) is not None))
        if fields.get("problem_type") is not None:
            by_type[str(fields["problem_type"])].append(ok)
    return {
        "table": {"Acc": _percent(correct)},
        "categories": {
            "problem_type": {label: _percent(v) for label, v in by_type.items()},
            "other": {"format_accuracy": _percent(formatted)},
        },
        "counts": {"total": len(rows), "correct": sum(correct), "unparsable": unparsable},
        "unparsable_rule": UNPARSABLE_RULE,
    }
