"""Markdown tables of the benchmark reports, in the VISD paper's column order, in percent (one decimal).

- V-STaR (paper Table 1): What Acc | When tIoU Chain1 | When tIoU Chain2 | Where sIoU Chain1 |
  Where sIoU Chain2 | mAM | mLGM (the means of the two chains' temporal / spatial IoU, V-STaR's accuracy,
  and its arithmetic / logarithmic geometric means; mLGM x 100 like the other columns). A second table
  gives the per-chain details eval.py prints (R1@IoU, AP@IoU, AM, LGM).
- Charades-STA (paper Table 4): R@0.3 | R@0.5 | R@0.7 | mIoU.
- TVGBench (Time-R1's order): mIoU | R@0.3 | R@0.5 | R@0.7.
- Every other benchmark (benchmarks.SCORERS) carries its own `table` {paper column: percent}, in order.

`paper_table(name, report)` is that row as a mapping, the same for every benchmark: report.json's `table`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

VSTAR_COLUMNS = (
    "What Acc",
    "When tIoU Chain1",
    "When tIoU Chain2",
    "Where sIoU Chain1",
    "Where sIoU Chain2",
    "mAM",
    "mLGM",
)
CHARADES_COLUMNS = ("R@0.3", "R@0.5", "R@0.7", "mIoU")
TVGBENCH_COLUMNS = ("mIoU", "R@0.3", "R@0.5", "R@0.7")
TITLES = {
    "vstar": "V-STaR",
    "charades_sta": "Charades-STA",
    "tvgbench": "TVGBench",
    "videomme": "Video-MME",
    "videomme_v2": "Video-MME-v2",
    "worldsense": "WorldSense",
    "videommmu": "VideoMMMU",
    "longvideo_reason": "LongVideo-Reason",
}


def pct(x) -> str:
    """A fraction as a percentage with one decimal ("n/a" when missing or not finite)."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{100.0 * float(x) + 0.0:.1f}"


def _table(columns, values) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        "| " + " | ".join(pct(v) for v in values) + " |",
    ]


def vstar_table(report: Mapping) -> str:
    c1, c2 = report["chain1"], report["chain2"]
    values = (
        report["answer"]["accuracy"],
        c1["temporal"]["mIoU"],
        c2["temporal"]["mIoU"],
        c1["spatial"]["mIoU"],
        c2["spatial"]["mIoU"],
        report["mAM"],
        report["mLGM"],
    )
    lines = [
        f"## V-STaR ({report['num_records']} records, {report['answer'].get('skipped_empty', 0)} skipped for an "
        f"empty answer as eval.py skips them; answers graded by {report.get('grader', 'n/a')})",
        "",
        *_table(VSTAR_COLUMNS, values),
        "",
        "| chain | R1@0.3 | R1@0.5 | R1@0.7 | tIoU | AP@0.1 | AP@0.3 | AP@0.5 | AP@0.7 | AP@0.9 | sIoU | AM | LGM |",
        "|" + "---|" * 13,
    ]
    for chain in (1, 2):
        c = report[f"chain{chain}"]
        t, s = c["temporal"], c["spatial"]
        cells = [t["R1@0.3"], t["R1@0.5"], t["R1@0.7"], t["mIoU"]]
        cells += [s[f"AP@{x}"] for x in ("0.1", "0.3", "0.5", "0.7", "0.9")] + [s["mIoU"], c["AM"], c["LGM"]]
        lines.append(f"| {chain} | " + " | ".join(pct(v) for v in cells) + " |")
    a = report["answer"]
    lines += [
        "",
        f"Answers: {a['correct']} correct of {report['num_records']}, mean rating {a['mean_rating']:.2f} "
        f"({a['unparseable']} unparseable, {a.get('judge_failed', 0)} judge failures).",
    ]
    return "\n".join(lines) + "\n"


_GROUNDING_KEYS = {"R@0.3": "R1@0.3", "R@0.5": "R1@0.5", "R@0.7": "R1@0.7", "mIoU": "mIoU"}


def grounding_table(name: str, report: Mapping) -> str:
    columns = CHARADES_COLUMNS if name == "charades_sta" else TVGBENCH_COLUMNS
    lines = [
        f"## {TITLES[name]} ({report['num_queries']} queries)",
        "",
        *_table(columns, [report[_GROUNDING_KEYS[c]] for c in columns]),
    ]
    return "\n".join(lines) + "\n"


def _percent(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else 100.0 * float(x)


def paper_table(name: str, report: Mapping) -> dict[str, float | None]:
    """{the paper's column: value in percent} in the paper's order (None: not computable)."""
    if name == "vstar":
        c1, c2 = report["chain1"], report["chain2"]
        values = (
            report["answer"]["accuracy"],
            c1["temporal"]["mIoU"],
            c2["temporal"]["mIoU"],
            c1["spatial"]["mIoU"],
            c2["spatial"]["mIoU"],
            report["mAM"],
            report["mLGM"],
        )
        return {column: _percent(v) for column, v in zip(VSTAR_COLUMNS, values, strict=True)}
    if name in ("charades_sta", "tvgbench"):
        columns = CHARADES_COLUMNS if name == "charades_sta" else TVGBENCH_COLUMNS
        return {column: _percent(report[_GROUNDING_KEYS[column]]) for column in columns}
    return dict(report["table"])  # a SCORERS benchmark's own table, already in percent


def scored_table(name: str, report: Mapping) -> str:
    """Markdown for a SCORERS benchmark: its table (percent, one decimal) and its answer counts."""
    table = report["table"]
    cells = [
        "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v) + 0.0:.1f}" for v in table.values()
    ]
    counts = report.get("counts", {})
    lines = [
        f"## {TITLES.get(name, name)} ({counts.get('total', 'n/a')} questions)",
        "",
        "| " + " | ".join(table) + " |",
        "|" + "---|" * len(table),
        "| " + " | ".join(cells) + " |",
    ]
    if counts:
        lines += ["", "Counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."]
    if report.get("unparsable_rule"):
        lines += [f"Unparsable answers: {report['unparsable_rule']}"]
    return "\n".join(lines) + "\n"


def benchmark_tables(reports: Mapping[str, Mapping]) -> str:
    """One table per benchmark present, V-STaR first; "" when there is none."""
    parts = []
    for name in ("vstar", "charades_sta", "tvgbench"):
        if name in reports:
            parts.append(
                vstar_table(reports[name]) if name == "vstar" else grounding_table(name, reports[name])
            )
    for name, report in reports.items():
        if name not in ("vstar", "charades_sta", "tvgbench"):
            parts.append(scored_table(name, report))
    return "\n".join(parts)
