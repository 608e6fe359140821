"""Open-o3-Video STGR and Video-R1 files read into the project schema (data/formats/stgr.py, video_r1.py).

Fixtures are written here in the published shapes (JSON arrays, null keys, image records), never real
data, over small real mp4s of 64x48 (W != H, so an x/y mix-up in the normalised -> pixel scaling shows).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from visd_exp.data.formats import detect_format, read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.data.validate import probe

W, H = 64, 48
IMAGE_SKIP = "image record (images are not read)"


def write_video(path: Path, seconds: int = 8, fps: int = 4) -> Path:
    """A real h264 mp4 of W x H (the pattern of conftest.write_square_video, not square)."""
    import torch
    from torchcodec.encoders import VideoEncoder

    frames = torch.zeros(seconds * fps, 3, H, W, dtype=torch.uint8)
    frames[:, 0, 8:32, 8:40] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=fps).to_file(str(path), codec="libx264", pixel_format="yuv420p", crf=18)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A dataset root: STGR videos under per-source folders, Video-R1 videos under ./Folder/."""
    root = tmp_path_factory.mktemp("published")
    first = write_video(root / "clips" / "a.mp4")
    for rel in ("clips/b.mp4", "str_plm/v1.mp4", "abs_timerft/t1.mp4", "LLaVA-Video-178K/x/c1.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first, root / rel)
    from PIL import Image

    (root / "images").mkdir()
    Image.new("RGB", (640, 480), (0, 128, 255)).save(root / "images" / "1.jpg")  # STGR's gqa image record
    return root


class CountingProbe:
    """validate.probe behind a dict cache; remembers which paths were probed."""

    def __init__(self):
        self.cache: dict = {}

    def __call__(self, path: str):
        if path not in self.cache:
            self.cache[path] = probe(path)
        return self.cache[path]


def write_array(path: Path, records: list[dict]) -> Path:
    """A JSON array, one record per line: record k (0-based) starts on line k + 2."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", encoding="utf-8")
    return path


def by_line(loaded) -> dict:
    return dict(loaded.entries)


# ----------------------------------------------------------------------------- STGR-RL

MCQ_QUESTION = "Which way does the square move?\nA. left\nB. right\nC. up"
STGR_RL = [
    {
        "id": 101,
        "source": "timerft",
        "task": "temporal QA",
        "video_path": "clips/a.mp4",
        "question": "When is the red square visible?",
        "answer": "[2.0, 5.5]",
        "image_size": [1280, 720],
    },
    {
        "id": "s-2",
        "source": "timerft",
        "task": "temporal QA (MCQ)",
        "video_path": "clips/a.mp4",
        "question": "When does it stop?\nA. never\nB. at once\nC. at the end",
        "answer": "C\n[1.5, 6.0]",
    },
    {
        "id": 103,
        "source": "STR_plm_x",
        "task": "temporal-spatial free-form QA",
        "video_path": "clips/b.mp4",
        "question": "What is red?",
        "answer": "a square",
        "image_size": [1280, 720],
        "key_frames": [
            {"idx": 8, "time": 2.0, "path": "kf/103_8.jpg"},
            {"idx": 16, "time": 4.0, "path": "kf/103_16.jpg"},
        ],
        "key_items": {
            "8": {"red square": [[0.125, 0.25, 0.5, 0.75]]},
            "16": {"red square": [[0.0, 0.0, 1.0, 1.0]], "ball": [[0.1, 0.2, 0.55, 0.9]]},
        },
    },
    {
        "id": 104,
        "source": "videor1_mc",
        "task": "General video QA MCQ",
        "video_path": "clips/a.mp4",
        "question": MCQ_QUESTION,
        "answer": "B",
    },
    # a `datasets` load: the keys this task does not use come back as null
    {
        "id": 105,
        "source": "videor1_free_from",
        "task": "General video QA Free-form",
        "video_path": "clips/a.mp4",
        "image_path": None,
        "question": "Describe it.",
        "answer": "A red square.",
        "key_frames": None,
        "key_items": None,
        "reasoning_process": None,
        "image_size": None,
    },
    {
        "id": 106,
        "source": "gqa",
        "task": "visual QA",
        "image_path": "images/1.jpg",
        "question": "Where is the cup?",
        "answer": "<obj>cup</obj><box>[10,20,30,40]</box>",
        "image_size": [640, 480],
    },
    {
        "id": 107,
        "source": "videor1_mc",
        "task": "General video QA MCQ",
        "video_path": "clips/a.mp4",
        "question": "Which way does it move?",
        "answer": "B",
    },
    {
        "id": 108,
        "source": "STR_x",
        "task": "temporal-spatial free-form QA",
        "video_path": "clips/b.mp4",
        "question": "What?",
        "answer": "a cup",
        "key_frames": [{"idx": 8, "time": 2.0, "path": "kf.jpg"}],
        "key_items": {"8": {"cup": [[0.1, 0.1, 0.2, 0.2], [0.1, 0.2, 1.2, 0.9]]}},
    },
    {
        "id": 109,
        "source": "timerft",
        "task": "temporal qa",
        "video_path": "clips/a.mp4",
        "question": "When?",
        "answer": "[1.0, 2.0]",
    },
    {
        "id": 110,
        "source": "STR_x",
        "task": "temporal-spatial free-form QA",
        "video_path": "clips/missing.mp4",
        "question": "What?",
        "answer": "x",
        "key_frames": [{"idx": 0, "time": 0.0, "path": "k.jpg"}],
        "key_items": {"0": {"x": [[0.1, 0.1, 0.2, 0.2]]}},
    },
    {
        "id": None,
        "source": "timerft",
        "task": "temporal QA",
        "video_path": "clips/a.mp4",
        "question": "When?",
        "answer": "[1.0, 2.0]",
    },
    {
        "id": 112,
        "source": "timerft",
        "task": "temporal QA",
        "video_path": "clips/a.mp4",
        "question": "When?",
        "answer": "sometime",
    },
]


def test_stgr_rl(root, tmp_path):
    path = write_array(tmp_path / "STGR-RL.json", STGR_RL)
    assert detect_format(path) == "stgr"
    counting = CountingProbe()
    loaded = read_file(path, video_root=root, probe=counting)
    assert loaded.format == "stgr" and loaded.read == 12
    assert not loaded.skipped  # the image record is read (data/media.py), not skipped
    assert [line for line, _ in loaded.entries] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    got = by_line(loaded)
    assert got[7] == {
        "id": "106",
        "task": "visual_qa",
        "source": "gqa",
        "image_path": str((root / "images/1.jpg").resolve()),
        "question": "Where is the cup?",
        "answer": "<obj>cup</obj><box>[10,20,30,40]</box>",
        "image_size": [640, 480],
    }

    r = got[2]
    assert r == {
        "id": "101",
        "task": "temporal_grounding",
        "source": "timerft",
        "video_path": str((root / "clips/a.mp4").resolve()),
        "question": "When is the red square visible?",
        "answer": "[2.0, 5.5]",
        "segment": [2.0, 5.5],
    }  # no probe: no image_size taken from the file

    r = got[3]
    assert (r["id"], r["task"], r["answer"], r["segment"]) == (
        "s-2",
        "temporal_grounding_choice",
        "C\n[1.5, 6.0]",
        [1.5, 6.0],
    )
    assert r["options"] == ["A. never", "B. at once", "C. at the end"]

    r = got[4]
    assert r["task"] == "spatio_temporal_qa" and r["image_size"] == [64, 48]
    assert r["key_frames"] == [{"idx": 8, "time": 2.0}, {"idx": 16, "time": 4.0}]
    assert r["key_items"] == {
        "8": {"red square": [[8.0, 12.0, 32.0, 36.0]]},
        "16": {"red square": [[0.0, 0.0, 64.0, 48.0]], "ball": [[6.4, 9.6, 35.2, 43.2]]},
    }
    assert "segment" not in r and "reasoning_process" not in r

    r = got[5]
    assert (r["task"], r["answer"], r["options"]) == (
        "multiple_choice",
        "B",
        ["A. left", "B. right", "C. up"],
    )
    assert r["question"] == MCQ_QUESTION

    r = got[6]
    assert (r["id"], r["task"], r["source"], r["answer"]) == (
        "105",
        "free_form",
        "videor1_free_from",
        "A red square.",
    )
    assert not {"key_frames", "key_items", "image_size", "reasoning_process", "options"} & set(r)

    errors = {line: (e.field, e.message) for line, e in loaded.entries if isinstance(e, FieldError)}
    assert set(errors) == {8, 9, 10, 11, 12, 13}
    assert errors[8][0] == "question"
    assert errors[9][0] == "key_items[8][cup][1]" and "outside [0, 1]" in errors[9][1]
    assert errors[10][0] == "task" and "temporal qa" in errors[10][1]
    assert errors[11][0] == "video_path" and "not found" in errors[11][1]
    assert errors[12] == ("id", "missing")
    assert errors[13][0] == "answer"
    # only the records with normalised boxes were probed
    assert set(counting.cache) == {
        str((root / "clips/b.mp4").resolve()),
        str((root / "clips/missing.mp4").resolve()),
    }


# ----------------------------------------------------------------------------- STGR-SFT (pretty-printed)

SFT_TEXT = r"""[
  {
    "id": 201,
    "source": "TVG_ActivityNet",
    "task": "temporal QA",
    "video_path": "clips/a.mp4",
    "question": "When is the red square visible?",
    "answer": "From <t>2.0</t>s to <t>5.5</t>s",
    "reasoning_process": "The <obj>ball</obj><box>[0.1,0.2,0.55,0.9]</box>at<t>2.0</t>s appears, gone at <t>5.5</t>s."
  },
  {
    "id": 202,
    "source": "STR_x",
    "task": "temporal-spatial free-form QA",
    "video_path": "clips/b.mp4",
    "question": "What is red?",
    "answer": "a square",
    "key_frames": [{"idx": 8, "time": 2.0, "path": "kf/202_8.jpg"}],
    "key_items": {"8": {"red square": [[0.125, 0.25, 0.5, 0.75]]}},
    "reasoning_process": "At <t>2.0</t>s the <obj>red square</obj><box>[0.125, 0.25, 0.5, 0.75]</box> is red."
  },
  {"id": 203, "source": "videor1_mc", "task": "General video QA MCQ", "video_path": "clips/a.mp4",
   "question": "Which way?\nA. left\nB. right", "answer": "A",
   "reasoning_process": "It moves left."},
  {"id": 204, "source": "STR_x", "task": "temporal QA (MCQ)", "video_path": "clips/a.mp4",
   "question": "When?\nA. early\nB. late", "answer": "B\nFrom <t>4.0</t>s to <t>6.0</t>s",
   "reasoning_process": "Late: <obj>cup</obj><box>[12,20,40,44]</box>at<t>4.0</t>s."}
]
"""


def test_stgr_sft(root, tmp_path):
    path = tmp_path / "STGR-SFT.json"
    path.write_text(SFT_TEXT, encoding="utf-8")
    assert detect_format(path) == "stgr"
    counting = CountingProbe()
    loaded = read_file(path, video_root=root, probe=counting)
    assert [line for line, _ in loaded.entries] == [2, 11, 22, 25]
    got = by_line(loaded)

    r = got[2]
    assert r["segment"] == [2.0, 5.5] and r["answer"] == "From <t>2.0</t>s to <t>5.5</t>s"
    assert r["image_size"] == [64, 48]  # probed: the reasoning has boxes
    assert r["reasoning_process"] == (
        "<think>The <obj>ball</obj><box>[6,10,35,43]</box>at<t>2.0</t>s appears, gone at <t>5.5</t>s.</think>\n"
        "<answer>From <t>2.0</t>s to <t>5.5</t>s</answer>"
    )

    r = got[11]
    assert r["key_items"] == {"8": {"red square": [[8.0, 12.0, 32.0, 36.0]]}}
    assert r["reasoning_process"] == (
        "<think>At <t>2.0</t>s the <obj>red square</obj><box>[8,12,32,36]</box> is red.</think>\n"
        "<answer>a square</answer>"
    )

    r = got[22]
    assert r["reasoning_process"] == "<think>It moves left.</think>\n<answer>A</answer>"
    assert "image_size" not in r and r["options"] == ["A. left", "B. right"]

    e = got[25]  # pixel boxes where normalised ones are published
    assert isinstance(e, FieldError) and e.field == "reasoning_process"
    assert set(counting.cache) == {str((root / p).resolve()) for p in ("clips/a.mp4", "clips/b.mp4")}


def test_stgr_source_roots(root, tmp_path):
    records = [
        {
            "id": 1,
            "source": "STR_plm_x",
            "task": "temporal QA",
            "video_path": "v1.mp4",
            "question": "When?",
            "answer": "[1.0, 2.0]",
        },
        {
            "id": 2,
            "source": "timerft",
            "task": "temporal QA",
            "video_path": "t1.mp4",
            "question": "When?",
            "answer": "[1.0, 2.0]",
        },
        {
            "id": 3,
            "source": "videor1_free_from",
            "task": "General video QA Free-form",
            "video_path": "f.mp4",
            "question": "What?",
            "answer": "x",
        },
    ]
    path = write_array(tmp_path / "roots.json", records)
    roots = {"STR_plm_x": "str_plm", "timerft": str(root / "abs_timerft")}
    loaded = read_file(path, video_root=root, source_roots=roots, probe=CountingProbe())
    got = by_line(loaded)
    assert got[2]["video_path"] == str((root / "str_plm/v1.mp4").resolve())
    assert got[3]["video_path"] == str((root / "abs_timerft/t1.mp4").resolve())
    assert (
        isinstance(got[4], FieldError) and got[4].field == "source" and "videor1_free_from" in got[4].message
    )
    assert all(Path(got[k]["video_path"]).is_file() for k in (2, 3))


# ----------------------------------------------------------------------------- Video-R1


def vr1(pid, ptype, solution, options=(), data_type="video", path="./LLaVA-Video-178K/x/c1.mp4", **extra):
    return {
        "problem_id": pid,
        "problem": f"Question {pid}?",
        "data_type": data_type,
        "problem_type": ptype,
        "options": list(options),
        "solution": solution,
        "path": path,
        "data_source": "LLaVA-Video-178K",
        **extra,
    }


VIDEO_R1 = [
    vr1(1, "multiple choice", "<answer>B</answer>", ["A. red", "B. blue", "C. green"]),
    vr1(2, "numerical", "<answer>3.5</answer>"),
    vr1(3, "OCR", "<answer> EXIT 12 </answer>"),
    vr1(4, "free-form", "<answer>A red square moves.</answer>"),
    vr1(5, "regression", "<answer>42</answer>"),
    vr1(
        6,
        "multiple choice",
        "<answer>A</answer>",
        ["A. yes", "B. no"],
        data_type="image",
        path="./CLEVR/6.png",
    ),
    vr1(7, "numerical", "<answer>2</answer>", data_type="image", path="./Math/7.jpg"),
    vr1(8, "yes/no", "<answer>yes</answer>"),
    vr1(9, "multiple choice", "<answer>A</answer>", []),
    vr1(10, "free-form", "<answer></answer>"),
]


def test_video_r1(root, tmp_path):
    path = write_array(tmp_path / "Video-R1-260k.json", VIDEO_R1)
    assert detect_format(path) == "video_r1"
    counting = CountingProbe()
    loaded = read_file(path, video_root=root, probe=counting)
    assert loaded.format == "video_r1" and loaded.read == 10
    assert loaded.skipped == {IMAGE_SKIP: 2}
    assert [line for line, _ in loaded.entries] == [2, 3, 4, 5, 6, 9, 10, 11]
    got = by_line(loaded)
    video = str((root / "LLaVA-Video-178K/x/c1.mp4").resolve())
    assert got[2] == {
        "id": "1",
        "task": "multiple_choice",
        "source": "LLaVA-Video-178K",
        "video_path": video,
        "question": "Question 1?\nA. red\nB. blue\nC. green",
        "answer": "B",
        "options": ["A. red", "B. blue", "C. green"],
    }
    assert [(got[k]["task"], got[k]["answer"], got[k]["question"]) for k in (3, 4, 5, 6)] == [
        ("numerical", "3.5", "Question 2?"),
        ("ocr", "EXIT 12", "Question 3?"),
        ("free_form", "A red square moves.", "Question 4?"),
        ("regression", "42", "Question 5?"),
    ]
    assert all("options" not in got[k] and "reasoning_process" not in got[k] for k in (3, 4, 5, 6))
    assert [(got[k].field, type(got[k]).__name__) for k in (9, 10, 11)] == [
        ("problem_type", "FieldError"),
        ("options", "FieldError"),
        ("solution", "FieldError"),
    ]
    assert counting.cache == {}  # nothing of Video-R1 needs the frame size


def test_video_r1_cot(root, tmp_path):
    records = [
        vr1(
            11,
            "multiple choice",
            "<answer>C</answer>",
            ["A. 1", "B. 2", "C. 3"],
            process="<think>I count three squares.</think>",
        ),
        {
            **vr1(12, "free-form", "<answer>It turns.</answer>", process="<think>It rotates at 2 s.</think>"),
            "data_source": None,
        },
    ]
    path = write_array(tmp_path / "Video-R1-COT-165k.json", records)
    assert detect_format(path) == "video_r1"
    got = by_line(read_file(path, video_root=root))
    assert got[2]["reasoning_process"] == "<think>I count three squares.</think>\n<answer>C</answer>"
    assert (got[2]["answer"], got[2]["options"]) == ("C", ["A. 1", "B. 2", "C. 3"])
    assert got[3]["reasoning_process"] == "<think>It rotates at 2 s.</think>\n<answer>It turns.</answer>"
    assert (got[3]["id"], got[3]["source"], got[3]["answer"]) == ("12", "video_r1", "It turns.")


def test_read_records_pass_validation(root, tmp_path):
    """What the readers produce is a valid project record (pixel boxes, options, segments, supervision)."""
    from visd_exp.data.validate import validate_file

    stgr = validate_file(write_array(tmp_path / "STGR-RL.json", STGR_RL), video_root=root)
    assert stgr.valid_lines == [2, 3, 4, 5, 6, 7]  # 7: the gqa image record
    assert {p.line for p in stgr.problems} == {8, 9, 10, 11, 12, 13}
    sft = tmp_path / "STGR-SFT.json"
    sft.write_text(SFT_TEXT, encoding="utf-8")
    assert validate_file(sft, video_root=root).valid_lines == [2, 11, 22]
    vr = validate_file(write_array(tmp_path / "Video-R1-260k.json", VIDEO_R1), video_root=root)
    assert vr.valid_lines == [2, 3, 4, 5, 6] and vr.unused == {IMAGE_SKIP: 2}
