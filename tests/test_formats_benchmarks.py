"""Readers of the evaluation benchmarks' published files: V-STaR (JSON array and legacy JSONL),
Charades-STA (text and Time-R1's JSON object) and TVGBench, over small real mp4s in nested folders.

Every fixture below is hand-written in the published shape (never real data); every expected value
is written out by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.formats.base import FieldError

SPAN = "From <t>start</t>s to <t>end</t>s"


def _write_video(path: Path, width: int = 64, height: int = 48, fps: int = 5, seconds: int = 2) -> None:
    """A real (tiny) h264 mp4, the pattern of conftest.write_square_video with a non-square frame."""
    import torch
    from torchcodec.encoders import VideoEncoder

    frames = torch.zeros(seconds * fps, 3, height, width, dtype=torch.uint8)
    frames[:, 1, 8:24, 8:40] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=fps).to_file(str(path), codec="libx264", pixel_format="yuv420p", crf=30)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Videos nested at different depths, so that `<vid>.mp4` has to be searched for."""
    base = tmp_path_factory.mktemp("bench")
    videos = base / "videos"
    first = videos / "set_a" / "deep" / "vs_alpha.mp4"
    _write_video(first)
    for relative in (
        "set_b/vs_beta.mp4",
        "charades/x/vc_one.mp4",
        "charades/vc_two.mp4",
        "activitynet/v_tg1.mp4",
        "ego4d/clips/tg2.mp4",
    ):
        (videos / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first, videos / relative)
    (base / "ann").mkdir()
    return base


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _as_array(records: list[dict]) -> str:
    """One element per line: element k starts on line k + 2."""
    return "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"


# ----------------------------------------------------------------------------- V-STaR fixtures

ALPHA = {
    "vid": "vs_alpha",
    "domain": "Indoor",
    "fps": 5,
    "width": 64,
    "height": 48,
    "frame_count": 50,
    "question": "What is the person holding?",
    "answer": "A red cup.",
    "temporal_question": "When does the person lift the cup?",
    "timestamps": [2.4, 5.6],
    "spatial_question": "Where is the cup while it is lifted?",
    "spatial_question_2": "Where is the cup?",
    "object": "cup",
    "bboxes": [
        {"timestamp": 3, "frame_index": 15, "xmin": 10, "ymin": 12, "xmax": 30, "ymax": 40},
        {"timestamp": 5, "frame_index": 25, "xmin": 20.5, "ymin": 8, "xmax": 44, "ymax": 36},
    ],
}
BETA = {
    "vid": "vs_beta",
    "domain": "Sports",
    "fps": 2.5,
    "width": 64,
    "height": 48,
    "frame_count": 20,
    "question": "What does the dog fetch?",
    "answer": "A ball.",
    "temporal_question": "When does the dog run?",
    "timestamps": [1, 3],
    "spatial_question": "Where is the dog while it runs?",
    "spatial_question_2": "Where is the dog?",
    "object": "dog",
    "bboxes": [{"timestamp": 2, "frame_index": 5, "xmin": 4, "ymin": 6, "xmax": 60, "ymax": 46}],
}


def _legacy(record: dict) -> dict:
    """The legacy release's bboxes: [{"<second>_<frame>": {xmin, ymin, xmax, ymax}}]."""
    boxes = [
        {f"{b['timestamp']}_{b['frame_index']}": {k: b[k] for k in ("xmin", "ymin", "xmax", "ymax")}}
        for b in record["bboxes"]
    ]
    return {**record, "bboxes": boxes}


def _check_alpha(records: list[dict], video: str) -> None:
    assert [r["id"] for r in records] == [
        "vs_alpha#0/what",
        "vs_alpha#0/when1",
        "vs_alpha#0/where1",
        "vs_alpha#0/where2",
        "vs_alpha#0/when2",
    ]
    assert [r["task"] for r in records] == [
        "free_form",
        "temporal_grounding",
        "spatio_temporal_grounding",
        "spatio_temporal_grounding",
        "temporal_grounding",
    ]
    assert [r["vstar"] for r in records] == [
        {"vid": "vs_alpha", "index": 0, "query": "what", "chain": 0, "prompts": "project"},
        {"vid": "vs_alpha", "index": 0, "query": "when", "chain": 1, "prompts": "project"},
        {"vid": "vs_alpha", "index": 0, "query": "where", "chain": 1, "prompts": "project"},
        {"vid": "vs_alpha", "index": 0, "query": "where", "chain": 2, "prompts": "project"},
        {"vid": "vs_alpha", "index": 0, "query": "when", "chain": 2, "prompts": "project"},
    ]
    for r in records:
        assert r["source"] == "vstar"
        assert r["video_path"] == video
        assert r["duration"] == 10.0
        assert r["image_size"] == [64, 48]
    what, when1, where1, where2, when2 = records
    assert what["question"] == "What is the person holding?"
    assert what["answer"] == "A red cup."
    assert "segment" not in what and "key_frames" not in what
    assert when1["question"] == (
        "When does the person lift the cup? The video is 10.0 seconds long. "
        f"Give the start and end of that moment as {SPAN}."
    )
    for when in (when1, when2):
        assert when["answer"] == "[2.4, 5.6]"
        assert when["segment"] == [2.4, 5.6]
        assert "key_items" not in when
    claims = (
        "<obj>cup</obj><box>[10,12,30,40]</box>at<t>3.0</t>s "
        "<obj>cup</obj><box>[20.5,8,44,36]</box>at<t>5.0</t>s"
    )
    for where in (where1, where2):
        assert where["answer"] == claims
        assert where["segment"] == [2.4, 5.6]
        assert where["key_frames"] == [{"idx": 15, "time": 3.0}, {"idx": 25, "time": 5.0}]
        assert where["key_items"] == {"15": {"cup": [[10, 12, 30, 40]]}, "25": {"cup": [[20.5, 8, 44, 36]]}}
        assert where["question"].endswith(
            "For each whole second where the cup is visible, give its box (corners in pixels of the frame) "
            "as <obj>cup</obj><box>[x1,y1,x2,y2]</box>at<t>seconds</t>s, one claim per second."
        )
    # chain 1 is told the whole seconds ceil(2.4)..floor(5.6); chain 2 is told no time at all
    assert where1["question"].startswith(
        "Where is the cup while it is lifted? Look at the video from second 3 to second 5. "
    )
    assert where2["question"].startswith("Where is the cup? Find the cup in the video. ")
    assert "second 3" not in where2["question"] and "2.4" not in where2["question"]
    # chain 2's when is given the resolution, the number of boxes and the boxes, not their times
    assert when2["question"] == (
        "When does the person lift the cup? The video is 10.0 seconds long and 64x48 pixels. "
        "The object is located at these 2 boxes [x1,y1,x2,y2] in pixels, in time order: "
        f"[10,12,30,40], [20.5,8,44,36]. Give the start and end of that moment as {SPAN}."
    )
    assert "<t>" not in when2["question"].split(" as From")[0]


def _check_beta(records: list[dict], video: str) -> None:
    assert [r["id"] for r in records] == [
        "vs_beta#1/what",
        "vs_beta#1/when1",
        "vs_beta#1/where1",
        "vs_beta#1/where2",
        "vs_beta#1/when2",
    ]
    assert all(r["vstar"]["index"] == 1 and r["vstar"]["vid"] == "vs_beta" for r in records)
    assert all(r["duration"] == 8.0 and r["video_path"] == video for r in records)
    what, when1, where1, where2, when2 = records
    assert what["answer"] == "A ball."
    assert when1["answer"] == when2["answer"] == "[1.0, 3.0]"
    assert when1["segment"] == [1.0, 3.0] and isinstance(when1["segment"][0], float)
    assert where1["answer"] == where2["answer"] == "<obj>dog</obj><box>[4,6,60,46]</box>at<t>2.0</t>s"
    assert where1["key_frames"] == [{"idx": 5, "time": 2.0}]
    assert where1["key_items"] == {"5": {"dog": [[4, 6, 60, 46]]}}
    assert "from second 1 to second 3" in where1["question"]
    assert "these 1 box [x1,y1,x2,y2]" in when2["question"] and "[4,6,60,46]" in when2["question"]
    assert "8.0 seconds long" in when1["question"]


def test_vstar_current_json_array(root):
    path = _write(root / "ann" / "vstar.json", _as_array([ALPHA, BETA]))
    assert detect_format(path) == "vstar"
    loaded = read_file(path, video_root=root / "videos")
    assert loaded.format == "vstar" and loaded.read == 2 and not loaded.skipped
    assert [line for line, _ in loaded.entries] == [2] * 5 + [3] * 5
    records = [r for _, r in loaded.entries]
    _check_alpha(records[:5], str((root / "videos/set_a/deep/vs_alpha.mp4").resolve()))
    _check_beta(records[5:], str((root / "videos/set_b/vs_beta.mp4").resolve()))
    # records do not share mutable fields
    records[2]["key_items"]["15"]["cup"][0][0] = -1
    assert records[3]["key_items"]["15"]["cup"][0][0] == 10


def test_vstar_pretty_printed_array_lines(root):
    path = _write(root / "ann" / "vstar_pretty.json", json.dumps([ALPHA, BETA], indent=2))
    loaded = read_file(path, video_root=root / "videos")
    beta_line = json.dumps([ALPHA, BETA], indent=2).splitlines().index("  {", 2) + 1
    assert [line for line, _ in loaded.entries] == [2] * 5 + [beta_line] * 5


def test_vstar_legacy_jsonl_reads_the_same(root):
    current = read_file(
        _write(root / "ann" / "vstar_cur.json", _as_array([ALPHA, BETA])), video_root=root / "videos"
    )
    text = "\n".join(json.dumps(_legacy(r)) for r in (ALPHA, BETA)) + "\n"
    assert '"3_15": {"xmin": 10' in text
    path = _write(root / "ann" / "vstar_legacy.jsonl", text)
    assert detect_format(path) == "vstar"
    loaded = read_file(path, video_root=root / "videos")
    assert [line for line, _ in loaded.entries] == [1] * 5 + [2] * 5
    assert [r for _, r in loaded.entries] == [r for _, r in current.entries]


def test_vstar_errors_name_the_field(root):
    missing_video = {**ALPHA, "vid": "vs_nowhere"}
    normalised = {
        **BETA,
        "bboxes": [{"timestamp": 2, "frame_index": 5, "xmin": 0.1, "ymin": 0.2, "xmax": 0.5, "ymax": 0.9}],
    }
    no_timestamps = {k: v for k, v in ALPHA.items() if k != "timestamps"}
    bad_legacy_key = _legacy(BETA)
    bad_legacy_key["bboxes"] = [{"two_5": bad_legacy_key["bboxes"][0]["2_5"]}]
    path = _write(
        root / "ann" / "vstar_bad.json",
        _as_array([missing_video, normalised, no_timestamps, bad_legacy_key, BETA]),
    )
    loaded = read_file(path, video_root=root / "videos")
    assert loaded.read == 5
    errors = loaded.entries[:4]
    assert [line for line, _ in errors] == [2, 3, 4, 5]
    assert all(isinstance(e, FieldError) for _, e in errors)
    assert [e.field for _, e in errors] == ["vid", "bboxes", "timestamps", "bboxes[0]"]
    assert "vs_nowhere.mp4" in errors[0][1].message
    assert "normalised" in errors[1][1].message
    assert errors[2][1].message == "missing"
    # the good record keeps its place in the file: index 4
    good = [r for _, r in loaded.entries[4:]]
    assert [line for line, _ in loaded.entries[4:]] == [6] * 5
    assert [r["id"] for r in good][0] == "vs_beta#4/what"
    assert all(r["vstar"]["index"] == 4 for r in good)


def test_vstar_records_pass_validation(root):
    from visd_exp.data.validate import check_record

    loaded = read_file(
        _write(root / "ann" / "vstar_ok.json", _as_array([ALPHA, BETA])), video_root=root / "videos"
    )
    for _, record in loaded.entries:
        assert check_record(record, root, cache=None) == [], record["id"]


# ----------------------------------------------------------------------------- Charades-STA

CHARADES_TXT = (
    "vc_one 0.0 6.9##person opens the door.\n"
    "vc_two 2.4 7.5##a person is sitting on a chair\n"
    "\n"
    "vc_one 10.2 16.8##person turns on the light.\n"
    "vc_gone 1.0 2.0##person laughs.\n"
)


def test_charades_sta_text(root):
    path = _write(root / "ann" / "charades_sta_test.txt", CHARADES_TXT)
    assert detect_format(path) == "charades_sta"
    loaded = read_file(path, video_root=root / "videos")
    assert loaded.read == 4
    assert [line for line, _ in loaded.entries] == [1, 2, 4, 5]
    one = str((root / "videos/charades/x/vc_one.mp4").resolve())
    two = str((root / "videos/charades/vc_two.mp4").resolve())
    records = [r for _, r in loaded.entries[:3]]
    assert records == [
        {
            "id": "vc_one#0",
            "task": "temporal_grounding",
            "source": "charades_sta",
            "video_path": one,
            "question": f"When in the video does the following happen? Person opens the door. "
            f"Give its start and end as {SPAN}.",
            "answer": "[0.0, 6.9]",
            "segment": [0.0, 6.9],
        },
        {
            "id": "vc_two#0",
            "task": "temporal_grounding",
            "source": "charades_sta",
            "video_path": two,
            "question": f"When in the video does the following happen? A person is sitting on a chair. "
            f"Give its start and end as {SPAN}.",
            "answer": "[2.4, 7.5]",
            "segment": [2.4, 7.5],
        },
        {
            "id": "vc_one#1",
            "task": "temporal_grounding",
            "source": "charades_sta",
            "video_path": one,
            "question": f"When in the video does the following happen? Person turns on the light. "
            f"Give its start and end as {SPAN}.",
            "answer": "[10.2, 16.8]",
            "segment": [10.2, 16.8],
        },
    ]
    error = loaded.entries[3][1]
    assert isinstance(error, FieldError) and error.field == "vid" and "vc_gone.mp4" in error.message


def test_charades_sta_bad_lines(root):
    path = _write(
        root / "ann" / "charades_bad.txt",
        "vc_one 0.0 6.9##person opens the door.\nvc_one x 2##sits\nvc_one 1 2 3##sits\n",
    )
    loaded = read_file(path, video_root=root / "videos")
    assert loaded.entries[0][1]["id"] == "vc_one#0"
    assert [(line, e.field) for line, e in loaded.entries[1:]] == [(2, "start"), (3, "line")]


TIME_R1_JSON = (
    "{\n"
    '  "vc_one": {"duration": 30.96, "timestamps": [[0.0, 6.9], [10.2, 16.8]], '
    '"sentences": ["person opens the door.\\n", "person turns on the light.\\n"]},\n'
    '  "vc_two": {"duration": 20.0, "timestamps": [[2.4, 21.5]], "sentences": ["a person is sitting on a chair\\n"]}\n'
    "}\n"
)


def test_charades_sta_time_r1_json(root):
    path = _write(root / "ann" / "charades_test.json", TIME_R1_JSON)
    assert detect_format(path) == "charades_sta_json"
    loaded = read_file(path, video_root=root / "videos")
    assert loaded.read == 2
    assert [line for line, _ in loaded.entries] == [2, 2, 3]
    records = [r for _, r in loaded.entries]
    assert [r["id"] for r in records] == ["vc_one#0", "vc_one#1", "vc_two#0"]  # the text file's ids
    assert all(r["source"] == "charades_sta" and r["task"] == "temporal_grounding" for r in records)
    assert [r["duration"] for r in records] == [30.96, 30.96, 20.0]
    assert [r["answer"] for r in records] == ["[0.0, 6.9]", "[10.2, 16.8]", "[2.4, 21.5]"]
    assert records[2]["segment"] == [2.4, 21.5]  # past the duration: kept, validation clips and counts
    assert records[0]["video_path"] == str((root / "videos/charades/x/vc_one.mp4").resolve())
    # the trailing newline is gone: the same question as the text file's line
    assert records[1]["question"] == (
        f"When in the video does the following happen? Person turns on the light. Give its start and end as {SPAN}."
    )
    assert "\n" not in records[2]["question"]


def test_charades_sta_json_mismatched_lengths(root):
    text = '{"vc_one": {"duration": 30.0, "timestamps": [[0.0, 6.9]], "sentences": ["a\\n", "b\\n"]}}\n'
    loaded = read_file(
        _write(root / "ann" / "charades_mismatch.json", text),
        fmt="charades_sta_json",
        video_root=root / "videos",
    )
    ((line, error),) = loaded.entries
    assert line == 1 and isinstance(error, FieldError) and error.field == "sentences"


# ----------------------------------------------------------------------------- TVGBench

TVG = [
    {
        "path": "./activitynet/v_tg1.mp4",
        "question": "When does the man jump into the pool?",
        "answer": "3.5-9.0",
        "duration": 12.0,
        "question_type": "human action",
        "source": "activitynet",
    },
    {
        "path": "./ego4d/clips/tg2.mp4",
        "question": "When is the kettle put on the stove?",
        "answer": "0-12.5",
        "duration": 12.25,
        "question_type": "object interaction",
        "source": "ego4d",
    },
    {
        "path": "./ego4d/clips/tg2.mp4",
        "question": "When is the tap opened?",
        "answer": "about 3 s",
        "duration": 12.25,
        "question_type": "object interaction",
        "source": "ego4d",
    },
    {
        "path": "./ego4d/clips/tg2.mp4",
        "question": "When is the door closed?",
        "answer": "4-5",
        "question_type": "object interaction",
        "source": "ego4d",
    },
]


def test_tvgbench(root):
    path = _write(root / "ann" / "tvgbench.json", _as_array(TVG))
    assert detect_format(path) == "tvgbench"
    loaded = read_file(path, video_root=root / "videos")
    assert loaded.read == 4
    assert [line for line, _ in loaded.entries] == [2, 3, 4, 5]
    first, second = (r for _, r in loaded.entries[:2])
    assert first == {
        "id": "v_tg1#0",
        "task": "temporal_grounding",
        "source": "tvgbench",
        "video_path": str((root / "videos/activitynet/v_tg1.mp4").resolve()),
        "question": "When does the man jump into the pool?",
        "answer": "[3.5, 9.0]",
        "segment": [3.5, 9.0],
        "duration": 12.0,
    }
    assert second["id"] == "tg2#0"
    assert second["video_path"] == str((root / "videos/ego4d/clips/tg2.mp4").resolve())
    assert second["answer"] == "[0.0, 12.5]" and second["segment"] == [0.0, 12.5]  # past 12.25: kept
    assert second["duration"] == 12.25
    assert [(e.field, e.message) for _, e in loaded.entries[2:]] == [
        ("answer", "expected 'start-end' in seconds, got 'about 3 s'"),
        ("duration", "missing"),
    ]
