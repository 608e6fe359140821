"""One dumped rollout as HTML: its tokens coloured by Delta_t under the answer-only teacher (Eq. 29) and
the feedback-conditioned teacher (Eq. 30) side by side, and by their difference delta^judge (Eq. 31).

The first two panels share one colour scale (so they compare directly); delta^judge has its own. Each
scale is symmetric around 0 and saturates at the 98th percentile of |values| (colors.symmetric_limit).
Token text is HTML-escaped; hovering a token shows its position and value.
"""

from __future__ import annotations

import html
from pathlib import Path

from visd_exp.inspect.colors import (
    NEGATIVE,
    POSITIVE,
    WHITE,
    diverging_rgb,
    symmetric_limit,
    text_colour,
    to_hex,
)
from visd_exp.inspect.credit_dumps import describe

PANELS = (  # dump key, title, scale group
    ("delta_answer_only", "Δ_t, answer-only teacher r = (a*, e) (Eq. 29)", "teachers"),
    ("delta_feedback", "Δ_t, feedback-conditioned teacher r = (a*, e, f) (Eq. 30)", "teachers"),
    ("delta_judge", "δ^judge_t = feedback − answer-only (Eq. 31)", "judge"),
)

STYLE = """<style>
.vc-wrap{font-family:sans-serif;font-size:13px}
.vc-info{white-space:pre-wrap;font-family:monospace;font-size:12px;background:#f7f7f7;padding:6px;margin:0 0 8px 0}
.vc-panels{display:flex;gap:10px;align-items:flex-start}
.vc-panel{flex:1 1 0;min-width:0;border:1px solid #ddd;padding:6px}
.vc-panel h4{margin:0 0 4px 0;font-size:13px}
.vc-tokens{font-family:monospace;font-size:12px;line-height:1.8;white-space:pre-wrap;word-break:break-word}
.vc-tok{border-radius:2px;padding:0 1px}
.vc-legend{display:flex;align-items:center;gap:6px;font-size:11px;margin:2px 0 6px 0}
.vc-bar{width:150px;height:10px;border:1px solid #999}
</style>"""


def display_token(token: str) -> str:
    """Visible text of a token: newlines shown as ↵ (then broken), an empty string as ∅."""
    if token == "":
        return "∅"
    return token.replace("\n", "↵\n")


def token_spans(tokens: list[str], values: list[float], vmax: float) -> str:
    """Tokens as <span>s with the diverging background colour of their value."""
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values)):
        rgb = diverging_rgb(float(value) if value is not None else float("nan"), vmax)
        tip = html.escape(f"#{i} {token!r} {float(value):+.4f}" if value is not None else f"#{i} {token!r}")
        spans.append(
            f'<span class="vc-tok" style="background:{to_hex(rgb)};color:{text_colour(rgb)}" title="{tip}">'
            f"{html.escape(display_token(token))}</span>"
        )
    return "".join(spans)


def legend(vmax: float, label: str = "") -> str:
    """A gradient bar red → white → blue labelled −vmax, 0, +vmax."""
    gradient = f"linear-gradient(to right,{to_hex(NEGATIVE)},{to_hex(WHITE)},{to_hex(POSITIVE)})"
    return (
        f'<div class="vc-legend">{html.escape(label)}<span>{-vmax:+.3g}</span>'
        f'<span class="vc-bar" style="background:{gradient}"></span><span>{vmax:+.3g}</span>'
        f"<span>(0 = white; saturates at ±{vmax:.3g})</span></div>"
    )


def scales(rollout: dict) -> dict[str, float]:
    """vmax per scale group of PANELS."""
    groups: dict[str, list] = {}
    for key, _, group in PANELS:
        groups.setdefault(group, []).append(rollout[key])
    return {group: symmetric_limit(*arrays) for group, arrays in groups.items()}


def rollout_html(dump: dict, index: int) -> str:
    """An HTML fragment (style + header + three panels) for rollout `index` of a dump."""
    rollout = dump["rollouts"][index]
    vmax = scales(rollout)
    panels = []
    for key, title, group in PANELS:
        panels.append(
            f'<div class="vc-panel"><h4>{html.escape(title)}</h4>{legend(vmax[group], "scale ")}'
            f'<div class="vc-tokens">{token_spans(rollout["tokens"], rollout[key], vmax[group])}</div></div>'
        )
    return (
        f'{STYLE}<div class="vc-wrap"><pre class="vc-info">{html.escape(describe(dump, index))}</pre>'
        f'<div class="vc-panels">{"".join(panels)}</div></div>'
    )


def write_page(fragment: str, path: str | Path, title: str) -> Path:
    """A standalone HTML document holding `fragment`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body>\n{fragment}\n</body></html>\n",
        encoding="utf-8",
    )
    return path
