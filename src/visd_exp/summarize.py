"""Table-5-style summary of a multirun: per experiment, the mean over the final window of each run
(the final 100 steps, or the final 10% of a shorter run) of reward, answer accuracy and grad norm,
then mean and std over seeds.

    python -m visd_exp.summarize logs/train/multiruns/<time>      # writes summary.csv and summary.md there

Also runs by itself at the end of every multirun (a Hydra callback in conf/hydra/default.yaml).
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path

import yaml

COLUMNS = {  # summary column -> logged metric
    "reward": "reward",
    "accuracy": "rewards/ans/mean",
    "temporal_iou": "rewards/ans_tmp/mean",
    "grad_norm": "grad_norm",
}


def final_window(num_steps: int) -> int:
    """The final 100 steps, or the final 10% when that is shorter (at least 1)."""
    return max(1, min(100, math.ceil(0.1 * num_steps)))


def run_name(job_dir: Path) -> str:
    """The experiment of a job: its `+experiment=` override, else 'default'."""
    overrides = job_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        for item in yaml.safe_load(overrides.read_text()) or []:
            if item.lstrip("+").startswith("experiment="):
                return item.split("=", 1)[1]
    return "default"


def run_seed(job_dir: Path) -> int | None:
    config = job_dir / ".hydra" / "config.yaml"
    return yaml.safe_load(config.read_text()).get("seed") if config.is_file() else None


def read_rows(metrics_csv: Path) -> list[dict]:
    """Training rows only: validation is logged in rows of its own (val/* columns, no loss)."""
    with metrics_csv.open() as handle:
        return [row for row in csv.DictReader(handle) if row.get("loss") not in (None, "")]


def window_means(rows: list[dict]) -> dict[str, float]:
    """Mean of each column over the final window; NaN/empty values are skipped (masked components)."""
    tail = rows[-final_window(len(rows)) :]
    out = {}
    for column, key in COLUMNS.items():
        values = [
            float(r[key]) for r in tail if r.get(key) not in (None, "") and not math.isnan(float(r[key]))
        ]
        out[column] = statistics.fmean(values) if values else math.nan
    out["steps"] = len(rows)
    return out


def summarize(sweep_dir: str | Path) -> list[dict]:
    """Write summary.csv and summary.md into `sweep_dir`; returns the table rows."""
    sweep_dir = Path(sweep_dir)
    per_experiment: dict[str, list[dict]] = {}
    for metrics_csv in sorted(sweep_dir.glob("*/csv/version_0/metrics.csv")):
        job_dir = metrics_csv.parents[2]
        rows = read_rows(metrics_csv)
        if rows:
            result = {**window_means(rows), "seed": run_seed(job_dir), "job": job_dir.name}
            per_experiment.setdefault(run_name(job_dir), []).append(result)
    table = []
    for name, runs in sorted(per_experiment.items()):
        row = {
            "experiment": name,
            "runs": len(runs),
            "seeds": " ".join(str(r["seed"]) for r in runs),
            "steps": min(r["steps"] for r in runs),
        }
        for column in COLUMNS:
            values = [r[column] for r in runs if not math.isnan(r[column])]
            row[column] = statistics.fmean(values) if values else math.nan
            row[f"{column}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        table.append(row)
    write_csv(sweep_dir / "summary.csv", table)
    (sweep_dir / "summary.md").write_text(markdown(table))
    return table


def write_csv(path: Path, table: list[dict]) -> None:
    fields = ["experiment", "runs", "seeds", "steps"] + [c for col in COLUMNS for c in (col, f"{col}_std")]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


def markdown(table: list[dict]) -> str:
    head = "| Setting | Reward | Acc | tIoU | Grad-norm | runs | steps |\n|---|---|---|---|---|---|---|\n"

    def cell(row, column):
        mean, std = row[column], row[f"{column}_std"]
        return (
            "n/a" if math.isnan(mean) else (f"{mean:.3f} ± {std:.3f}" if row["runs"] > 1 else f"{mean:.3f}")
        )

    lines = [
        f"| {r['experiment']} | {cell(r, 'reward')} | {cell(r, 'accuracy')} | {cell(r, 'temporal_iou')} "
        f"| {cell(r, 'grad_norm')} | {r['runs']} | {r['steps']} |"
        for r in table
    ]
    note = "\nMeans over the final 100 steps of each run (the final 10% of a shorter run); ± is the std over seeds.\n"
    return head + "\n".join(lines) + "\n" + note


try:  # the Hydra callback: summarise every multirun when it ends
    from hydra.experimental.callback import Callback

    class MultirunSummary(Callback):
        def on_multirun_end(self, config, **kwargs) -> None:
            sweep_dir = Path(config.hydra.sweep.dir)
            if sweep_dir.is_dir():
                table = summarize(sweep_dir)
                print(f"summary of {len(table)} experiments: {sweep_dir / 'summary.md'}")
except ImportError:  # pragma: no cover
    pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m visd_exp.summarize <multirun directory>", file=sys.stderr)
        return 2
    summarize(args[0])
    print((Path(args[0]) / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
