"""The VISD paper's Tables 1-4 laid out as the paper lays them out, a model's reports beside its VISD row.

    tables = paper_tables({"worldsense": report, "vstar": report, ...})   # report.json of each benchmark
    tables["markdown"], tables["tables"]["Table 2"]["rows"]["this model"]["Average"]

Each report is what `python -m visd_exp.evaluate benchmark=NAME` writes (its `table`: the paper's columns in
percent, and its `settings`). VISD's row is the paper's (seed 001, section 4.2, Tables 1-4: step 1,200).
Table 2's Average is the mean of its dataset-level (bold-faced) metrics: WorldSense Overall, VideoMMMU
Overall, LRR Acc and TVGBench mIoU (the paper's VISD row: (39.9 + 53.8 + 73.5 + 24.8) / 4 = 48.0, and its
Qwen2.5-VL-7B row (35.5 + 51.2 + 59.3 + 16.3) / 4 = 40.6, which is how the four were identified); it is
given only when all four are present. Video-MME (v1) is not in the paper: it follows as a table of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: table -> [(benchmark, its column in the report's `table`, the paper's header)] in the paper's order
LAYOUT: dict[str, list[tuple[str, str, str]]] = {
    "Table 1: V-STaR": [
        ("vstar", c, c)
        for c in (
            "What Acc",
            "When tIoU Chain1",
            "When tIoU Chain2",
            "Where sIoU Chain1",
            "Where sIoU Chain2",
            "mAM",
            "mLGM",
        )
    ],
    "Table 2: general benchmarks": [
        *[
            ("worldsense", c, f"WorldSense {c}")
            for c in ("Overall", "Recognition", "Understanding", "Reasoning")
        ],
        *[
            ("videommmu", c, f"VideoMMMU {c}")
            for c in ("Overall", "Comprehension", "Adaptation", "Perception")
        ],
        ("longvideo_reason", "Acc", "LRR Acc"),
        ("tvgbench", "mIoU", "TVGBench mIoU"),
    ],
    "Table 3: Video-MME-v2 (64 frames, no subtitles)": [
        ("videomme_v2", c, c)
        for c in ("Non-Lin Score", "Level 1", "Level 2", "Level 3", "Consistency", "Coherence", "Avg Acc")
    ],
    "Table 4: Charades-STA": [("charades_sta", c, c) for c in ("R@0.3", "R@0.5", "R@0.7", "mIoU")],
    "Video-MME (not in the paper)": [("videomme", c, c) for c in ("Overall", "Short", "Medium", "Long")],
}
#: Table 2's Average: its dataset-level metrics, (benchmark, column)
AVERAGE_OF = (
    ("worldsense", "Overall"),
    ("videommmu", "Overall"),
    ("longvideo_reason", "Acc"),
    ("tvgbench", "mIoU"),
)
AVERAGE = "Average"

#: VISD (Ours) as the paper reports it, by (benchmark, column): Tables 1-4 of seed 001
PAPER_VISD: dict[tuple[str, str], float] = {
    **dict(
        zip(
            [(b, c) for b, c, _ in LAYOUT["Table 1: V-STaR"]],
            (61.9, 26.8, 27.2, 26.7, 6.3, 35.1, 48.9),
            strict=True,
        )
    ),
    **dict(
        zip(
            [(b, c) for b, c, _ in LAYOUT["Table 2: general benchmarks"]],
            (39.9, 39.4, 40.4, 40.5, 53.8, 49.7, 42.3, 69.3, 73.5, 24.8),
            strict=True,
        )
    ),
    ("table2", AVERAGE): 48.0,
    **dict(
        zip(
            [(b, c) for b, c, _ in LAYOUT["Table 3: Video-MME-v2 (64 frames, no subtitles)"]],
            (9.4, 13.4, 8.2, 7.9, 10.2, 8.0, 23.8),
            strict=True,
        )
    ),
    **dict(
        zip([(b, c) for b, c, _ in LAYOUT["Table 4: Charades-STA"]], (67.3, 46.1, 21.6, 44.6), strict=True)
    ),
}
MODEL_ROW, PAPER_ROW = "this model", "VISD (paper)"


def _value(reports: Mapping[str, Mapping], benchmark: str, column: str) -> float | None:
    value = (reports.get(benchmark) or {}).get("table", {}).get(column)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def table2_average(reports: Mapping[str, Mapping]) -> float | None:
    """The mean of Table 2's four dataset-level metrics; None unless all four were evaluated."""
    values = [_value(reports, b, c) for b, c in AVERAGE_OF]
    return None if any(v is None for v in values) else sum(values) / len(values)


def paper_tables(reports: Mapping[str, Mapping]) -> dict:
    """{"tables": {title: {"columns", "rows": {this model, VISD (paper)}}}, "settings", "markdown"}."""
    tables, lines = {}, []
    for title, layout in LAYOUT.items():
        columns = [header for _, _, header in layout]
        ours = [_value(reports, b, c) for b, c, _ in layout]
        paper = [PAPER_VISD.get((b, c)) for b, c, _ in layout]
        if title.startswith("Table 2"):
            columns.append(AVERAGE)
            ours.append(table2_average(reports))
            paper.append(PAPER_VISD[("table2", AVERAGE)])
        rows = {MODEL_ROW: dict(zip(columns, ours, strict=True))}
        if any(v is not None for v in paper):
            rows[PAPER_ROW] = dict(zip(columns, paper, strict=True))
        tables[title] = {"columns": columns, "rows": rows}
        lines += [
            f"## {title}",
            "",
            "| Model | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name, row in rows.items():
            cells = ["-" if v is None else f"{v + 0.0:.1f}" for v in row.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    settings = {name: dict(report.get("settings") or {}) for name, report in reports.items()}
    lines += ["## Settings per benchmark", ""]
    for name, values in sorted(settings.items()):
        shown = ", ".join(f"{k}={v}" for k, v in values.items() if v is not None)
        lines.append(f"- {name}: {shown or 'n/a'}")
    missing = [
        b for b in dict.fromkeys(b for layout in LAYOUT.values() for b, _, _ in layout) if b not in reports
    ]
    if missing:
        lines += ["", "Not evaluated (shown as -): " + ", ".join(missing) + "."]
    return {"tables": tables, "settings": settings, "missing": missing, "markdown": "\n".join(lines) + "\n"}
