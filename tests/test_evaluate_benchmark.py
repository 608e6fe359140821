"""`evaluate benchmark=NAME` (conf/benchmark/) and rescoring saved predictions without a model
(benchmarks/rescore.py). The WorldSense file and replies are test_bench_worldsense's; its table below is
worked out by hand there and again here from the replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from visd_exp.utils.setup import find_project_root

CONF = str(find_project_root() / "conf")
BENCHMARKS = (
    "charades_sta",
    "longvideo_reason",
    "tvgbench",
    "videomme",
    "videomme_v2",
    "videommmu",
    "vstar",
    "worldsense",
)


def compose_eval(*overrides: str):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def test_benchmark_settings_apply_and_the_command_line_wins():
    cfg = compose_eval("benchmark=worldsense")
    assert cfg.benchmark.name == "worldsense"
    assert (cfg.data.format, cfg.data.max_frames, cfg.data.max_pixels) == ("worldsense", 32, 151200)
    assert cfg.max_completion_length == 1024  # evaluate.yaml's own 256 is overridden
    cfg = compose_eval("benchmark=worldsense", "data.max_frames=4", "max_completion_length=7")
    assert (cfg.data.max_frames, cfg.data.min_frames, cfg.max_completion_length) == (4, 32, 7)
    plain = compose_eval()
    assert plain.get("benchmark") is None and plain.max_completion_length == 256


def test_every_benchmark_file_names_itself():
    present = sorted(p.stem for p in (Path(CONF) / "benchmark").glob("*.yaml"))
    for name in present:
        cfg = compose_eval(f"benchmark={name}")
        assert cfg.benchmark.name == name, name
        own = OmegaConf.load(Path(CONF) / "benchmark" / f"{name}.yaml")
        assert "format" in own.data, f"conf/benchmark/{name}.yaml: no data.format (null = detected)"
        assert cfg.data.format == own.data.format, name
        assert "max_completion_length" in own, f"conf/benchmark/{name}.yaml: no max_completion_length"
        assert cfg.max_completion_length == own.max_completion_length, name  # the benchmark's, not evaluate's
    assert set(present) <= set(BENCHMARKS)


def test_benchmark_needs_the_published_file_and_its_records():
    from visd_exp.evaluate import benchmark_name, check_benchmark_rows

    with pytest.raises(ValueError, match="benchmark=worldsense: give the published file"):
        benchmark_name(compose_eval("benchmark=worldsense"))
    with pytest.raises(NotImplementedError, match="subtitles"):
        benchmark_name(compose_eval("benchmark=worldsense", "benchmark.subtitles=true", "data_file=x.json"))
    assert benchmark_name(compose_eval("benchmark=worldsense", "data_file=x.json")) == "worldsense"
    assert benchmark_name(compose_eval("data_file=x.json")) is None
    data_cfg = {"test_file": "qa.json", "format": None}
    with pytest.raises(
        ValueError, match=r"qa.json \(read as data.format=detected\) holds no worldsense record"
    ):
        check_benchmark_rows("worldsense", [{"source": "videommmu"}], data_cfg)
    check_benchmark_rows("worldsense", [{"source": "worldsense"}], data_cfg)


@pytest.fixture(scope="module")
def worldsense(tmp_path_factory):
    """The invented worldsense_qa.json and its reply per record (id -> (reply, letter read, correct))."""
    from test_bench_worldsense import QA, REPLIES, _pretty, _write_video

    root = tmp_path_factory.mktemp("ws-rescore")
    _write_video(root / "videos" / "SynWsA01.mp4")
    for vid in ("SynWsB02", "SynWsC03"):
        (root / "videos" / f"{vid}.mp4").write_bytes((root / "videos" / "SynWsA01.mp4").read_bytes())
    path = root / "worldsense_qa.json"
    path.write_text(_pretty(QA), encoding="utf-8")
    return path, REPLIES


def _write_predictions(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rescore_worldsense_from_saved_predictions(worldsense, tmp_path):
    from visd_exp.benchmarks.rescore import main

    data, replies = worldsense
    preds = _write_predictions(
        tmp_path / "predictions.jsonl",
        [
            {"id": key, "prediction": reply, "task": "multiple_choice"}
            for key, (reply, _, _) in replies.items()
        ],
    )
    main(
        [
            "--benchmark",
            "worldsense",
            "--data",
            str(data),
            "--predictions",
            str(preds),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # 4 of the 7 replies are right (A01/task0, B02/task1, C03/task0, C03/task1); Recognition 1 of 2,
    # Understanding 1 of 2, Reasoning 2 of 3
    assert report["table"] == pytest.approx(
        {"Overall": 400 / 7, "Recognition": 50.0, "Understanding": 50.0, "Reasoning": 200 / 3}
    )
    assert list(report["table"]) == ["Overall", "Recognition", "Understanding", "Reasoning"]
    assert report["rescored"] == {"predictions": 7, "records": 7, "missing_predictions": 0}
    assert (
        "| Overall | Recognition | Understanding | Reasoning |"
        in (tmp_path / "out" / "report.md").read_text()
    )


def test_rescore_refuses_what_does_not_match(worldsense, tmp_path):
    from visd_exp.benchmarks.rescore import rescore

    data, replies = worldsense
    keys = list(replies)
    out = tmp_path / "out"
    unknown = _write_predictions(tmp_path / "a.jsonl", [{"id": "nope", "prediction": "A"}])
    with pytest.raises(ValueError, match=r"a.jsonl:1: id: 'nope' is not a record"):
        rescore("worldsense", data, unknown, out)
    twice = _write_predictions(tmp_path / "b.jsonl", [{"id": keys[0], "prediction": "A"}] * 2)
    with pytest.raises(ValueError, match=r"b.jsonl:2: id: .* predicted twice \(first at .*b.jsonl:1\)"):
        rescore("worldsense", data, twice, out)
    no_text = _write_predictions(tmp_path / "c.jsonl", [{"id": keys[0]}])
    with pytest.raises(ValueError, match=r"c.jsonl:1: prediction: missing"):
        rescore("worldsense", data, no_text, out)
    some = _write_predictions(tmp_path / "d.jsonl", [{"id": keys[0], "prediction": replies[keys[0]][0]}])
    with pytest.raises(ValueError, match="6 of 7 records have no prediction"):
        rescore("worldsense", data, some, out)
    report = rescore("worldsense", data, some, out, allow_missing=True)  # the 6 others: empty replies
    assert report["rescored"]["missing_predictions"] == 6
    assert report["benchmarks"]["worldsense"]["counts"]["total"] == 7
    with pytest.raises(ValueError, match="--benchmark nosuch: no .*nosuch.yaml"):
        rescore("nosuch", data, some, out)
    with pytest.raises(ValueError, match="no videommmu record"):
        rescore("videommmu", data, some, out)


def _report(name: str, table: dict, **settings) -> dict:
    return {"benchmark": name, "table": table, "settings": settings}


def test_paper_tables_layout_average_and_the_paper_row():
    from visd_exp.benchmarks.paper import paper_tables

    reports = {
        "worldsense": _report(
            "worldsense",
            {"Overall": 40.0, "Recognition": 30.0, "Understanding": 50.0, "Reasoning": 45.0},
            max_frames=32,
        ),
        "videommmu": _report(
            "videommmu", {"Overall": 50.0, "Comprehension": 40.0, "Adaptation": 30.0, "Perception": 80.0}
        ),
        "longvideo_reason": _report("longvideo_reason", {"Acc": 70.0}),
    }
    tables = paper_tables(reports)
    t2 = tables["tables"]["Table 2: general benchmarks"]
    assert t2["columns"] == [
        "WorldSense Overall", "WorldSense Recognition", "WorldSense Understanding", "WorldSense Reasoning",
        "VideoMMMU Overall", "VideoMMMU Comprehension", "VideoMMMU Adaptation", "VideoMMMU Perception",
        "LRR Acc", "TVGBench mIoU", "Average",
    ]  # fmt: skip
    # TVGBench missing: no Average; the paper's row is the paper's
    assert t2["rows"]["this model"]["Average"] is None and t2["rows"]["this model"]["LRR Acc"] == 70.0
    assert (
        t2["rows"]["VISD (paper)"]["Average"] == 48.0 and t2["rows"]["VISD (paper)"]["TVGBench mIoU"] == 24.8
    )
    reports["tvgbench"] = _report("tvgbench", {"mIoU": 20.0, "R@0.3": 1.0, "R@0.5": 1.0, "R@0.7": 1.0})
    tables = paper_tables(reports)
    # Average = (40 + 50 + 70 + 20) / 4 = 45: the four dataset-level metrics only
    assert tables["tables"]["Table 2: general benchmarks"]["rows"]["this model"]["Average"] == 45.0
    md = tables["markdown"]
    assert "| this model | 40.0 | 30.0 | 50.0 | 45.0 | 50.0 | 40.0 | 30.0 | 80.0 | 70.0 | 20.0 | 45.0 |" in md
    assert "| VISD (paper) | 61.9 | 26.8 | 27.2 | 26.7 | 6.3 | 35.1 | 48.9 |" in md  # Table 1
    assert "| VISD (paper) | 67.3 | 46.1 | 21.6 | 44.6 |" in md  # Table 4
    assert "| this model | - | - | - | - | - | - | - |" in md  # V-STaR not evaluated
    assert "- worldsense: max_frames=32" in md
    assert set(tables["missing"]) == {"vstar", "videomme_v2", "charades_sta", "videomme"}


@pytest.mark.slow
def test_evaluate_all_runs_a_benchmark_and_takes_a_report(worldsense, tmp_path, cache_dir):
    """`python -m visd_exp.evaluate_all`: WorldSense evaluated on the tiny model (benchmark=worldsense),
    Charades-STA taken from a report.json already written; tables.md in the paper's layout."""
    from test_train_e2e import run_module

    data, _ = worldsense
    charades = tmp_path / "charades_report.json"
    charades.write_text(
        json.dumps(_report("charades_sta", {"R@0.3": 60.0, "R@0.5": 40.0, "R@0.7": 20.0, "mIoU": 38.0}))
    )
    out = tmp_path / "all"
    overrides = ["model.warm_start=null", "max_completion_length=4", "data.min_frames=4", "data.max_frames=4"]
    overrides = "[" + ",".join(f"'{o}'" for o in overrides) + "]"  # quoted: each element holds "="
    run_module(
        "evaluate_all",
        f"benchmarks.worldsense.data_file={data}",
        f"benchmarks.worldsense.video_root={data.parent}",
        f"reports.charades_sta={charades}",
        f"overrides={overrides}",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    tables = json.loads((out / "tables.json").read_text())
    ws = json.loads((out / "worldsense" / "report.json").read_text())
    row = tables["tables"]["Table 2: general benchmarks"]["rows"]["this model"]
    assert row["WorldSense Overall"] == pytest.approx(ws["table"]["Overall"])
    assert tables["tables"]["Table 4: Charades-STA"]["rows"]["this model"]["mIoU"] == 38.0
    assert tables["settings"]["worldsense"]["max_completion_length"] == 4
    assert "## Table 2: general benchmarks" in (out / "tables.md").read_text()


def test_evaluate_all_refuses_what_it_cannot_lay_out(tmp_path):
    from visd_exp.evaluate_all import collect_reports

    base = OmegaConf.load(Path(CONF) / "evaluate_all.yaml")
    with pytest.raises(ValueError, match="nothing to lay out"):
        collect_reports(base, tmp_path)
    plain = tmp_path / "report.json"
    plain.write_text(json.dumps({"table": {}}))  # a report of evaluate without benchmark=
    cfg = OmegaConf.merge(base, {"reports": {"worldsense": str(plain)}})
    with pytest.raises(
        ValueError, match=r"reports.worldsense=.*: not a report of `evaluate benchmark=worldsense`"
    ):
        collect_reports(cfg, tmp_path)
    cfg = OmegaConf.merge(base, {"reports": {"worldsense": str(tmp_path / "none.json")}})
    with pytest.raises(FileNotFoundError, match="no such report.json"):
        collect_reports(cfg, tmp_path)
    plain.write_text(json.dumps(_report("worldsense", {"Overall": 1.0})))
    both = {"reports": {"worldsense": str(plain)}, "benchmarks": {"worldsense": {"data_file": "qa.json"}}}
    with pytest.raises(ValueError, match="both reports.worldsense and benchmarks.worldsense.data_file"):
        collect_reports(OmegaConf.merge(base, both), tmp_path)
