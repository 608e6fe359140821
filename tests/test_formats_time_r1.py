"""Time-R1's two files: Charades-STA's JSON object written on one line (as json.dump writes it), and Time-R1's
training JSON (train_2k5.json: video, duration, timestamp, sentence, qid, ...; clip-cut video names kept).

Records are invented in the published shape; expected values are written out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.formats.base import FieldError

SPAN = "From <t>start</t>s to <t>end</t>s"
CHARADES = {
    "vc_one": {"duration": 30.96, "timestamps": [[0.0, 6.9], [10.2, 16.8]],
               "sentences": ["person opens the door.\n", "person turns on the light.\n"]},
    "vc_two": {"duration": 20.0, "timestamps": [[2.4, 7.5]], "sentences": ["a person sits on a chair\n"]},
}  # fmt: skip
CLIP = "abcDEF12345_00:00:39:000_00:01:24:700"
TRAIN = [
    {
        "video": "./dataset/timer1/videos/timerft_data/vt_full.mp4",
        "duration": 93.2932,
        "timestamp": [1.0, 4.0],
        "sentence": "A man hangs a sweater.",
        "qid": "my|cosmo|vt_full|A man hangs a sweater.",
        "video_start": None,
        "video_end": None,
        "difficulty": 50.0,
        "pred": [0.0, 3.0],
    },
    {
        "video": f"./dataset/timer1/videos/timerft_data/{CLIP}.mp4",
        "duration": 45.7,
        "timestamp": [34.9, 41.9],
        "sentence": "the statue of a man on horseback",
        "qid": "my|internvid-vtime|abcDEF12345|the statue of a man on horseback",
        "video_start": 39.0,
        "video_end": 84.7,
        "difficulty": 41.0,
        "pred": [37.8, 44.8],
    },
]


@pytest.fixture()
def root(tmp_path) -> Path:
    from conftest import write_square_video

    video = write_square_video(tmp_path / "videos" / "charades" / "vc_one.mp4")
    for relative in ("charades/deep/vc_two.mp4", "dataset/timer1/videos/timerft_data/vt_full.mp4",
                     f"elsewhere/{CLIP}.mp4"):  # fmt: skip
        (tmp_path / "videos" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / relative).write_bytes(video.read_bytes())
    return tmp_path


def test_one_line_charades_json_is_detected(root):
    path = root / "charades_test.json"
    path.write_text(json.dumps(CHARADES))  # json.dump's one line
    assert len(path.read_text().splitlines()) == 1
    assert detect_format(path) == "charades_sta_json"
    loaded = read_file(path, video_root=root / "videos")
    records = [r for _, r in loaded.entries]
    assert [r["id"] for r in records] == ["vc_one#0", "vc_one#1", "vc_two#0"]
    assert [line for line, _ in loaded.entries] == [1, 1, 1]
    assert [r["segment"] for r in records] == [[0.0, 6.9], [10.2, 16.8], [2.4, 7.5]]
    assert [r["duration"] for r in records] == [30.96, 30.96, 20.0]
    assert records[2]["question"] == (
        f"When in the video does the following happen? A person sits on a chair. Give its start and end as {SPAN}."
    )
    # the same file pretty-printed reads the same records
    pretty = root / "charades_pretty.json"
    pretty.write_text(json.dumps(CHARADES, indent=2))
    assert [r for _, r in read_file(pretty, video_root=root / "videos").entries] == records


def test_one_record_jsonl_is_still_jsonl(root):
    path = root / "one.jsonl"  # a project record on one line is not taken for the Charades object
    path.write_text(json.dumps({"id": "x", "task": "free_form", "question": "Q?", "answer": "A"}) + "\n")
    assert detect_format(path) == "project"


def test_time_r1_training_json(root):
    path = root / "train_2k5.json"
    path.write_text(json.dumps(TRAIN, indent=4))
    assert detect_format(path) == "time_r1"
    loaded = read_file(path, video_root=root / "videos")
    assert loaded.format == "time_r1" and loaded.read == 2
    records = [r for _, r in loaded.entries]
    assert [r["id"] for r in records] == [
        "my|cosmo|vt_full|A man hangs a sweater.",
        "my|internvid-vtime|abcDEF12345|the statue of a man on horseback",
    ]
    assert all(r["source"] == "time_r1" and r["task"] == "temporal_grounding" for r in records)
    # the path as written under the root; the clip found by its own (clip-cut) name elsewhere under it
    assert records[0]["video_path"] == str(root / "videos/dataset/timer1/videos/timerft_data/vt_full.mp4")
    assert Path(records[1]["video_path"]).name == f"{CLIP}.mp4"
    assert records[1]["video_path"] == str((root / "videos/elsewhere" / f"{CLIP}.mp4").absolute())
    assert [r["segment"] for r in records] == [[1.0, 4.0], [34.9, 41.9]]  # the clip's own times
    assert [r["answer"] for r in records] == ["[1.0, 4.0]", "[34.9, 41.9]"]
    assert [r["duration"] for r in records] == [93.2932, 45.7]
    assert records[1]["question"] == (
        f"When in the video does the following happen? The statue of a man on horseback. Give its start and "
        f"end as {SPAN}."
    )


def test_time_r1_errors_name_the_field(root):
    bad = [
        {**TRAIN[0], "timestamp": [1.0]},
        {**TRAIN[0], "duration": 0},
        {k: v for k, v in TRAIN[0].items() if k != "sentence"} | {"sentence": " "},
        {**TRAIN[0], "video": "./nowhere/vt_gone.mp4"},
    ]
    path = root / "bad.json"
    path.write_text(json.dumps(bad))
    entries = read_file(path, fmt="time_r1", video_root=root / "videos").entries
    assert all(isinstance(e, FieldError) for _, e in entries)
    assert [e.field for _, e in entries] == ["timestamp", "duration", "sentence", "vid"]
    assert "vt_gone.mp4" in entries[3][1].message
