"""`evaluate benchmark=NAME` (conf/benchmark/) and rescoring saved predictions without a model
(benchmarks/rescore.py). The WorldSense file and replies are test_bench_worldsense's; its table below is
worked out by hand there and again here from the replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

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
        assert cfg.data.format, f"conf/benchmark/{name}.yaml: data.format is not set"
        assert cfg.max_completion_length >= 256, name
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
    from test_bench_worldsense import QA, REPLIES, _pretty

    root = tmp_path_factory.mktemp("ws-rescore")
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
