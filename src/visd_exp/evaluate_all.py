"""The paper's Tables 1-4 for one model: each benchmark evaluated by its protocol, laid out as the paper.

    python -m visd_exp.evaluate_all model_dir=/ckpt/hf_model benchmarks.worldsense.data_file=... \
        benchmarks.worldsense.video_root=... benchmarks.vstar.data_file=... ...
    python -m visd_exp.evaluate_all reports.worldsense=logs/evaluate/runs/<time>/report.json

Each benchmark with a `data_file` runs as `evaluate benchmark=NAME` (its conf/benchmark/NAME.yaml) into
<run>/<NAME>/; `reports` takes report.json files of earlier `evaluate benchmark=NAME` runs instead.
Writes <run>/tables.md and tables.json (benchmarks/paper.py: the paper's layout, Table 2's Average, VISD's
published row beside, each benchmark's settings).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from visd_exp.utils.setup import find_project_root

os.environ.setdefault("PROJECT_ROOT", str(find_project_root()))
log = logging.getLogger(__name__)


def evaluate_overrides(cfg: DictConfig, name: str, spec, out_dir: Path) -> list[str]:
    """The `evaluate` command line of one benchmark."""
    overrides = [f"benchmark={name}", f"data_file={spec.data_file}", f"paths.output_dir={out_dir}"]
    if spec.get("video_root"):
        overrides.append(f"data.video_root={spec.video_root}")
    for key in ("model_dir", "ckpt_path"):
        if cfg.get(key):
            overrides.append(f"{key}={cfg[key]}")
    for key in ("root_dir", "data_dir", "log_dir", "cache_dir"):
        overrides.append(f"paths.{key}={cfg.paths[key]}")
    return [*overrides, *cfg.get("overrides", [])]


def run_benchmark(overrides: list[str]) -> dict:
    """evaluate(benchmark=...) in this process, composed as its command line would be."""
    from hydra import compose

    from visd_exp.evaluate import evaluate

    return evaluate(compose(config_name="evaluate", overrides=overrides))


def collect_reports(cfg: DictConfig, out_dir: Path) -> dict[str, dict]:
    """{benchmark: report.json} from `reports` files and from the benchmarks run here."""
    reports = {}
    for name, path in (cfg.get("reports") or {}).items():
        if not path:
            continue
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reports.{name}={path}: no such report.json")
        report = json.loads(path.read_text())
        if report.get("benchmark") != name or "table" not in report:
            raise ValueError(f"reports.{name}={path}: not a report of `evaluate benchmark={name}`")
        reports[name] = report
    for name, spec in cfg.benchmarks.items():
        if not spec.get("data_file"):
            continue
        if name in reports:
            raise ValueError(f"{name}: both reports.{name} and benchmarks.{name}.data_file are given")
        log.info("evaluate_all: %s", name)
        reports[name] = run_benchmark(evaluate_overrides(cfg, name, spec, out_dir / name))
    if not reports:
        raise ValueError("nothing to lay out: give benchmarks.<name>.data_file=... or reports.<name>=...")
    return reports


def evaluate_all(cfg: DictConfig) -> dict:
    from visd_exp.benchmarks.paper import paper_tables

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = collect_reports(cfg, out_dir)
    tables = paper_tables(reports)
    source = cfg.get("model_dir") or cfg.get("ckpt_path") or "the reports given"
    (out_dir / "tables.md").write_text(f"# The paper's tables for {source}\n\n" + tables["markdown"])
    (out_dir / "tables.json").write_text(json.dumps({"model": str(source), **tables}, indent=2))
    print((out_dir / "tables.md").read_text())
    return tables


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate_all.yaml")
def main(cfg: DictConfig) -> None:
    evaluate_all(cfg)


if __name__ == "__main__":
    main()
