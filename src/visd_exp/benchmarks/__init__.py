"""Benchmark protocols over evaluation rows: V-STaR, Charades-STA, TVGBench.

    reports = run_benchmarks(rows, judge, out_dir, vstar_file="V_STaR_test.json")
    reports["vstar"], reports["charades_sta"], reports["tvgbench"]     # those whose rows are present

A row is evaluation.score_prediction's row plus the sample fields a benchmark reads (``benchmark_fields``):
``source`` picks the benchmark. For V-STaR, ``vstar_results.json`` (the official results file, see
vstar.export_results) is written into ``out_dir`` when the published file is known.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from visd_exp.benchmarks.answer_judge import AnswerJudgeError, build_answer_judge
from visd_exp.benchmarks.grounding import SOURCES as GROUNDING_SOURCES
from visd_exp.benchmarks.grounding import grounding_report
from visd_exp.benchmarks.tables import benchmark_tables, paper_table
from visd_exp.benchmarks.vstar import export_results, score_vstar

__all__ = [
    "AnswerJudgeError",
    "BENCHMARK_FIELDS",
    "BENCHMARK_SOURCES",
    "benchmark_fields",
    "benchmark_tables",
    "build_answer_judge",
    "paper_table",
    "run_benchmarks",
]

log = logging.getLogger(__name__)

#: source -> "module:function" of a benchmark scored from its records' own `benchmark` fields
#: (score(rows) -> {"table": {paper column: value}, "categories", "counts", "unparsable_rule"}; see
#: docs/BENCHMARKS.md). One line per benchmark; imported only when its rows are present.
SCORERS: dict[str, str] = {
    "worldsense": "visd_exp.benchmarks.worldsense:score",
    "videommmu": "visd_exp.benchmarks.videommmu:score",
    "videomme": "visd_exp.benchmarks.videomme:score",
    "videomme_v2": "visd_exp.benchmarks.videomme_v2:score",
    "longvideo_reason": "visd_exp.benchmarks.longvideo_reason:score",
}
BENCHMARK_SOURCES = ("vstar", *GROUNDING_SOURCES)
#: the sample fields the benchmarks read, copied into a benchmark row's prediction record
BENCHMARK_FIELDS = (
    "source",
    "question",
    "segment",
    "duration",
    "image_size",
    "frame_size",
    "key_frames",
    "key_items",
    "vstar",
    "benchmark",  # the scoring fields of a SCORERS benchmark (answer, options, categories, group ids)
)
RESULTS_FILE = "vstar_results.json"


def benchmark_fields(sample: Mapping) -> dict:
    """The fields of a benchmark sample that its row needs ({} for a sample of no benchmark)."""
    if sample.get("source") not in BENCHMARK_SOURCES and sample.get("source") not in SCORERS:
        return {}
    return {k: sample[k] for k in BENCHMARK_FIELDS if k in sample}


def run_benchmarks(
    rows: Sequence[Mapping],
    judge=None,
    out_dir: str | Path | None = None,
    vstar_file: str | Path | None = None,
) -> dict[str, dict]:
    """The report of every benchmark whose rows are present ({} when none is)."""
    sources = {row.get("source") for row in rows}
    reports: dict[str, dict] = {}
    if "vstar" in sources:
        if judge is None:
            raise AnswerJudgeError("V-STaR rows need an answer judge (answer_judge in conf/evaluate.yaml)")
        report, items = score_vstar(rows, judge)
        if out_dir is not None:
            target = Path(out_dir) / RESULTS_FILE
            if not vstar_file:
                report["results_file_error"] = (
                    "the published V-STaR file is not known (vstar_file / data_file)"
                )
            else:
                try:
                    report["results_file"] = str(export_results(vstar_file, items, target))
                except (OSError, ValueError) as exc:  # the report stands; the file cannot be written
                    report["results_file_error"] = f"{type(exc).__name__}: {exc}"
            if "results_file_error" in report:
                log.error("V-STaR: %s was not written: %s", RESULTS_FILE, report["results_file_error"])
        reports["vstar"] = report
    for source in GROUNDING_SOURCES:
        if source in sources:
            reports[source] = grounding_report(rows, source)
    for source, target in SCORERS.items():
        if source in sources:
            module, function = target.split(":")
            score = getattr(importlib.import_module(module), function)
            reports[source] = score([row for row in rows if row.get("source") == source])
    for name, report in reports.items():  # every report's `table`: the paper's columns, in percent
        report.setdefault("table", paper_table(name, report))
    return reports
