"""The Table-5-style summary of runs: the mean over the final window (final 100 steps, or the final 10% of
a shorter run) of reward, accuracy, temporal IoU and grad norm, per run and then mean ± std over seeds.
The window and the per-run means are visd_exp.summarize's own (`final_window`, `window_means`)."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from visd_exp.inspect.runs import Run
from visd_exp.summarize import COLUMNS, final_window, markdown, window_means


def run_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: experiment, seed, job, steps, window, and the window means."""
    rows = []
    for run in runs:
        records = run.metrics.to_dict("records")
        means = window_means(records)
        rows.append(
            {
                "experiment": run.name,
                "seed": run.seed,
                "job": run.path.name,
                "steps": means.pop("steps"),
                "window": final_window(len(records)),
                **means,
            }
        )
    return pd.DataFrame(rows)


def experiment_rows(runs: list[Run]) -> list[dict]:
    """Rows in visd_exp.summarize's schema (for its `markdown`): mean and std over seeds per experiment."""
    per_run = run_table(runs)
    table = []
    for name, group in per_run.groupby("experiment", sort=True):
        row = {
            "experiment": name,
            "runs": len(group),
            "seeds": " ".join(str(s) for s in group["seed"]),
            "steps": int(group["steps"].min()),
        }
        for column in COLUMNS:
            values = [v for v in group[column] if not math.isnan(v)]
            row[column] = statistics.fmean(values) if values else math.nan
            row[f"{column}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        table.append(row)
    return table


def summary_markdown(runs: list[Run]) -> str:
    return markdown(experiment_rows(runs))
