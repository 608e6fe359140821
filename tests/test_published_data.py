"""Published files as users have them on disk, through every entry point that takes a data file:
`data.validate` and `data.convert` (command lines), and 3-step training runs from the command line on
an STGR-RL-shaped and a Video-R1-shaped file. Fixtures: tests/published_fixtures.py (written by hand in
the published shapes, over mp4s made here)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

import published_fixtures as pf
from conftest import PROJECT_ROOT
from test_train_e2e import run_module

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch process at a time on 2 cores


def cli(module: str, *args, capsys=None) -> subprocess.CompletedProcess:
    """`python -m visd_exp.data.<module> args`: in this process when `capsys` is given (the same `main`,
    without a second torch start-up on 2 cores), else as a subprocess."""
    if capsys is not None:
        import importlib

        capsys.readouterr()
        code = importlib.import_module(f"visd_exp.data.{module}").main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return subprocess.run(
        [sys.executable, "-m", f"visd_exp.data.{module}", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {
        "stgr": pf.write_stgr_rl(root / "stgr"),
        "video_r1": pf.write_video_r1(root / "video_r1"),
        "vstar": pf.write_vstar(root / "vstar"),
        "charades": pf.write_charades(root / "charades"),
        "charades_json": pf.write_charades_json(root / "charades_json"),
        "tvgbench": pf.write_tvgbench(root / "tvgbench"),
    }


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_convert_stgr_rl_writes_the_project_schema_and_says_what_it_skipped(files, tmp_path, capsys):
    out = tmp_path / "stgr.jsonl"
    result = cli("convert", files["stgr"], "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"read {files['stgr']} as stgr: 6 records -> 6 queries" in result.stdout
    assert "not used" not in result.stdout.split("wrote")[0]  # the gqa image record is read too
    assert f"wrote 6 records to {out}; skipped 0 with problems, 0 not used" in result.stdout
    records = {r["id"]: r for r in read_jsonl(out)}
    assert [records[k]["task"] for k in "123456"] == [
        "temporal_grounding",
        "temporal_grounding_choice",
        "spatio_temporal_qa",
        "multiple_choice",
        "free_form",
        "visual_qa",
    ]
    assert records["6"]["image_path"] == str(files["stgr"].parent / "gqa" / "1.jpg")
    assert records["6"]["image_size"] == [640, 480] and "video_path" not in records["6"]
    assert records["1"]["segment"] == [0.5, 3.0] and records["2"]["segment"] == [0.0, 5.5]
    # normalised key_items -> pixels of the probed 64 x 48 frame: 0.1875 * 64 = 12, 0.2083 * 48 = 10.0
    assert records["3"]["image_size"] == [64, 48]
    assert records["3"]["key_items"] == {
        "4": {"red square": [[12.0, 10.0, 28.0, 26.0]]},
        "12": {"red square": [[32.0, 10.0, 48.0, 26.0]]},
    }
    assert records["3"]["key_frames"] == [{"idx": 4, "time": 1.0}, {"idx": 12, "time": 3.0}]
    assert records["4"]["options"] == ["A. left", "B. right", "C. up", "D. down"]
    assert records["1"]["video_path"] == str(files["stgr"].parent / "timerft" / "a.mp4")
    # the written file is valid project data on its own
    assert cli("validate", out, capsys=capsys).returncode == 0


def test_convert_charades_clips_an_end_past_the_video_and_counts_it(files, tmp_path, capsys):
    out = tmp_path / "charades.jsonl"
    result = cli("convert", files["charades"], "--out", out, capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert "clipped 1 interval end(s)" in result.stdout
    segments = [r["segment"] for r in read_jsonl(out)]
    assert segments == [[0.0, 3.2], [2.5, 6.0], [1.0, 4.0]]  # the videos last 6 s


@pytest.mark.parametrize(
    "name, count",
    [("stgr", 6), ("video_r1", 5), ("vstar", 10), ("charades", 3), ("charades_json", 2), ("tvgbench", 1)],
)
def test_validate_reads_every_published_format(files, name, count, capsys):
    result = cli("validate", files[name], capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: {count} records in 1 file" in result.stdout


def test_a_bad_published_record_is_one_line_naming_file_line_and_field(files, tmp_path, capsys):
    records = json.loads(files["stgr"].read_text())
    records[2]["key_items"]["4"]["red square"][0] = [12, 10, 28, 26]  # pixels where normalised belong
    path = files["stgr"].parent / "bad.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    result = cli("validate", path, capsys=capsys)
    assert result.returncode == 1
    (line,) = [x for x in result.stdout.splitlines() if re.match(rf"{re.escape(str(path))}:\d+: ", x)]
    assert line.startswith(f"{path}:4: key_items[4][red square][0]: ")


def train_three_steps(data_file, run_dir, cache_dir):
    args = [
        "data=jsonl",
        f"data.train_file={data_file}",
        "trainer.max_steps=3",
        "model.warm_start=null",
        "data.batch_size=2",
        "algorithm.max_completion_length=24",
        "logger=csv",
        "dumps.credit_every_n_steps=0",
        "save_hf_model=false",
        f"paths.cache_dir={cache_dir}",
        f"paths.log_dir={run_dir / 'logs'}",
        f"paths.output_dir={run_dir}",
    ]
    run_module("train", *args, env=ONE_THREAD)
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stgr", "video_r1"])
def test_three_training_steps_on_a_published_file(files, name, tmp_path, cache_dir):
    rows = train_three_steps(files[name], tmp_path / "run", cache_dir)
    steps = [r for r in rows if r.get("reward")]
    assert len(steps) == 3
    setup = next(r for r in rows if r.get("data/train_records"))
    # STGR's image record is trained on (one image); Video-R1's image records are still not used
    records, unused = {"stgr": (6, 0), "video_r1": (5, 1)}[name]
    assert float(setup["data/train_records"]) == records and float(setup["data/train_unused"]) == unused


def evaluate(data_file, out_dir, cache_dir) -> dict:
    args = [
        f"data_file={data_file}",
        "model.warm_start=null",
        "max_completion_length=24",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out_dir}",
    ]
    run_module("evaluate", *args, env=ONE_THREAD)
    return json.loads((out_dir / "report.json").read_text())


def test_evaluate_on_vstar_writes_the_report_and_the_official_results_file(files, tmp_path, cache_dir):
    report = evaluate(files["vstar"], tmp_path, cache_dir)
    vstar = report["benchmarks"]["vstar"]
    assert {"answer", "chain1", "chain2", "mAM", "mLGM", "grader"} <= set(vstar), sorted(vstar)
    assert vstar["num_records"] == 2 and not vstar["missing_rows"]
    table = (tmp_path / "report.md").read_text()
    assert (
        "| What Acc | When tIoU Chain1 | When tIoU Chain2 | Where sIoU Chain1 | Where sIoU Chain2 | mAM | mLGM |"
        in table
    )
    results = json.loads((tmp_path / "vstar_results.json").read_text())
    published = json.loads(files["vstar"].read_text())
    assert [r["vid"] for r in results] == [r["vid"] for r in published]
    for record, original in zip(results, published):
        assert {k: record[k] for k in original} == original  # the published record, unchanged
        assert {
            "answer_vqa",
            "answer_temporal",
            "answer_temporal_2",
            "answer_spatial",
            "answer_spatial_2",
        } <= set(record)
        assert isinstance(record["answer_spatial"], dict) and isinstance(record["answer_spatial_2"], dict)


def test_evaluate_on_charades_sta_text_reports_r1_and_miou(files, tmp_path, cache_dir):
    report = evaluate(files["charades"], tmp_path, cache_dir)
    charades = report["benchmarks"]["charades_sta"]
    assert charades["num_queries"] == 3
    assert set(charades) >= {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"}
    assert "| R@0.3 | R@0.5 | R@0.7 | mIoU |" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_sft_on_an_stgr_sft_file_then_rl_from_its_hf_model(tmp_path, cache_dir):
    """The paper's two stages from the command line: SFT on STGR-SFT's reasoning_process (normalised boxes
    rescaled by the reader), then RL whose student (and teacher) start from the SFT run's hf_model."""
    import torch
    from safetensors.torch import load_file

    sft_file = pf.write_stgr_sft(tmp_path / "data")
    sft_dir, rl_dir = tmp_path / "sft", tmp_path / "rl"
    common = ["data=jsonl", "data.batch_size=2", "logger=csv", f"paths.cache_dir={cache_dir}"]
    run_module(
        "train", "+experiment=sft", f"data.train_file={sft_file}", "trainer.max_steps=3", *common,
        f"paths.log_dir={tmp_path / 'logs'}", f"paths.output_dir={sft_dir}", env=ONE_THREAD,
    )  # fmt: skip
    assert (sft_dir / "checkpoints" / "last.ckpt").is_file()
    with open(sft_dir / "csv" / "version_0" / "metrics.csv") as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle) if r.get("loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]

    rl_file = pf.write_stgr_rl(tmp_path / "data")
    run_module(
        "train", f"data.train_file={rl_file}", f"model.init_from={sft_dir / 'hf_model'}", "trainer.max_steps=2",
        "algorithm.max_completion_length=24", "dumps.credit_every_n_steps=0", *common,
        f"paths.log_dir={tmp_path / 'logs'}", f"paths.output_dir={rl_dir}", env=ONE_THREAD,
    )  # fmt: skip
    resolved = (rl_dir / "config_resolved.yaml").read_text()
    assert f"init_from: {sft_dir / 'hf_model'}" in resolved
    # RL moved on from the SFT weights (lr > 0), so the two hf_models differ but share every tensor name
    sft_weights = load_file(sft_dir / "hf_model" / "model.safetensors")
    rl_weights = load_file(rl_dir / "hf_model" / "model.safetensors")
    assert sft_weights.keys() == rl_weights.keys()
    assert any(not torch.equal(sft_weights[k], rl_weights[k]) for k in sft_weights)


def test_the_stgr_download_layout_is_a_named_source_roots_mapping(tmp_path):
    """data.source_roots=open_o3_video: each `source` under the sub-directory Open-o3-Video's trainer
    uses (STR_plm* before STR*, TVG* whatever its case after the prefix, videor1* including the
    misspelt `videor1_free_from`); off by default, where paths are relative to the root itself."""
    from visd_exp.data.formats import read_file

    videos = tmp_path / "videos"
    videos.mkdir()
    expected = {
        "timerft": "timerft/a.mp4",
        "STR_plm_rdcap": "stgr/plm/videos/a.mp4",
        "STR_rdcap": "stgr/temporal_grounding/videos/a.mp4",
        "TVG_ActivityNet": "tvg_r1/a.mp4",
        "TVG_activitynet": "tvg_r1/a.mp4",
        "videor1_free_from": "videor1/a.mp4",
        "videoespresso_train_video": "videoespresso/videos/a.mp4",
    }
    records = [
        {"id": k, "source": source, "task": "temporal QA", "video_path": "a.mp4", "question": "When?",
         "answer": "[1.0, 2.0]"}
        for k, source in enumerate(expected)
    ]  # fmt: skip
    path = tmp_path / "STGR-RL.json"
    path.write_text(json.dumps(records))
    loaded = read_file(path, video_root=videos, source_roots="open_o3_video")
    assert [r["video_path"] for _, r in loaded.entries] == [str(videos / rel) for rel in expected.values()]
    # off by default: relative to video_root
    assert {r["video_path"] for _, r in read_file(path, video_root=videos).entries} == {str(videos / "a.mp4")}
    # a source the mapping lacks is an error on its line, not a silent wrong path
    (_, error), *_ = read_file(path, video_root=videos, source_roots={"timerft": "t"}).entries[1:]
    assert error.field == "source" and "STR_plm_rdcap" in error.message
    with pytest.raises(ValueError, match="not a known layout"):
        read_file(path, video_root=videos, source_roots="open_o3")
