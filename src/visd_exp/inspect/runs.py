"""Find and load training runs: a run directory, or a multirun directory with one job per sub-directory.

A run's metrics come from `csv/version_0/metrics.csv`, or, when that is missing, from the offline wandb
log. Either way they are tidied to one row per step (rows logged at the same step, e.g. validation, are
merged), sorted by step, numeric columns only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from visd_exp.summarize import run_name, run_seed

METRICS_CSV = Path("csv") / "version_0" / "metrics.csv"
WANDB_GLOB = "wandb/offline-run-*/run-*.wandb"


@dataclass
class Run:
    path: Path
    name: str  # the experiment: the `+experiment=` override, else "default"
    seed: int | None
    metrics: pd.DataFrame  # one row per step, a `step` column, sorted
    source: str  # "csv" or "wandb"


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / METRICS_CSV).is_file() or any(path.glob(WANDB_GLOB))


def find_run_dirs(path: str | Path) -> list[Path]:
    """[path] for a run; the jobs (0, 1, ..., numeric order first) of a multirun."""
    path = Path(path)
    if is_run_dir(path):
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    jobs = [p for p in path.iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per step (first non-NaN value of each column), numeric columns only, sorted by step."""
    frame = frame.apply(pd.to_numeric, errors="coerce")
    if "step" not in frame and "trainer/global_step" in frame:
        frame = frame.rename(columns={"trainer/global_step": "step"})
    if "step" not in frame:
        frame = frame.assign(step=frame["_step"] if "_step" in frame else range(len(frame)))
    frame = frame.dropna(subset=["step"]).astype({"step": int})
    if frame.empty:
        return pd.DataFrame({"step": pd.Series(dtype=int)})
    return frame.groupby("step", sort=True).first().reset_index()


def load_metrics(run_dir: str | Path) -> tuple[pd.DataFrame, str]:
    """(metrics, source): the CSV when present, else the newest offline wandb log."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS_CSV).is_file():
        return tidy(pd.read_csv(run_dir / METRICS_CSV)), "csv"
    logs = sorted(run_dir.glob(WANDB_GLOB), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise FileNotFoundError(f"{run_dir} has neither {METRICS_CSV} nor {WANDB_GLOB}")
    from visd_exp.inspect.wandb_offline import read_history

    return tidy(pd.DataFrame(read_history(logs[-1]))), "wandb"


def seed_of(run_dir: Path) -> int | None:
    """The seed from .hydra/config.yaml, else from config_resolved.yaml."""
    seed = run_seed(run_dir)
    resolved = run_dir / "config_resolved.yaml"
    if seed is None and resolved.is_file():
        seed = (yaml.safe_load(resolved.read_text()) or {}).get("seed")
    return seed


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    metrics, source = load_metrics(run_dir)
    return Run(run_dir, run_name(run_dir), seed_of(run_dir), metrics, source)


def load_runs(path: str | Path) -> list[Run]:
    """Every run under `path` (a run or a multirun directory)."""
    return [load_run(p) for p in find_run_dirs(path)]


def latest_run_dir(start: str | Path | None = None) -> Path | None:
    """The newest logs/train/{runs,multiruns}/<time> found from `start` (default: cwd) or its parents."""
    start = Path(start or os.getcwd()).resolve()
    for base in (start, *start.parents):
        candidates = [p for kind in ("runs", "multiruns") for p in (base / "logs" / "train" / kind).glob("*")]
        candidates = [p for p in candidates if p.is_dir()]
        if candidates:
            return max(candidates, key=lambda p: p.stat().st_mtime)
    return None


def resolve_run_dir(value: str | Path | None) -> Path:
    """RUN_DIR as given (env VISD_RUN_DIR in the notebooks), else the latest run under logs/."""
    if value:
        return Path(value).expanduser().resolve()
    latest = latest_run_dir()
    if latest is None:
        raise FileNotFoundError("set VISD_RUN_DIR (or RUN_DIR) to a run or multirun directory")
    return latest
