"""Token-credit dumps, `<run>/credit_dumps/step_NNNNNN.json` (written by visd_exp.teacher.dump):
find them, load one step, and pick a rollout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from visd_exp.inspect.runs import find_run_dirs

DUMP_DIR = "credit_dumps"


def dump_paths(run_dir: str | Path) -> dict[int, Path]:
    """step -> dump file, sorted by step."""
    found = {}
    for path in Path(run_dir, DUMP_DIR).glob("step_*.json"):
        match = re.fullmatch(r"step_(\d+)\.json", path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def find_dump_run(path: str | Path) -> Path | None:
    """The run holding credit dumps: `path` itself, else the first job of a multirun that has some."""
    path = Path(path)
    if dump_paths(path):
        return path
    for run_dir in find_run_dirs(path) if path.is_dir() else []:
        if dump_paths(run_dir):
            return run_dir
    return None


def load_dump(run_dir: str | Path, step: int | None = None) -> dict:
    """The dump of `step` (default: the latest one)."""
    paths = dump_paths(run_dir)
    if not paths:
        raise FileNotFoundError(f"no {DUMP_DIR}/step_*.json in {run_dir}")
    if step is None:
        step = max(paths)
    if step not in paths:
        raise KeyError(f"no dump for step {step}; dumped steps: {list(paths)}")
    return json.loads(paths[step].read_text())


def judge_mass(rollout: dict) -> float:
    """sum_t |delta^judge_t| (Eq. 31): how much the feedback moved the teacher on this rollout."""
    values = np.asarray(rollout.get("delta_judge") or [0.0], dtype=float)
    return float(np.nansum(np.abs(values)))


def pick_rollout(dump: dict, index: int | None = None) -> int:
    """`index` when given, else the rollout with the largest |delta^judge| mass."""
    rollouts = dump["rollouts"]
    if not rollouts:
        raise ValueError(f"the dump of step {dump.get('step')} holds no rollouts")
    if index is not None:
        if not 0 <= index < len(rollouts):
            raise IndexError(f"rollout {index} out of range: the dump holds {len(rollouts)}")
        return index
    return int(np.argmax([judge_mass(r) for r in rollouts]))


def describe(dump: dict, index: int) -> str:
    """Plain-text header of one rollout: step, task, question, reference answer, feedback, reward."""
    r = dump["rollouts"][index]
    lines = [
        f"step {dump['step']}  rollout {index} of {len(dump['rollouts'])}  id {r.get('id')}  task {r.get('task')}",
        f"lambda {dump.get('lambda')}  credit {dump.get('credit')} (k={dump.get('k')}, eps_w={dump.get('eps_w')})",
        f"reward {r['reward']:.4f}  advantage {r['advantage']:+.4f}  tokens {len(r['tokens'])}"
        f"  sum|delta_judge| {judge_mass(r):.4f}",
        f"question: {r['question']}",
        f"answer:   {r['answer']}",
        f"feedback: {r['feedback'] if r.get('feedback') is not None else '(none: no judge feedback for this rollout)'}",
    ]
    return "\n".join(lines)


def rollouts_table(dump: dict):
    """One row per dumped rollout: task, reward, advantage, tokens, mean Delta_t of both teachers, mass."""
    import pandas as pd

    rows = []
    for i, r in enumerate(dump["rollouts"]):
        rows.append(
            {
                "rollout": i,
                "task": r.get("task"),
                "reward": r["reward"],
                "advantage": r["advantage"],
                "tokens": len(r["tokens"]),
                "feedback": r.get("feedback") is not None,
                "mean_delta_answer_only": float(np.mean(r["delta_answer_only"] or [np.nan])),
                "mean_delta_feedback": float(np.mean(r["delta_feedback"] or [np.nan])),
                "sum_abs_delta_judge": judge_mass(r),
            }
        )
    return pd.DataFrame(rows).set_index("rollout")


def top_tokens(dump: dict, index: int, n: int = 12):
    """The n tokens with the largest |delta^judge_t|, with both Delta_t, m_t and A^_t."""
    import pandas as pd

    r = dump["rollouts"][index]
    frame = pd.DataFrame(
        {
            "token": r["tokens"],
            "delta_answer_only": r["delta_answer_only"],
            "delta_feedback": r["delta_feedback"],
            "delta_judge": r["delta_judge"],
            "weight": r["weight"],
            "token_advantage": r["token_advantage"],
        }
    )
    frame.index.name = "position"
    return frame.loc[frame["delta_judge"].abs().sort_values(ascending=False).index[:n]]
