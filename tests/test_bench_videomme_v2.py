"""Video-MME-v2: test.parquet read unchanged (data/formats/videomme_v2.py) and scored as the official
test_video_mme_v2.py scores it (benchmarks/videomme_v2.py): groups of 4 rows by file position, the
non-linear group scores and their order rules. The file is invented in the published shape
(../shared/notes/benchmarks.md section 4); every expected value is worked out by hand below."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.data.records import RecordError, load_records
from visd_exp.data.validate import validate_file

OPTIONS = "\n".join(
    f"{letter}. {text}"
    for letter, text in zip(
        "ABCDEFGH",
        ["Red.", "Green.", "Blue.", "Yellow.", "Black.", "White.", "Grey.", "Cannot be determined."],
        strict=True,
    )
)
INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. Respond with "
    "only the letter (A, B, C, D, E, F, G, or H) of the correct option."
)
# video_id -> (group_type, group_structure, levels of its 4 rows, second_heads of its 4 rows)
GROUPS = {
    "001": ("relevance", None, [1, 1, 1, 1], ["Frame-Only"] * 4),
    "002": ("logic", "[1, 2, 3, 4]", [2, 2, 2, 2], ["Order"] * 4),
    "003": ("logic", "[1, [2, 3], 4]", [3, 3, 3, 3], ["Physical World Reasoning"] * 4),
    # the group's level and head are its LAST row's: this group is level 3, "Complex Plot Comprehension"
    "004": ("logic", "[[1, 2], 3, 4]", [2, 2, 2, 3], ["Order"] * 3 + ["Complex Plot Comprehension"]),
    "005": ("relevance", None, [None] * 4, ["Frames & Audio"] * 4),  # level None: in no Level column
    "006": ("relevance", None, [2, 2, 2, 2], ["Change"] * 4),
}
ANSWER = "B"
# per group, the 4 question scores (worked out by hand from the rules)
SCORES = {
    "001": [1, 1, -1, 1],  # relevance, sum 2 (the -1 lowers it): 25
    "002": [1, -1, 0, 1],  # chain: Q1, Q2 (-1 is truthy, as written), stops at Q3: L = 2 -> 25
    "003": [1, 0, 1, 1],  # [1,[2,3],4]: stops at Q2 (L = 1), Q3 correct promotes to L = 2 -> 400/12
    "004": [0, 1, 1, 1],  # [[1,2],3,4]: stops at Q1 (L = 0), Q2 correct promotes to L = 1 -> 10
    "005": [1, 1, 1, 1],  # relevance, sum 4: 100
    "006": [-1, -1, 0, 1],  # relevance, sum -1: not in the map -> 0
}
GROUP_SCORES = {"001": 25.0, "002": 25.0, "003": 100 / 3, "004": 10.0, "005": 100.0, "006": 0.0}
# the replies of each score for the answer B, used in turn (extract_characters_regex_v2 reads the FIRST
# A-H anywhere: "Based on ..." reads the B of "Based", right by accident; more than 10 words and no A-H,
# or no A-H at all, is '')
WRONG = ["C", "Answer: E", "(D) yellow", "The answer is G"]
RIGHT = ["B", "Final Answer: B", "The best answer is B.", "Based on the frames, it is red"]
UNPARSABLE = ["", "none", "it is impossible to say which one of these it is from the video"]


def _reply(score: int, k: int) -> str:
    return {1: RIGHT, 0: WRONG, -1: UNPARSABLE}[score][k % {1: 4, 0: 4, -1: 3}[score]]


def _rows() -> list[dict]:
    rows = []
    for vid, (group_type, structure, levels, heads) in GROUPS.items():
        for k in range(4):
            rows.append(
                {
                    "video_id": vid,
                    "url": f"https://www.youtube.com/watch?v=DemoV2n{vid}",
                    "group_type": group_type,
                    "group_structure": structure,
                    "question_id": f"{vid}-{k + 1}",
                    "question": f"Question {k + 1} about video {vid}?",
                    "options": OPTIONS,
                    "answer": ANSWER,
                    "level": levels[k],
                    "second_head": heads[k],
                    "third_head": "Causal Chain" if group_type == "logic" else "Colour",
                }
            )
    return rows


def _predictions() -> dict[str, str]:
    out, n = {}, 0
    for vid, scores in SCORES.items():
        for k, s in enumerate(scores):
            out[f"{vid}-{k + 1}"] = _reply(s, n)
            n += 1
    return out


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from test_bench_worldsense import _write_video  # the WorldSense test's small synthetic mp4

    base = tmp_path_factory.mktemp("videomme_v2")
    _write_video(base / "videos" / "001.mp4")
    for vid in list(GROUPS)[1:]:
        (base / "videos" / f"{vid}.mp4").write_bytes((base / "videos" / "001.mp4").read_bytes())
    _write_parquet(base / "test.parquet", _rows())
    return base


def test_read_unchanged(root):
    path = root / "test.parquet"
    assert detect_format(path) == "videomme_v2"
    records = load_records(path, video_root=root / "videos")
    assert [r["id"] for r in records] == [f"{v}-{k}" for v in GROUPS for k in (1, 2, 3, 4)]
    assert [r["benchmark"]["index"] for r in records] == list(range(24))
    first = records[0]
    assert first["source"] == "videomme_v2" and first["task"] == "multiple_choice"
    assert first["video_path"] == str((root / "videos" / "001.mp4").absolute())
    assert first["options"][0] == "A. Red." and first["options"][-1] == "H. Cannot be determined."
    assert first["prompt"] == {
        "system": None,
        "text": "These are the frames of a video.Question: Question 1 about video 001?\n"
        + OPTIONS
        + "\n"
        + INSTRUCTION,
        "timestamps": False,
        "images": 0,
    }
    assert first["benchmark"] == {
        "file": "test.parquet",
        "index": 0,
        "answer": "B",
        "group_type": "relevance",
        "group_structure": None,
        "level": 1,
        "second_head": "Frame-Only",
        "third_head": "Colour",
        "video_id": "001",
        "question_id": "001-1",
    }
    assert records[16]["benchmark"]["level"] is None
    report = validate_file(path, video_root=root / "videos")
    assert report.ok and report.format == "videomme_v2", str(report)


def test_malformed_rows_name_row_and_field(root, tmp_path):
    rows = _rows()
    rows[5]["group_structure"] = "[1, 2, [3, 4]]"
    rows[9]["options"] = "Red.\nGreen."  # not lettered
    rows[13]["level"] = 4
    path = _write_parquet(tmp_path / "bad.parquet", rows)
    loaded = read_file(path, video_root=root / "videos")
    errors = [(line, e.field) for line, e in loaded.entries if isinstance(e, FieldError)]
    assert errors == [(6, "group_structure"), (10, "options"), (14, "level")]
    # the rows after a bad one keep their file positions (groups stay index // 4)
    good = [r for _, r in loaded.entries if isinstance(r, dict)]
    assert [r["benchmark"]["index"] for r in good][5:8] == [6, 7, 8]
    with pytest.raises(RecordError, match=r"bad\.parquet:6: group_structure: a logic group's structure"):
        load_records(path, video_root=root / "videos")


def test_extractor_and_group_rules():
    from visd_exp.benchmarks.videomme_v2 import extract_characters_regex_v2, logic_score, relevance_score

    assert [extract_characters_regex_v2(r) for r in RIGHT] == ["B", "B", "B", "B"]
    assert [extract_characters_regex_v2(r) for r in WRONG] == ["C", "E", "D", "G"]
    assert [extract_characters_regex_v2(r) for r in UNPARSABLE] == ["", "", ""]
    assert relevance_score([1, 1, 0, 1]) == 56.25 and relevance_score([1, 1, -1, 1]) == 25.0
    assert relevance_score([-1, 0, 0, 0]) == 0.0
    assert logic_score([1, 1, 1, 0], "[1, 2, 3, 4]") == 56.25
    assert logic_score([0, 1, 1, 1], "[1, 2, 3, 4]") == 0.0  # a later right answer does not count
    assert logic_score([1, 1, 0, 1], "[1, [2, 3], 4]") == pytest.approx(400 / 12)  # no promotion needed
    assert logic_score([1, 0, 0, 1], "[1, [2, 3], 4]") == pytest.approx(100 / 12)  # Q3 wrong: no promotion
    assert logic_score([0, 0, 1, 1], "[1, [2, 3], 4]") == 0.0  # promotion only from L = 1
    assert logic_score([1, 1, 1, 1], "[[1, 2], 3, 4]") == 100.0
    assert logic_score([1, 0, 1, 1], "[[1, 2], 3, 4]") == 10.0
    assert logic_score([-1, -1, -1, -1], "[[1, 2], 3, 4]") == 100.0  # -1 is truthy: the chain runs on


def _score_rows(root, predictions):
    records = load_records(root / "test.parquet", video_root=root / "videos")
    return [
        {
            "id": r["id"],
            "source": "videomme_v2",
            "prediction": predictions[r["id"]],
            "benchmark": r["benchmark"],
        }
        for r in records
        if r["id"] in predictions
    ]


# Non-Lin = (25 + 25 + 100/3 + 10 + 100 + 0) / 6 = 290/9; Level 1: {001} 25; Level 2: {002, 006} 12.5;
# Level 3: {003, 004} (100/3 + 10) / 2 = 65/3; Consistency: {001, 005, 006} 125/3; Coherence:
# {002, 003, 004} (25 + 100/3 + 10) / 3 = 205/9; Avg Acc: 16 right of 20 valid (4 unparsable) = 80
TABLE = {
    "Non-Lin Score": 290 / 9,
    "Level 1": 25.0,
    "Level 2": 12.5,
    "Level 3": 65 / 3,
    "Consistency": 125 / 3,
    "Coherence": 205 / 9,
    "Avg Acc": 80.0,
}


def test_score_by_hand(root):
    from visd_exp.benchmarks import SCORERS, run_benchmarks

    assert SCORERS["videomme_v2"] == "visd_exp.benchmarks.videomme_v2:score"
    rows = _score_rows(root, _predictions())
    report = run_benchmarks(rows)["videomme_v2"]
    assert list(report["table"]) == list(TABLE)
    assert report["table"] == pytest.approx(TABLE)
    assert [g["score"] for g in report["groups"]] == pytest.approx(list(GROUP_SCORES.values()))
    assert [g["scores"] for g in report["groups"]] == list(SCORES.values())
    assert report["counts"] == {"total": 24, "valid": 20, "unparsable": 4, "groups": 6, "missing": 0}
    cats = report["categories"]
    assert cats["second_head"] == pytest.approx(
        {
            "Frame-Only": 25.0,
            "Order": 25.0,  # 002 only: 004's head is its last row's
            "Physical World Reasoning": 100 / 3,
            "Complex Plot Comprehension": 10.0,
            "Frames & Audio": 100.0,
            "Change": 0.0,
        }
    )
    assert cats["third_head"] == pytest.approx({"Colour": 125 / 3, "Causal Chain": 205 / 9})
    # 25 per correct answer (sums 2, 4, -1): (50 + 100 - 25) / 3; over all 24 answers: 16 / 24
    assert cats["other"] == pytest.approx(
        {"relevance_linear_score": 125 / 3, "acc_over_all_answers": 200 / 3}
    )
    # the order of the rows given does not matter: groups are file positions (index // 4)
    assert run_benchmarks(rows[::-1])["videomme_v2"]["table"] == pytest.approx(TABLE)


def test_missing_row_scores_minus_one(root):
    from visd_exp.benchmarks.videomme_v2 import score

    predictions = _predictions()
    del predictions["005-4"]  # 005 becomes [1, 1, 1, -1]: sum 2 -> 25 (the script's '' reply)
    report = score(_score_rows(root, predictions))
    assert report["groups"][4]["scores"] == [1, 1, 1, -1] and report["groups"][4]["score"] == 25.0
    assert report["counts"]["missing"] == 1 and report["table"]["Consistency"] == pytest.approx(50 / 3)


def test_rescore_by_hand(root, tmp_path):
    """`python -m visd_exp.benchmarks.rescore --benchmark videomme_v2` on hand-written predictions."""
    from visd_exp.benchmarks.rescore import main

    predictions = tmp_path / "predictions.jsonl"
    lines = [json.dumps({"id": i, "prediction": p}) for i, p in reversed(_predictions().items())]
    predictions.write_text("\n".join(lines) + "\n")
    args = ["--benchmark", "videomme_v2", "--data", str(root / "test.parquet")]
    report = main([*args, "--predictions", str(predictions), "--out", str(tmp_path / "out")])
    assert list(report["table"]) == list(TABLE) and report["table"] == pytest.approx(TABLE)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["table"] == pytest.approx(TABLE)


@pytest.mark.slow
def test_evaluate_end_to_end(root, tmp_path, cache_dir):
    """`python -m visd_exp.evaluate benchmark=videomme_v2 data_file=test.parquet data.video_root=...` on the
    tiny model: the parquet read unchanged, report.json's `table` with the paper's columns in order."""
    from test_train_e2e import run_module

    args = [
        "benchmark=videomme_v2",
        f"data_file={root / 'test.parquet'}",
        f"data.video_root={root / 'videos'}",
        "data.min_frames=4",  # the benchmark's 64 frames, cut for the tiny CPU run
        "data.max_frames=4",
        "model.warm_start=null",
        "max_completion_length=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path}",
    ]
    run_module("evaluate", *args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads((tmp_path / "report.json").read_text())
    v2 = report["benchmarks"]["videomme_v2"]
    assert list(v2["table"]) == list(TABLE)
    assert report["benchmark"] == "videomme_v2" and report["table"] == v2["table"]
    settings = report["settings"]
    assert (settings["format"], settings["max_frames"], settings["max_pixels"]) == (
        "videomme_v2",
        4,
        12845056,
    )
    assert settings["max_completion_length"] == 4 and settings["subtitles"] is False
    assert v2["counts"]["total"] == 24 and v2["counts"]["groups"] == 6
