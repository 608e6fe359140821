"""Rescoring without a model: a benchmark's report.json recomputed from saved predictions.

    python -m visd_exp.benchmarks.rescore --benchmark worldsense --data worldsense_qa.json \
        --predictions logs/evaluate/runs/<time>/predictions.jsonl --out rescored/

Each prediction row needs its record's `id` and the raw completion, `prediction` (what evaluate writes in
predictions.jsonl); everything else is read again from the published file, so another scorer version or
another answer judge (V-STaR: `--judge openai --judge-base-url ... --judge-model ... --judge-api-key-env
VAR`) gives a new report. Videos are neither decoded nor looked for (`--video-root` is only needed by a
reader that probes a video's size, as STGR's normalised boxes do). The frame size the model saw (V-STaR's claim
boxes are rescaled from it) is taken from the prediction row when it has one (evaluate writes it).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from visd_exp.benchmarks import benchmark_fields, benchmark_tables, build_answer_judge, run_benchmarks
from visd_exp.data.formats import read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.evaluation import score_prediction
from visd_exp.utils.setup import find_project_root

log = logging.getLogger(__name__)

#: fields of a prediction row that came from the evaluated sample and not from the file (the plan's)
SAMPLE_FIELDS = ("frame_size", "frame_times", "video_duration")


def benchmark_config(name: str) -> dict:
    """conf/benchmark/NAME.yaml as a plain dict (its reader's data.format and options)."""
    path = find_project_root() / "conf" / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"--benchmark {name}: no {path}; one of {', '.join(known)}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of predictions.jsonl; an error names the line and the field."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: <json>: {exc.msg} at column {exc.colno}") from None
            for field in ("id", "prediction"):
                if field not in row:
                    raise ValueError(f"{path}:{lineno}: {field}: missing (each row needs id and prediction)")
            if row["prediction"] is not None and not isinstance(row["prediction"], str):
                raise ValueError(f"{path}:{lineno}: prediction: expected the raw completion text")
            rows.append({**row, "_where": f"{path}:{lineno}"})
    return rows


def read_benchmark_records(
    name: str, data: str | Path, video_root: str | Path | None, config: Mapping
) -> dict[str, dict]:
    """{id: record} of the benchmark's records in the published file (read as evaluate reads it)."""
    data_cfg = config.get("data") or {}
    options = {"vstar_prompts": data_cfg.get("vstar_prompts") or "project", "videos": "unchecked"}
    loaded = read_file(data, data_cfg.get("format"), video_root, None, None, options)
    records, unreadable = {}, []
    for lineno, record in loaded.entries:
        if isinstance(record, (FieldError, json.JSONDecodeError)) or not isinstance(record, dict):
            unreadable.append(f"{data}:{lineno}: {getattr(record, 'field', '<record>')}: {record}")
            continue
        if record.get("source") == name:
            records[str(record["id"])] = record
    if not records:
        detail = f"; {len(unreadable)} unreadable, first: {unreadable[0]}" if unreadable else ""
        raise ValueError(f"{data} (format {loaded.format}): no {name} record{detail}")
    if unreadable:
        log.warning("%s: %d records unreadable, first: %s", data, len(unreadable), unreadable[0])
    return records


def rescored_rows(
    predictions: Sequence[Mapping], records: Mapping[str, dict], allow_missing: bool = False
) -> tuple[list[dict], dict]:
    """Evaluation rows (evaluation.score_prediction + the benchmark fields) rebuilt from each prediction's
    id and raw text, and the counts of what did not match. Unknown ids are an error; records without a
    prediction are an error unless `allow_missing` (then scored as an empty reply)."""
    by_id: dict[str, Mapping] = {}
    for row in predictions:
        key = str(row["id"])
        if key not in records:
            raise ValueError(f"{row['_where']}: id: {key!r} is not a record of the benchmark's file")
        if key in by_id:
            raise ValueError(
                f"{row['_where']}: id: {key!r} predicted twice (first at {by_id[key]['_where']})"
            )
        by_id[key] = row
    missing = [key for key in records if key not in by_id]
    if missing and not allow_missing:
        raise ValueError(
            f"{len(missing)} of {len(records)} records have no prediction (first: {missing[:3]}); "
            "pass --allow-missing to score them as empty replies"
        )
    rows = []
    for key, record in records.items():
        saved = by_id.get(key, {})
        sample = {**record, **{k: saved[k] for k in SAMPLE_FIELDS if k in saved}}
        if "frame_size" not in sample and sample.get("image_size") is not None:
            sample["frame_size"] = list(sample["image_size"])  # boxes read unscaled
        rows.append({**score_prediction(saved.get("prediction") or "", sample), **benchmark_fields(sample)})
    return rows, {"predictions": len(by_id), "records": len(records), "missing_predictions": len(missing)}


def rescore(
    benchmark: str,
    data: str | Path,
    predictions: str | Path,
    out: str | Path,
    video_root: str | Path | None = None,
    judge: Mapping | None = None,
    allow_missing: bool = False,
) -> dict:
    """report.json (and report.md, vstar_results.json for V-STaR) in `out`, from saved predictions."""
    config = benchmark_config(benchmark)
    answer_judge = build_answer_judge(judge)  # an openai judge without its key stops here
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_benchmark_records(benchmark, data, video_root, config)
    rows, matched = rescored_rows(read_predictions(predictions), records, allow_missing)
    try:
        reports = run_benchmarks(rows, answer_judge, out, vstar_file=data)
    finally:
        answer_judge.close()
    report = {
        "benchmark": benchmark,
        "table": reports[benchmark]["table"],
        "data_file": str(data),
        "predictions": str(predictions),
        "rescored": matched,
        "benchmarks": reports,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(
        f"# Rescored {benchmark} from {predictions}\n\n" + benchmark_tables(reports)
    )
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m visd_exp.benchmarks.rescore", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--benchmark", required=True, help="a conf/benchmark/ name, e.g. videomme_v2")
    parser.add_argument("--data", required=True, help="the published file or folder, unchanged")
    parser.add_argument("--predictions", required=True, help="an evaluate run's predictions.jsonl")
    parser.add_argument("--out", required=True, help="folder for report.json")
    parser.add_argument(
        "--video-root",
        default=None,
        help="as evaluate's data.video_root (only readers that probe videos need it)",
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="score records without a prediction as empty replies"
    )
    parser.add_argument(
        "--judge", default="rule", choices=("rule", "openai"), help="V-STaR's 0-3 answer judge"
    )
    parser.add_argument("--judge-base-url", default=None)
    parser.add_argument(
        "--judge-model", default=None, help="e.g. Qwen/Qwen2.5-72B-Instruct (the paper's judge)"
    )
    parser.add_argument("--judge-api-key-env", default=None, help="the NAME of the variable holding the key")
    args = parser.parse_args(argv)
    judge = {
        "kind": args.judge,
        "base_url": args.judge_base_url,
        "model": args.judge_model,
        "api_key_env": args.judge_api_key_env,
    }
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = rescore(
        args.benchmark, args.data, args.predictions, args.out, args.video_root, judge, args.allow_missing
    )
    print((Path(args.out) / "report.md").read_text())
    return report


if __name__ == "__main__":
    main()
