"""Training curves: a NaN-skipping moving average, the mean over seeds per experiment, and figures.

Figures are built with `matplotlib.figure.Figure` (no pyplot state), so nothing is shown unless asked.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visd_exp.inspect.runs import Run

CURVES = {  # logged metric -> panel title
    "reward": "total reward (group mean): reward",
    "reward_std": "within-group reward std: reward_std",
    "rewards/ans/mean": "answer accuracy: rewards/ans",
    "rewards/ans_tmp/mean": "temporal IoU: rewards/ans_tmp",
    "rewards/ans_spa/mean": "spatial IoU: rewards/ans_spa",
    "rewards/thk_tmp/mean": "thinking temporal (as rewarded): rewards/thk_tmp",
    "rewards/thk_tmp_segment/mean": "thinking temporal, segment version (Eq. 11)",
    "rewards/thk_tmp_point/mean": "thinking temporal, point version (Eq. 12)",
    "rewards/thk_spa/mean": "spatial grounding: rewards/thk_spa",
    "rewards/fmt/mean": "format: rewards/fmt",
    "grad_norm": "grad norm",
    "entropy": "entropy",
    "lambda": "λ (distillation weight)",
    "credit/weight_mean": "mean credit weight m_t",
}
SPARSE_PREFIXES = ("val/",)  # logged on a few steps only: drawn as points, not smoothed


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average over the last `window` steps that skips NaN (mean of the finite values
    in the window; NaN only where the whole window is NaN). window <= 1 returns the values."""
    series = pd.Series(np.asarray(values, dtype=float))
    if window <= 1:
        return series.to_numpy()
    return series.rolling(int(window), min_periods=1).mean().to_numpy()


def experiments(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by experiment name (sorted), seeds in load order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    return dict(sorted(groups.items()))


def experiment_curve(runs: list[Run], metric: str, window: int) -> pd.DataFrame | None:
    """Per step: mean and std over seeds of the smoothed metric, and how many seeds had a value.
    None when no run logged a finite value of `metric`."""
    per_seed = {}
    for i, run in enumerate(runs):
        if metric in run.metrics and run.metrics[metric].notna().any():
            values = run.metrics[metric].to_numpy(float)
            if not metric.startswith(SPARSE_PREFIXES):
                values = smooth(values, window)
            per_seed[i] = pd.Series(values, index=run.metrics["step"].to_numpy())
    if not per_seed:
        return None
    table = pd.DataFrame(per_seed).sort_index()
    out = pd.DataFrame(
        {"mean": table.mean(axis=1), "std": table.std(axis=1, ddof=0), "n": table.count(axis=1)}
    )
    return out[out["n"] > 0].rename_axis("step").reset_index()


def colours(names) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def plot_metric(ax, runs: list[Run], metric: str, window: int, title: str | None = None) -> bool:
    """Draw one line per experiment (mean over seeds, ±std band with several seeds). False if no data."""
    groups = experiments(runs)
    palette = colours(groups)
    drawn = False
    for name, group in groups.items():
        curve = experiment_curve(group, metric, window)
        if curve is None:
            continue
        drawn = True
        label = f"{name} (n={len(group)})" if len(group) > 1 else name
        few = metric.startswith(SPARSE_PREFIXES) or len(curve) <= 30  # so isolated points stay visible
        style = {"marker": "o", "markersize": 3} if few else {}
        ax.plot(curve["step"], curve["mean"], color=palette[name], label=label, lw=1.5, **style)
        if curve["n"].max() > 1:
            ax.fill_between(
                curve["step"],
                curve["mean"] - curve["std"],
                curve["mean"] + curve["std"],
                color=palette[name],
                alpha=0.2,
                lw=0,
            )
    ax.set_title(title or metric, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    return drawn


def grid_figure(runs: list[Run], metrics: dict[str, str], window: int, ncols: int = 3) -> Figure:
    """All metrics in one grid, one legend for the experiments."""
    ncols = max(1, min(ncols, len(metrics)))
    nrows = max(1, -(-len(metrics) // ncols))
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (metric, title) in zip(axes, metrics.items()):
        plot_metric(ax, runs, metric, window, title)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    legend = {}  # label -> handle, over all panels (an experiment may lack some metrics)
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(
            list(legend.values()),
            list(legend),
            loc="outside upper center",
            ncols=min(len(legend), 6),
            fontsize=8,
        )
    return fig


def metric_figure(runs: list[Run], metric: str, window: int, title: str | None = None) -> Figure:
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    if plot_metric(ax, runs, metric, window, title):
        ax.legend(fontsize=8)
    return fig


def slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")


def extra_metrics(runs: list[Run], prefixes=SPARSE_PREFIXES) -> dict[str, str]:
    """Logged columns with these prefixes (e.g. val/*), present in any run."""
    names = sorted({c for run in runs for c in run.metrics.columns if c.startswith(prefixes)})
    return {name: name for name in names}


def save_figures(
    runs: list[Run],
    out_dir: str | Path,
    window: int,
    metrics: dict[str, str] | None = None,
    name: str = "curves",
    dpi: int = 110,
) -> list[Path]:
    """<out_dir>/<name>.png (the grid) and <out_dir>/<name>_<metric>.png per metric; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(CURVES if metrics is None else metrics)
    paths = [out_dir / f"{name}.png"]
    grid_figure(runs, metrics, window).savefig(paths[0], dpi=dpi)
    for metric, title in metrics.items():
        path = out_dir / f"{name}_{slug(metric)}.png"
        metric_figure(runs, metric, window, title).savefig(path, dpi=dpi)
        paths.append(path)
    return paths
