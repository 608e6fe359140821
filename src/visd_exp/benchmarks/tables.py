"""Markdown tables of the benchmark reports, in the VISD paper's column order, in percent (one decimal).

- V-STaR (paper Table 1): What Acc | When tIoU Chain1 | When tIoU Chain2 | Where sIoU Chain1 |
  Where sIoU Chain2 | mAM | mLGM (the means of the two chains' temporal / spatial IoU, V-STaR's accuracy,
  and its arithmetic / logarithmic geometric means; mLGM x 100 like the other columns). A second table
  gives the per-chain details eval.py prints (R1@IoU, AP@IoU, AM, LGM).
- Charades-STA (paper Table 4): R@0.3 | R@0.5 | R@0.7 | mIoU.
- TVGBench (Time-R1's order): mIoU | R@0.3 | R@0.5 | R@0.7.
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
TITLES = {"vstar": "V-STaR", "charades_sta": "Charades-STA", "tvgbench": "TVGBench"}


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
        f"## V-STaR ({report['num_records']} records; answers graded by {report.get('grader', 'n/a')})",
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


def grounding_table(name: str, report: Mapping) -> str:
    columns = CHARADES_COLUMNS if name == "charades_sta" else TVGBENCH_COLUMNS
    key = {"R@0.3": "R1@0.3", "R@0.5": "R1@0.5", "R@0.7": "R1@0.7", "mIoU": "mIoU"}
    lines = [
        f"## {TITLES[name]} ({report['num_queries']} queries)",
        "",
        *_table(columns, [report[key[c]] for c in columns]),
    ]
    return "\n".join(lines) + "\n"


def benchmark_tables(reports: Mapping[str, Mapping]) -> str:
    """One table per benchmark present, V-STaR first; "" when there is none."""
    parts = []
    for name in ("vstar", "charades_sta", "tvgbench"):
        if name in reports:
            parts.append(
                vstar_table(reports[name]) if name == "vstar" else grounding_table(name, reports[name])
            )
    return "\n".join(parts)
