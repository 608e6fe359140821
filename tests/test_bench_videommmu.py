"""VideoMMMU: the three track parquets read unchanged (data/formats/videommmu.py), the Adaptation image
shown after the video frames (data/media.py), and scored as lmms-eval scores it (benchmarks/videommmu.py).
The rows are invented in the published shape (../shared/notes/benchmarks.md section 2); every expected
value is worked out by hand below."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.records import RecordError, load_records

PRE = "You should watch and learn the video content. Then apply what you learned to "
IGNORE = "\nPlease ignore the Quiz question in last frame of the video."
TEN = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COLORS = ["red", "green", "blue", "white"]


def _png(width: int, height: int, rgb=(255, 0, 0)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _row(rid, question, options, answer, qtype="multiple-choice", qa_type="OCR", image=None):
    row = {
        "id": rid,
        "question": question,
        "options": options,
        "answer": answer,
        "question_type": qtype,
        "link_selected": "https://www.youtube.com/watch?v=Demo",
        "qa_type": qa_type,
    }
    if image is not None:
        row["image"] = {"bytes": image, "path": f"{rid}.png"}
    return row


# track -> rows; with the reply of each and what lmms-eval makes of it
TRACK_ROWS = {
    "Perception": [
        _row("validation_Physics_1", "Which colour is the ball?", COLORS, "B"),
        _row("test_Art_Theory_2", "Which colour is the sky?", COLORS, "C"),
        _row("dev_Accounting_3", "How many ledgers?", TEN, "B"),
        _row("validation_Math_4", "Which colour is the pen?", COLORS, "A"),
    ],
    "Comprehension": [
        _row(
            "validation_Physics_1", "Which fruit?", ["apples", "bananas", "cherries"], "C", qa_type="Concept"
        ),
        _row("test_Art_Theory_2", "Which colour?", COLORS, "A", qa_type="Concept"),
    ],
    "Adaptation": [
        _row("validation_Physics_1", "<image 1> Which?", COLORS, "A", image=_png(10, 10)),
        _row("test_Art_Theory_2", "<image 1> How long?", [], "12.97", "open", image=_png(12, 8)),
        _row("dev_Accounting_3", "<image 1> How many?", ["1", "2"], "6", "None", image=_png(8, 8)),
    ],
}
REPLIES = {
    "Perception/validation_Physics_1": ("B", "B", True),
    # "C." and "D." both found: the LAST wins
    "Perception/test_Art_Theory_2": ("The answer is C. D. is wrong", "D", False),
    # "I " is a candidate for option I; " B " occurs later and wins
    "Perception/dev_Accounting_3": ("I think the answer is B.", "B", True),
    # empty: "API Error", dropped from the denominator
    "Perception/validation_Math_4": ("", "API Error", None),
    # no letter form, more than 5 words: the option text "cherries" is found
    "Comprehension/validation_Physics_1": ("My final pick would be the cherries here", "C", True),
    "Comprehension/test_Art_Theory_2": ("hmm", "No Answer Found.", False),
    "Adaptation/validation_Physics_1": ("(A)", "A", True),
    # the tail after "is " holds 12.970, rounded to 12.97 = the gold number
    "Adaptation/test_Art_Theory_2": ("The time is 12.970 s", None, True),
    # question_type "None" goes down the open path; the shortest tail of the last line is after "=": 5 != 6
    "Adaptation/dev_Accounting_3": ("Step 1.\nSo the total is 6 = 5", None, False),
}


def _write_tracks(base: Path, tracks: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for track, rows in tracks.items():
        folder = base / track
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
    return base


def _write_video(path: Path) -> None:
    import torch
    from torchcodec.encoders import VideoEncoder

    frames = torch.zeros(4, 3, 28, 56, dtype=torch.uint8)
    frames[:, 1] = 100
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=2).to_file(str(path), codec="libx264", pixel_format="yuv420p", crf=30)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("videommmu")
    videos = base / "video_mmmu"
    _write_video(videos / "Science" / "validation_Physics_1.mp4")
    for relative in (
        "Art/test_Art_Theory_2.mp4",
        "Business/dev_Accounting_3.mp4",
        "Science/validation_Math_4.mp4",
    ):
        (videos / relative).parent.mkdir(parents=True, exist_ok=True)
        (videos / relative).write_bytes((videos / "Science" / "validation_Physics_1.mp4").read_bytes())
    return _write_tracks(base / "VideoMMMU", TRACK_ROWS), videos


def test_read_folder_and_track_file_unchanged(data):
    folder, videos = data
    assert detect_format(folder / "Adaptation" / "test-00000-of-00001.parquet") == "videommmu"
    records = load_records(folder, video_root=videos)
    assert {r["id"] for r in records} == set(REPLIES)
    by_id = {r["id"]: r for r in records}
    p1 = by_id["Perception/validation_Physics_1"]
    assert p1["video_path"] == str((videos / "Science" / "validation_Physics_1.mp4").absolute())
    assert p1["task"] == "multiple_choice" and p1["options"] == ["A. red", "B. green", "C. blue", "D. white"]
    assert p1["prompt"] == {
        "system": None,
        "text": "Which colour is the ball?\nA. red\nB. green\nC. blue\nD. white" + IGNORE,
        "timestamps": False,
    }
    assert p1["benchmark"]["discipline"] == "Science" and p1["benchmark"]["track"] == "Perception"
    assert by_id["Perception/test_Art_Theory_2"]["benchmark"]["subject"] == "Art_Theory"
    a1 = by_id["Adaptation/validation_Physics_1"]
    assert a1["prompt"]["text"] == (
        PRE + "answer the following multi-choice question. The image for this question is at the end of the "
        "video.\n<image 1> Which?\nA. red\nB. green\nC. blue\nD. white"
    )
    assert a1["prompt"]["images"] == 1
    assert a1["images"] == ["data:image/png;base64," + base64.b64encode(_png(10, 10)).decode()]
    a2 = by_id["Adaptation/test_Art_Theory_2"]
    assert a2["task"] == "free_form" and "options" not in a2
    assert a2["prompt"]["text"] == (
        PRE + "answer the following open-ended question. The image for this question is at the end of the "
        "video.\n<image 1> How long?"
    )
    # question_type "None": the open prompt, without its options
    assert by_id["Adaptation/dev_Accounting_3"]["prompt"]["text"].endswith("video.\n<image 1> How many?")
    one = read_file(folder / "Comprehension" / "test-00000-of-00001.parquet", video_root=videos)
    assert [(line, r["id"]) for line, r in one.entries] == [
        (1, "Comprehension/validation_Physics_1"),
        (2, "Comprehension/test_Art_Theory_2"),
    ]
    from visd_exp.data.validate import validate_file

    report = validate_file(folder, video_root=videos)  # what a run checks first (data.validation=strict)
    assert report.ok and report.format == "videommmu", str(report)


def test_malformed_rows_name_file_row_and_field(tmp_path, data):
    _, videos = data
    bad = {
        "Adaptation": [
            TRACK_ROWS["Adaptation"][0],
            _row("validation_Physics_5", "<image 1> Which?", COLORS, "Z", image=_png(4, 4)),
        ]
    }
    folder = _write_tracks(tmp_path / "bad", bad)
    with pytest.raises(RecordError, match=r"bad:2: answer: 'Z' is not one of .*\(in Adaptation/test-00000"):
        load_records(folder, video_root=videos)
    single = folder / "Adaptation" / "test-00000-of-00001.parquet"
    with pytest.raises(RecordError, match=r"test-00000-of-00001\.parquet:2: answer: 'Z'"):
        load_records(single, video_root=videos)
    bad = {"Perception": [_row("test_Cooking_4", "Which?", COLORS, "A")]}
    with pytest.raises(RecordError, match=r":1: id: subject 'Cooking'"):
        load_records(_write_tracks(tmp_path / "bad2", bad), video_root=videos)
    bad = {"Adaptation": [_row("test_Math_4", "<image 1> Which?", COLORS, "A", image=b"not a png")]}
    with pytest.raises(RecordError, match=r":1: image: cannot decode the image bytes"):
        load_records(_write_tracks(tmp_path / "bad3", bad), video_root=videos)


def test_parsers_by_hand():
    from visd_exp.benchmarks.videommmu import parse_multi_choice, parse_open

    for rid, (reply, parsed, _) in REPLIES.items():
        if parsed is not None:
            track, vid = rid.split("/")
            options = next(r["options"] for r in TRACK_ROWS[track] if r["id"] == vid)
            assert parse_multi_choice(reply, options) == parsed, reply
    assert sorted(parse_open("The time is 12.970 s"), key=str) == [12.97, "12.970 s"]
    assert parse_open("Step 1.\nSo the total is 6 = 5") == [5.0]
    assert parse_open("") == "API Error"


def test_score_by_hand(data):
    from visd_exp.benchmarks import run_benchmarks

    folder, videos = data
    records = load_records(folder, video_root=videos)
    rows = [
        {"id": r["id"], "source": "videommmu", "prediction": REPLIES[r["id"]][0], "benchmark": r["benchmark"]}
        for r in records
    ]
    report = run_benchmarks(rows)["videommmu"]
    # Perception 2 of 3 (the empty reply dropped), Comprehension 1 of 2, Adaptation 2 of 3;
    # Overall = the mean of the three (550/9 = 61.1), not the 5 of 8 over all questions (62.5)
    assert list(report["table"]) == ["Overall", "Comprehension", "Adaptation", "Perception"]
    assert report["table"] == pytest.approx(
        {"Overall": 550 / 9, "Comprehension": 50.0, "Adaptation": 200 / 3, "Perception": 200 / 3}
    )
    assert report["counts"]["total"] == 9 and report["counts"]["unparsable"] == 1
    assert report["counts"]["no_answer_found"] == 1
    assert report["categories"]["Perception"]["discipline"] == pytest.approx(
        {"Science": 100.0, "Art": 0.0, "Business": 100.0}
    )
    assert report["categories"]["Adaptation"]["question_type"] == {
        "multiple-choice": 100.0,
        "open": 100.0,
        "None": 0.0,
    }
    one_track = run_benchmarks([row for row in rows if row["benchmark"]["track"] == "Comprehension"])[
        "videommmu"
    ]
    assert one_track["table"] == {
        "Overall": None,
        "Comprehension": 50.0,
        "Adaptation": None,
        "Perception": None,
    }


def test_adaptation_image_follows_the_frames(data):
    """The still is one more plan entry and one more frame, fitted into the frame size (aspect kept)."""
    import torch

    from visd_exp.data.frames import FramePlan, decode_frames
    from visd_exp.data.media import decode_video_with_stills, with_stills
    from visd_exp.data.prompts import benchmark_messages

    folder, videos = data
    record = next(
        r for r in load_records(folder, video_root=videos) if r["id"] == "Adaptation/validation_Physics_1"
    )
    plan = with_stills(FramePlan(times=(0.0, 1.0), height=28, width=56, duration=2.0), record)
    assert plan.times == (0.0, 1.0, 2.0)
    frames = decode_video_with_stills(record, plan, decode_frames)
    assert frames.shape == (3, 3, 28, 56)
    still = frames[2]  # the 10 x 10 red square scaled to 28 x 28, centred: columns 14..41, black around
    assert torch.all(still[0, :, 14:42] > 240) and torch.all(still[1:, :, 14:42] < 15)
    assert torch.all(still[:, :, :14] == 0) and torch.all(still[:, :, 42:] == 0)
    assert frames[0, 1].float().mean() > 60  # a video frame (green 100), not the still
    content = benchmark_messages(record["prompt"], plan.times)[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "image", "text"]


@pytest.mark.slow
def test_evaluate_end_to_end(data, tmp_path, cache_dir):
    """`python -m visd_exp.evaluate benchmark=videommmu data_file=<the dataset folder> data.video_root=...`
    on the tiny model: three parquets read unchanged, the Adaptation images through the processor and the
    model, report.json's `table` with the paper's columns."""
    import json
    import os

    from test_train_e2e import run_module

    folder, videos = data
    args = [
        "benchmark=videommmu",
        f"data_file={folder}",
        f"data.video_root={videos}",
        "data.min_frames=4",  # the benchmark's 32 frames, cut for the tiny CPU run
        "data.max_frames=4",
        "model.warm_start=null",
        "max_completion_length=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path}",
    ]
    run_module("evaluate", *args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads((tmp_path / "report.json").read_text())
    videommmu = report["benchmarks"]["videommmu"]
    assert list(videommmu["table"]) == ["Overall", "Comprehension", "Adaptation", "Perception"]
    assert report["benchmark"] == "videommmu" and list(report["table"]) == list(videommmu["table"])
    assert videommmu["counts"]["total"] == 9
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert {row["id"] for row in rows} == set(REPLIES)
    # an Adaptation prompt holds one image entry more than its video frames; the processor refuses a
    # prompt whose image entries and images differ, so getting here means each still went through
    assert sum(row["id"].startswith("Adaptation/") for row in rows) == 3


def test_rescore_by_hand(data, tmp_path):
    """`python -m visd_exp.benchmarks.rescore` on the folder and the hand-written replies: the table above."""
    import json

    from visd_exp.benchmarks.rescore import main

    folder, _ = data
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps({"id": k, "prediction": v[0]}) + "\n" for k, v in REPLIES.items()))
    main(
        [
            "--benchmark",
            "videommmu",
            "--data",
            str(folder),
            "--predictions",
            str(preds),
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["table"] == pytest.approx(
        {"Overall": 550 / 9, "Comprehension": 50.0, "Adaptation": 200 / 3, "Perception": 200 / 3}
    )
    assert report["benchmarks"]["videommmu"]["counts"]["unparsable"] == 1
