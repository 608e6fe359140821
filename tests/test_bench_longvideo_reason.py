"""LongVideo-Reason: the test split's JSONL read unchanged (data/formats/longvideo_reason.py) and scored as
NVlabs/Long-RL eval/eval.py scores it (benchmarks/longvideo_reason.py). The file is invented in the
published shape (../shared/notes/benchmarks.md section 3); every expected value is worked out by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.data.records import RecordError, load_records
from visd_exp.data.validate import validate_file

TEMPLATE = (
    "You are a helpful assistant. The user asks a question, and then you solves it.\n\nPlease first think "
    "deeply about the question based on the given video, and then provide the final answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, "
    "i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n\n Question: "
)
OPTIONS = "\nA. The flag waves.\nB. The cars stop.\nC. Both cars cross the white finish line.\nD. It rains."


def _record(pid: int, ptype: str, answer: str, video: str, problem: str | None = None) -> dict:
    return {
        "problem_id": pid,
        "problem": problem or f"Which event happens first (0:0{pid}:00-0:0{pid}:50)?{OPTIONS}",
        "data_type": "video",
        "problem_type": ptype,
        "reasoning": "Searching the last minutes ...",
        "videos": f"longvila_videos/{video}.mp4",
        "answer": answer,
    }


RECORDS = [
    _record(1, "temporal", "<answer>C</answer>", "demo_long_01"),
    _record(2, "temporal", "<answer>B</answer>", "demo_long_01"),
    _record(3, "goal", "<answer>A</answer>", "demo_long_02"),
    _record(4, "goal", "D", "demo_long_02"),  # a gold answer without tags: the whole text
    _record(5, "spatial", "<answer>B</answer>", "demo_long_03"),
    _record(6, "spatial", "<answer>A</answer>", "demo_long_03"),
    _record(7, "plot", "<answer>3</answer>", "demo_long_03", "How many cars cross the line?"),
]
# id -> (reply, the answer eval.py compares, tag matched, correct, matches the format regex)
REPLIES = {
    "1": ("<think>The flag waves after the cars cross.</think> <answer>C</answer>", "C", True, 1, 1),
    # exact string equality: a letter with its option text is wrong
    "2": ("<think>x</think><answer>B. The cars stop.</answer>", "B. The cars stop.", True, 0, 1),
    "3": ("<think>x</think>\n<answer>Therefore the final answer is: A</answer>", "A", True, 1, 1),
    "4": ("D", "D", False, 1, 0),  # no tag: the whole reply, which equals the gold
    # no DOTALL: an answer tag spanning lines does not match; the whole reply is compared
    "5": ("<answer>\nB\n</answer>", "<answer>\nB\n</answer>", False, 0, 0),
    "6": ("<think>a</think><answer>B</answer> wait <answer>A</answer>", "B", True, 0, 1),  # the FIRST tag
    "7": ("", "", False, 0, 0),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from test_bench_worldsense import _write_video  # the WorldSense test's small synthetic mp4

    base = tmp_path_factory.mktemp("longvideo_reason")
    videos = base / "longvila_videos"
    _write_video(videos / "demo_long_01.mp4")
    for name in ("demo_long_02", "demo_long_03"):
        (videos / f"{name}.mp4").write_bytes((videos / "demo_long_01.mp4").read_bytes())
    (base / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return base


def test_read_unchanged(root):
    path = root / "test.jsonl"
    assert detect_format(path) == "longvideo_reason"
    records = load_records(path, video_root=root)
    assert [r["id"] for r in records] == list(REPLIES)
    first = records[0]
    assert first["source"] == "longvideo_reason" and first["task"] == "multiple_choice"
    assert first["video_path"] == str((root / "longvila_videos" / "demo_long_01.mp4").absolute())
    assert first["answer"] == "C" and first["options"][2] == "C. Both cars cross the white finish line."
    assert first["question"] == RECORDS[0]["problem"]  # the options are in the problem already: not added
    assert first["prompt"] == {
        "system": None,
        "text": TEMPLATE + RECORDS[0]["problem"],
        "timestamps": False,
        "images": 0,
    }
    assert first["benchmark"] == {"answer": "C", "problem_type": "temporal", "problem_id": 1}
    assert records[3]["answer"] == "D"  # the untagged gold
    assert records[6]["task"] == "free_form" and records[6]["answer"] == "3"
    # data.video_root may also be the longvila_videos folder itself: the file is found by its name
    inside = load_records(path, video_root=root / "longvila_videos")
    assert [r["video_path"] for r in inside] == [r["video_path"] for r in records]
    report = validate_file(path, video_root=root)
    assert report.ok and report.format == "longvideo_reason", str(report)
    # a JSON array of the same records reads the same
    array = root / "test.json"
    array.write_text(json.dumps(RECORDS, indent=1), encoding="utf-8")
    assert detect_format(array) == "longvideo_reason"
    assert [r["id"] for r in load_records(array, video_root=root)] == list(REPLIES)
    # and so does the split as parquet (the columns are the keys)
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = root / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), parquet)
    assert detect_format(parquet) == "longvideo_reason"
    from_parquet = load_records(parquet, video_root=root)
    assert [(r["id"], r["answer"], r["task"]) for r in from_parquet] == [
        (r["id"], r["answer"], r["task"]) for r in records
    ]


def test_video_r1_files_still_detected(tmp_path):
    """Video-R1's records have problem/problem_type too, and a `solution`: still video_r1."""
    video_r1 = {
        "problem_id": 1,
        "problem": "Which way?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. left", "B. right"],
        "solution": "<answer>A</answer>",
        "path": "./LLaVA-Video-178K/x.mp4",
        "data_source": "LLaVA-Video-178K",
    }
    path = tmp_path / "Video-R1-260k.json"
    path.write_text(json.dumps([video_r1]), encoding="utf-8")
    assert detect_format(path) == "video_r1"
    path.write_text(json.dumps([{**video_r1, "videos": "x.mp4", "answer": "A"}]), encoding="utf-8")
    assert detect_format(path) == "video_r1"  # a `solution` decides


def test_malformed_records_name_line_and_field(root, tmp_path):
    bad = [dict(r) for r in RECORDS]
    bad[1]["answer"] = "<answer> </answer>"
    bad[4]["videos"] = "longvila_videos/no_such_video.mp4"
    del bad[5]["problem"]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in bad), encoding="utf-8")
    loaded = read_file(path, "longvideo_reason", video_root=root)
    errors = [(line, e.field) for line, e in loaded.entries if isinstance(e, FieldError)]
    assert errors == [(2, "answer"), (5, "videos"), (6, "problem")]
    with pytest.raises(RecordError, match=r"test\.jsonl:2: answer: no answer inside"):
        load_records(path, video_root=root)


def test_extraction_by_hand():
    from visd_exp.benchmarks.longvideo_reason import student_answer

    for reply, answer, tagged, _, _ in REPLIES.values():
        assert student_answer(reply) == (answer, tagged)
    # the phrase outside a tag: the special regex does not match, nor is <answer> tried
    assert student_answer("Therefore the final answer is: A <answer>A</answer>") == (
        "Therefore the final answer is: A <answer>A</answer>",
        False,
    )


def test_score_by_hand(root):
    from visd_exp.benchmarks import SCORERS, run_benchmarks

    records = load_records(root / "test.jsonl", video_root=root)
    rows = [
        {
            "id": r["id"],
            "source": "longvideo_reason",
            "prediction": REPLIES[r["id"]][0],
            "benchmark": r["benchmark"],
        }
        for r in records
    ]
    assert SCORERS["longvideo_reason"] == "visd_exp.benchmarks.longvideo_reason:score"
    report = run_benchmarks(rows)["longvideo_reason"]
    # correct: 1, 3, 4 of 7
    assert list(report["table"]) == ["Acc"] and report["table"]["Acc"] == pytest.approx(300 / 7)
    assert report["counts"] == {"total": 7, "correct": 3, "unparsable": 3}
    cats = report["categories"]
    assert cats["problem_type"] == pytest.approx(
        {"temporal": 50.0, "goal": 100.0, "spatial": 0.0, "plot": 0.0}
    )
    assert cats["other"]["format_accuracy"] == pytest.approx(400 / 7)  # 1, 2, 3, 6
    assert "denominator" in report["unparsable_rule"]


@pytest.mark.slow
def test_evaluate_end_to_end(root, tmp_path, cache_dir):
    """`python -m visd_exp.evaluate benchmark=longvideo_reason data_file=test.jsonl data.video_root=...` on
    the tiny model: the file read unchanged, report.json's `table` with the paper's column."""
    from test_train_e2e import run_module

    args = [
        "benchmark=longvideo_reason",
        f"data_file={root / 'test.jsonl'}",
        f"data.video_root={root}",
        "data.min_frames=4",  # the benchmark's 256 frames, cut for the tiny CPU run
        "data.max_frames=4",
        "model.warm_start=null",
        "max_completion_length=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path}",
    ]
    run_module("evaluate", *args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads((tmp_path / "report.json").read_text())
    lrr = report["benchmarks"]["longvideo_reason"]
    assert list(lrr["table"]) == ["Acc"]
    assert report["benchmark"] == "longvideo_reason" and report["table"] == lrr["table"]
    settings = report["settings"]
    assert (settings["format"], settings["max_frames"], settings["max_pixels"]) == (
        "longvideo_reason",
        4,
        262144,
    )
    assert settings["max_completion_length"] == 4 and lrr["counts"]["total"] == 7


def test_rescore_by_hand(root, tmp_path):
    """`rescore` on test.jsonl and the hand-written replies: 3 of 7 correct, as above."""
    from visd_exp.benchmarks.rescore import rescore

    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps({"id": k, "prediction": v[0]}) + "\n" for k, v in REPLIES.items()))
    report = rescore("longvideo_reason", root / "test.jsonl", preds, tmp_path / "out")
    assert report["table"] == pytest.approx({"Acc": 300 / 7})
    assert report["benchmarks"]["longvideo_reason"]["counts"] == {"total": 7, "correct": 3, "unparsable": 3}
