"""One dumped rollout as a PNG: three rows of per-token bars (answer-only Delta_t, Eq. 29; feedback-
conditioned Delta_t, Eq. 30; delta^judge, Eq. 31), coloured on the same diverging scale as the HTML view,
with the tokens as x labels."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from visd_exp.inspect.colors import diverging_cmap
from visd_exp.inspect.credit_html import PANELS, scales

MAX_WIDTH_IN = 40.0  # longer completions get every k-th token labelled


def tick_label(token: str) -> str:
    return (token.replace("\n", "\\n") or "∅")[:16]


def rollout_figure(dump: dict, index: int) -> Figure:
    rollout = dump["rollouts"][index]
    tokens = rollout["tokens"]
    n = len(tokens)
    width = min(MAX_WIDTH_IN, max(8.0, 0.12 * n + 1.5))
    every = max(1, int(np.ceil(0.12 * n / (width - 1.5)))) if n else 1
    fig = Figure(figsize=(width, 7.5), layout="constrained")
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    cmap, vmax = diverging_cmap(), scales(rollout)
    x = np.arange(n)
    for ax, (key, title, group) in zip(axes, PANELS):
        values = np.asarray(rollout[key], dtype=float)
        norm = Normalize(-vmax[group], vmax[group])
        ax.bar(
            x,
            values,
            width=0.9,
            color=cmap(norm(np.clip(values, -vmax[group], vmax[group]))),
            edgecolor="#888888",
            linewidth=0.3,
        )
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.005)
    axes[-1].set_xticks(
        x[::every], [tick_label(t) for t in tokens[::every]], rotation=90, fontsize=6, parse_math=False
    )
    r = rollout
    fig.suptitle(
        f"step {dump['step']}, rollout {index} ({r.get('task')}): reward {r['reward']:.3f}, "
        f"advantage {r['advantage']:+.3f}, λ {dump.get('lambda', float('nan')):.3f}",
        fontsize=11,
    )
    return fig
