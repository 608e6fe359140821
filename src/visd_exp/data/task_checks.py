"""Does a record carry what its task's reward components need? (K(x), rewards/tasks.py)

Without these checks a record that lacks, say, the interval of a temporal question would have its
temporal components masked on every rollout: the run would quietly train on less signal than asked.
Each problem is a (field, message) pair for data.validate's `file:line: field: message` lines.
"""

from __future__ import annotations

from visd_exp.rewards.groundtruth import ground_truth
from visd_exp.rewards.tasks import UnknownTaskError, task_spec

CHAIN_TASKS = ("vstar_what_when_where", "vstar_what_where_when")  # evaluation-only V-STaR chains


def check_task_supervision(record: dict) -> list[tuple[str, str]]:
    task = record.get("task")
    if not isinstance(task, str) or not task.strip() or task in CHAIN_TASKS:
        return []
    try:
        spec = task_spec(task)
    except UnknownTaskError as exc:
        return [("task", str(exc))]
    if not isinstance(record.get("answer"), str):
        return []  # reported by check_strings
    gt = ground_truth(record)
    issues = []
    if (spec.ans_tmp or spec.thk_tmp == "segment") and gt.segment is None:
        form = '"L\\n[start, end]"' if spec.answer == "choice_keyed" else '"[start, end]"'
        issues.append(
            ("segment", f"task {task!r} needs the interval: a segment [start, end] or an answer {form}")
        )
    if spec.answer == "choice_keyed" and (
        gt.letter is None or len(gt.letter) != 1 or not gt.letter.isupper()
    ):
        issues.append(
            ("answer", f'task {task!r} needs the option letter on the answer\'s first line ("C\\n[s, e]")')
        )
    if spec.thk_tmp == "point" and not gt.key_times:
        issues.append(
            ("key_frames", f"task {task!r} needs key frames (their times are the thinking reward's targets)")
        )
    if (spec.thk_spa == "claims" or spec.ans_spa == "claims") and not any(kf.objects for kf in gt.key_frames):
        issues.append(("key_items", f"task {task!r} needs boxes of the objects on its key frames"))
    if spec.ans_spa == "box" and gt.ref_box is None:
        issues.append(
            ("answer", f"task {task!r} needs a reference box <box>[x1, y1, x2, y2]</box> in the answer")
        )
    return issues
