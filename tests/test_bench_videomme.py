"""Video-MME (v1): the test parquet read unchanged (data/formats/videomme.py) and scored as the official
eval_your_results.py scores it (benchmarks/videomme.py). The file is invented in the published shape
(../shared/notes/benchmarks.md section 5); every expected value is worked out by hand below."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.data.records import RecordError, load_records
from visd_exp.data.validate import validate_file

INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. Respond with "
    "only the letter (A, B, C, or D) of the correct option."
)
ABCD = ["A. Apples.", "B. Candles.", "C. Berries.", "D. Daisies."]
# video_id -> (duration, domain, sub_category, videoID)
VIDEOS = {
    "001": ("short", "Knowledge", "Humanity & History", "SynMmeA1"),
    "002": ("medium", "Sports Competition", "Football", "SynMmeB2"),
    "003": ("long", "Knowledge", "Astronomy", "SynMmeC3"),
}
# question_id -> (task_type, answer, reply, what the official extract_characters_regex reads, correct)
QUESTIONS = {
    "001-1": ("Counting Problem", "B", "B", "B", 1),
    # "Best answer:" is glued to "Best option:" in the list: not removed; the first A-D is the B of "Best"
    "001-2": ("OCR Problems", "A", "Best answer: A", "B", 0),
    # "the answer is" is lower-case: not a prefix; the first A-D is the B of "Based"
    "001-3": ("Counting Problem", "C", "Based on the video, the answer is C", "B", 0),
    # more than 10 words and no A-D: '' (not answered: leaves the denominator)
    "002-1": ("Temporal Reasoning", "A", "i think it is the second one because the volume goes up", "", None),
    "002-2": ("Temporal Reasoning", "D", "The correct answer is D.", "D", 1),
    "002-3": ("Action Recognition", "B", "", "", None),  # empty: not answered
    "003-1": ("Counting Problem", "A", "(A) apples", "A", 1),
    "003-2": ("OCR Problems", "B", "The best answer is D", "D", 0),
    "003-3": ("Information Synopsis", "C", "none", "", None),  # short, no A-D: not answered
}


def _rows() -> list[dict]:
    rows = []
    for qid, (task_type, answer, *_) in QUESTIONS.items():
        vid = qid.split("-")[0]
        duration, domain, sub_category, youtube = VIDEOS[vid]
        rows.append(
            {
                "video_id": vid,
                "duration": duration,
                "domain": domain,
                "sub_category": sub_category,
                "url": f"https://www.youtube.com/watch?v={youtube}",
                "videoID": youtube,
                "question_id": qid,
                "task_type": task_type,
                "question": f"Question {qid}: which one is shown?",
                "options": list(ABCD),
                "answer": answer,
            }
        )
    return rows


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from test_bench_worldsense import _write_video  # the WorldSense test's small synthetic mp4

    base = tmp_path_factory.mktemp("videomme")
    _write_video(base / "data" / "SynMmeA1.mp4")
    (base / "data" / "SynMmeB2.mp4").write_bytes((base / "data" / "SynMmeA1.mp4").read_bytes())
    # some published videos are .MP4: found all the same
    (base / "data" / "SynMmeC3.MP4").write_bytes((base / "data" / "SynMmeA1.mp4").read_bytes())
    _write_parquet(base / "videomme" / "test-00000-of-00001.parquet", _rows())
    return base


def test_read_unchanged(root):
    path = root / "videomme" / "test-00000-of-00001.parquet"
    assert detect_format(path) == "videomme"
    records = load_records(path, video_root=root / "data")
    assert [r["id"] for r in records] == list(QUESTIONS)
    assert [r["_where"].rsplit(":", 1)[1] for r in records] == [str(n) for n in range(1, 10)]
    first = records[0]
    assert first["source"] == "videomme" and first["task"] == "multiple_choice"
    assert first["video_path"] == str((root / "data" / "SynMmeA1.mp4").absolute())
    assert records[-1]["video_path"] == str((root / "data" / "SynMmeC3.MP4").absolute())
    assert first["options"] == ABCD and first["answer"] == "B"
    assert first["prompt"] == {
        "system": None,
        "text": INSTRUCTION
        + "\nQuestion 001-1: which one is shown?\nA. Apples.\nB. Candles.\nC. Berries.\nD. Daisies."
        + "\nThe best answer is:",
        "timestamps": False,
        "images": 0,
    }
    assert first["benchmark"] == {
        "answer": "B",
        "options": ABCD,
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Humanity & History",
        "task_type": "Counting Problem",
        "video_id": "001",
        "videoID": "SynMmeA1",
    }
    report = validate_file(path, video_root=root / "data")  # what a run checks first
    assert report.ok and report.format == "videomme", str(report)


def test_malformed_rows_name_row_and_field(root, tmp_path):
    rows = _rows()
    rows[1]["options"] = ["Apples.", "Candles.", "Berries.", "Daisies."]  # not lettered
    rows[4]["duration"] = "90s"
    path = _write_parquet(tmp_path / "test-00000-of-00001.parquet", rows)
    loaded = read_file(path, video_root=root / "data")
    errors = [(line, e.field) for line, e in loaded.entries if isinstance(e, FieldError)]
    assert errors == [(2, "options[0]"), (5, "duration")]
    with pytest.raises(RecordError, match=r"test-00000-of-00001\.parquet:2: options\[0\]: expected a string"):
        load_records(path, video_root=root / "data")
    rows = _rows()
    rows[2]["videoID"] = "NoSuchVideo"
    path = _write_parquet(tmp_path / "missing.parquet", rows)
    with pytest.raises(RecordError, match=r"missing\.parquet:3: videoID: no video NoSuchVideo\.mp4"):
        load_records(path, video_root=root / "data")


def test_extractor_quirks():
    from visd_exp.benchmarks.videomme import extract_characters_regex

    for _, _, reply, letter, _ in QUESTIONS.values():
        assert extract_characters_regex(reply) == letter
    assert extract_characters_regex("The correct option: C") == "C"  # "The correct option" is removed
    assert extract_characters_regex("Option: D") == "D"


def test_score_by_hand(root):
    from visd_exp.benchmarks import SCORERS, run_benchmarks

    records = load_records(root / "videomme" / "test-00000-of-00001.parquet", video_root=root / "data")
    rows = [
        {
            "id": r["id"],
            "source": "videomme",
            "prediction": QUESTIONS[r["id"]][2],
            "benchmark": r["benchmark"],
        }
        for r in records
    ]
    assert SCORERS["videomme"] == "visd_exp.benchmarks.videomme:score"
    report = run_benchmarks(rows)["videomme"]
    # answered: 001-1..3, 002-2, 003-1, 003-2 (6 of 9); correct: 001-1, 002-2, 003-1
    assert list(report["table"]) == ["Overall", "Short", "Medium", "Long"]
    assert report["table"] == pytest.approx(
        {"Overall": 50.0, "Short": 100 / 3, "Medium": 100.0, "Long": 50.0}
    )
    assert report["counts"] == {"total": 9, "answered": 6, "unparsable": 3}
    cats = report["categories"]
    assert cats["domain"] == pytest.approx({"Knowledge": 40.0, "Sports Competition": 100.0})
    assert cats["task_type"] == pytest.approx(
        {
            "Counting Problem": 200 / 3,
            "OCR Problems": 0.0,
            "Temporal Reasoning": 100.0,
            "Action Recognition": None,  # its only question was not answered
            "Information Synopsis": None,
        }
    )
    assert cats["sub_category"] == pytest.approx(
        {"Humanity & History": 100 / 3, "Football": 100.0, "Astronomy": 50.0}
    )
    assert cats["duration"]["long"]["task_type"] == pytest.approx(
        {"Counting Problem": 100.0, "OCR Problems": 0.0, "Information Synopsis": None}
    )
    assert "leaves the denominator" in report["unparsable_rule"]


@pytest.mark.slow
def test_evaluate_end_to_end(root, tmp_path, cache_dir):
    """`python -m visd_exp.evaluate benchmark=videomme data_file=<the parquet> data.video_root=...` on the
    tiny model: the parquet read unchanged, report.json's `table` with the paper's columns, the benchmark's
    settings (conf/benchmark/videomme.yaml) applied where the command line does not override them."""
    from test_train_e2e import run_module

    args = [
        "benchmark=videomme",
        f"data_file={root / 'videomme' / 'test-00000-of-00001.parquet'}",
        f"data.video_root={root / 'data'}",
        "data.min_frames=4",  # the benchmark's 32 frames, cut for the tiny CPU run
        "data.max_frames=4",
        "model.warm_start=null",
        "max_completion_length=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path}",
    ]
    run_module("evaluate", *args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads((tmp_path / "report.json").read_text())
    videomme = report["benchmarks"]["videomme"]
    assert list(videomme["table"]) == ["Overall", "Short", "Medium", "Long"]
    assert report["benchmark"] == "videomme" and report["table"] == videomme["table"]
    settings = report["settings"]
    assert (settings["format"], settings["max_frames"], settings["max_pixels"]) == ("videomme", 4, 151200)
    assert settings["subtitles"] is False and videomme["counts"]["total"] == 9
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert {row["id"] for row in rows} == set(QUESTIONS) and all("benchmark" in row for row in rows)


def test_rescore_by_hand(root, tmp_path):
    """`rescore` on the parquet and the hand-written replies: the table worked out above."""
    from visd_exp.benchmarks.rescore import rescore

    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps({"id": k, "prediction": v[2]}) + "\n" for k, v in QUESTIONS.items()))
    report = rescore("videomme", root / "videomme" / "test-00000-of-00001.parquet", preds, tmp_path / "out")
    assert report["table"] == pytest.approx(
        {"Overall": 50.0, "Short": 100 / 3, "Medium": 100.0, "Long": 50.0}
    )
    assert report["benchmarks"]["videomme"]["counts"] == {"total": 9, "answered": 6, "unparsable": 3}
