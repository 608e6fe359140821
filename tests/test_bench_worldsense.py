"""WorldSense: worldsense_qa.json read unchanged (data/formats/worldsense.py) and scored as VLMEvalKit
scores it (benchmarks/worldsense.py). The file is invented in the published shape
(../shared/notes/benchmarks.md section 1); every expected value is worked out by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.data.records import RecordError, load_records
from visd_exp.data.validate import validate_file

SYS = (
    "Carefully watch this video and pay attention to every detail. Based on your observations, select "
    "the best option that accurately addresses the question."
)
TMPL = (
    "\nThese are the frames of a video. Select the best answer to the following multiple-choice question "
    "based on the video. Respond with only the letter (A, B, C, or D) of the correct option.\n"
)


def _task(domain: str, kind: str, question: str, answer: str, candidates: list[str]) -> dict:
    return {
        "task_domain": domain,
        "task_type": kind,
        "question": question,
        "answer": answer,
        "candidates": candidates,
    }


ABCD = ["A. Red.", "B. Green.", "C. Blue.", "D. Yellow."]
QA = {
    "SynWsA01": {
        "video_id": "SynWsA01",
        "video_duration": "40s",
        "duration": "<1min",
        "domain": "Music",
        "sub_category": "Covers",
        "audio_class": ["Speech", "Music"],
        "video_caption": "A blue square pulses.",
        "task0": _task(
            "Recognition", "Object Counting", "How many squares?", "B", ["A. 1.", "B. 2.", "C. 3.", "D. 4."]
        ),
        "task1": _task("Recognition", "Audio Counting", "How many beats?", "C", ABCD),
    },
    "SynWsB02": {
        "video_id": "SynWsB02",
        "video_duration": "100s",
        "duration": "1-2min",
        "domain": "Sports",
        "sub_category": "Football",
        "audio_class": ["Event"],
        "video_caption": "A red square moves.",
        "task0": _task("Understanding", "Spatial Relation", "Where is the red square?", "A", ABCD),
        "task1": _task("Understanding", "Human Emotions", "Which colour is first?", "C", ABCD),
        "task2": _task("Reasoning", "Causal Reasoning", "Why does it stop?", "D", ABCD),
    },
    "SynWsC03": {
        "video_id": "SynWsC03",
        "video_duration": "30s",
        "duration": "<1min",
        "domain": "Music",
        "sub_category": "Covers",
        "audio_class": ["Music"],
        "video_caption": "A green square.",
        "task0": _task("Reasoning", "Audio Change", "How does the volume change?", "A", ABCD),
        "task1": _task(
            "Reasoning",
            "Audio Change",
            "How does the piano change?",
            "B",
            ["A. It is unclear to me.", "B. The volume increases.", "C. The volume decreases."],
        ),
    },
}
# id -> (reply, what VLMEvalKit's extract_characters_regex reads, correct?)
REPLIES = {
    "SynWsA01/task0": ("B", "B", 1),
    # "the answer is" is lower-case: not a prefix; the first A-D is the B of "Based"
    "SynWsA01/task1": ("Based on the video, the answer is C", "B", 0),
    # "Best answer:" is glued to "Best option:" in the list: not removed; the first A-D is the B of "Best"
    "SynWsB02/task0": ("Best answer: A", "B", 0),
    "SynWsB02/task1": ("The answer is C.", "C", 1),
    # more than 10 words and no A-D: '' (unparsable, counted wrong)
    "SynWsB02/task2": ("i think it is the second one because the volume goes up over time", "", 0),
    "SynWsC03/task0": ("(A) it goes up", "A", 1),
    "SynWsC03/task1": ("B. The volume increases.", "B", 1),
}


def _write_video(path: Path) -> None:
    import torch
    from torchcodec.encoders import VideoEncoder

    frames = torch.zeros(4, 3, 32, 48, dtype=torch.uint8)
    frames[:, 2, 4:20, 4:20] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=2).to_file(str(path), codec="libx264", pixel_format="yuv420p", crf=30)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("worldsense")
    _write_video(base / "videos" / "SynWsA01.mp4")
    for vid in ("SynWsB02", "SynWsC03"):
        (base / "videos" / f"{vid}.mp4").write_bytes((base / "videos" / "SynWsA01.mp4").read_bytes())
    return base


def _pretty(qa: dict) -> str:
    """One member per line: member k starts on line k + 2."""
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in qa.items()) + "\n}\n"


def test_read_unchanged(root):
    path = root / "worldsense_qa.json"
    path.write_text(_pretty(QA), encoding="utf-8")
    assert detect_format(path) == "worldsense"
    one_line = root / "one_line.json"
    one_line.write_text(json.dumps(QA), encoding="utf-8")  # as json.dump writes it
    assert detect_format(one_line) == "worldsense"
    records = load_records(path, video_root=root)
    assert [r["id"] for r in records] == list(REPLIES)
    assert [r["_where"].rsplit(":", 1)[1] for r in records] == ["2", "2", "3", "3", "3", "4", "4"]
    first = records[0]
    assert first["source"] == "worldsense" and first["task"] == "multiple_choice"
    assert first["video_path"] == str((root / "videos" / "SynWsA01.mp4").absolute())
    assert first["answer"] == "B" and first["options"] == ["A. 1.", "B. 2.", "C. 3.", "D. 4."]
    assert first["prompt"] == {
        "system": None,
        "text": SYS + TMPL + "Question: How many squares?\nA. 1.\nB. 2.\nC. 3.\nD. 4.\nAnswer: ",
        "timestamps": False,
        "images": 0,
    }
    assert first["benchmark"] == {
        "answer": "B",
        "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."],
        "task_domain": "Recognition",
        "task_type": "Object Counting",
        "domain": "Music",
        "sub_category": "Covers",
        "audio_class": ["Speech", "Music"],
        "duration": "<1min",
        "video_id": "SynWsA01",
    }
    report = validate_file(path, video_root=root)  # what a run checks first (data.validation=strict)
    assert report.ok and report.format == "worldsense", str(report)
    three = records[-1]
    assert three["options"] == [
        "A. It is unclear to me.",
        "B. The volume increases.",
        "C. The volume decreases.",
    ]
    assert three["prompt"]["text"].endswith("C. The volume decreases.\nAnswer: ")


def test_malformed_member_names_line_and_field(root):
    bad = json.loads(json.dumps(QA))
    bad["SynWsB02"]["task1"]["candidates"] = ["Red.", "Green."]
    path = root / "bad.json"
    path.write_text(_pretty(bad), encoding="utf-8")
    loaded = read_file(path, video_root=root)
    errors = [(line, e) for line, e in loaded.entries if isinstance(e, FieldError)]
    assert [(line, e.field) for line, e in errors] == [(3, "task1.candidates[0]")]
    with pytest.raises(
        RecordError, match=r"bad\.json:3: task1\.candidates\[0\]: expected a string starting 'A\.'"
    ):
        load_records(path, video_root=root)
    bad = json.loads(json.dumps(QA))
    bad["SynWsC03"]["task0"]["task_domain"] = "Perception"
    path.write_text(_pretty(bad), encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad\.json:4: task0\.task_domain: expected one of Recognition"):
        load_records(path, video_root=root)


def test_extractor_quirks():
    from visd_exp.benchmarks.worldsense import extract_characters_regex

    for reply, letter, _ in REPLIES.values():
        assert extract_characters_regex(reply) == letter
    assert extract_characters_regex("none") == ""  # short, no A-D
    assert extract_characters_regex("") == ""
    assert extract_characters_regex("Option: D") == "D"  # "Option:" is removed
    assert extract_characters_regex("The correct option is B") == "B"  # glued prefix: "B" still found


def test_score_by_hand(root):
    from visd_exp.benchmarks import SCORERS, run_benchmarks

    path = root / "worldsense_qa.json"
    path.write_text(_pretty(QA), encoding="utf-8")
    records = load_records(path, video_root=root)
    rows = [
        {
            "id": r["id"],
            "source": "worldsense",
            "prediction": REPLIES[r["id"]][0],
            "benchmark": r["benchmark"],
        }
        for r in records
    ]
    assert SCORERS["worldsense"] == "visd_exp.benchmarks.worldsense:score"
    report = run_benchmarks(rows)["worldsense"]
    # correct: A01/task0, B02/task1, C03/task0, C03/task1 = 4 of 7
    assert list(report["table"]) == ["Overall", "Recognition", "Understanding", "Reasoning"]
    assert report["table"] == pytest.approx(
        {"Overall": 400 / 7, "Recognition": 50.0, "Understanding": 50.0, "Reasoning": 200 / 3}
    )
    assert report["counts"] == {"total": 7, "unparsable": 1}
    cats = report["categories"]
    # audio_class is multi-label: A01's two questions count under Speech and under Music
    assert cats["audio_class"] == pytest.approx({"Speech": 50.0, "Music": 75.0, "Event": 100 / 3})
    assert cats["domain"] == pytest.approx({"Music": 75.0, "Sports": 100 / 3})
    assert cats["task_type"]["Audio Change"] == 100.0 and cats["task_type"]["Causal Reasoning"] == 0.0
    assert cats["duration"]["<1min"]["Overall"] == 75.0
    assert cats["duration"]["1-2min"]["task_domain"] == pytest.approx(
        {"Understanding": 50.0, "Reasoning": 0.0}
    )
    assert "wrong" in report["unparsable_rule"]


@pytest.mark.slow
def test_evaluate_end_to_end(root, tmp_path, cache_dir):
    """`python -m visd_exp.evaluate benchmark=worldsense data_file=worldsense_qa.json data.video_root=...` on
    the tiny model: the file read unchanged, report.json's `table` with the paper's columns, the benchmark's
    settings (conf/benchmark/worldsense.yaml) applied where the command line does not override them."""
    from test_train_e2e import run_module

    path = root / "worldsense_qa.json"
    path.write_text(_pretty(QA), encoding="utf-8")
    args = [
        "benchmark=worldsense",
        f"data_file={path}",
        f"data.video_root={root}",
        "data.min_frames=4",  # the benchmark's 32 frames, cut for the tiny CPU run
        "data.max_frames=4",
        "model.warm_start=null",
        "max_completion_length=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path}",
    ]
    run_module("evaluate", *args, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    report = json.loads((tmp_path / "report.json").read_text())
    worldsense = report["benchmarks"]["worldsense"]
    assert list(worldsense["table"]) == ["Overall", "Recognition", "Understanding", "Reasoning"]
    assert report["benchmark"] == "worldsense" and report["table"] == worldsense["table"]
    settings = report["settings"]
    assert (settings["format"], settings["max_frames"], settings["max_pixels"]) == ("worldsense", 4, 151200)
    assert settings["max_completion_length"] == 4 and settings["subtitles"] is False
    assert worldsense["counts"]["total"] == 7
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert {row["id"] for row in rows} == set(REPLIES) and all("benchmark" in row for row in rows)
