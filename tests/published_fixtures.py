"""Small files in the exact published shapes (written here, never copied from real data), over real mp4s
made at test time: STGR-RL, STGR-SFT, Video-R1-260k, V-STaR (current JSON) and Charades-STA text.

Each writer returns the data file; the videos sit under `root` where each format's reader looks for
them (STGR and Video-R1: the relative paths written in the file; V-STaR and Charades-STA: `<vid>.mp4`
somewhere below the root)."""

from __future__ import annotations

import json
from pathlib import Path

W, H = 64, 48  # W != H so that an x/y mix-up shows


def write_video(path: Path, seconds: int = 6, fps: int = 4) -> Path:
    """A red square moving right on black, W x H, h264."""
    import torch
    from torchcodec.encoders import VideoEncoder

    frames = torch.zeros(seconds * fps, 3, H, W, dtype=torch.uint8)
    for i in range(seconds * fps):
        x = 4 + 2 * i % (W - 20)
        frames[i, 0, 10:26, x : x + 16] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=fps).to_file(str(path), codec="libx264", pixel_format="yuv420p", crf=18)
    return path


def _array(path: Path, records: list[dict]) -> Path:
    path.write_text("[\n" + ",\n".join(json.dumps(r, indent=2) for r in records) + "\n]\n", encoding="utf-8")
    return path


STGR_RL = [
    {
        "id": 1,
        "source": "timerft",
        "task": "temporal QA",
        "video_path": "timerft/a.mp4",
        "question": "When is the red square on the left half?",
        "answer": "[0.5, 3.0]",
    },
    {
        "id": 2,
        "source": "TVG_activitynet",
        "task": "temporal QA (MCQ)",
        "video_path": "tvg/a.mp4",
        "question": "When does the square move?\nA. never\nB. at once\nC. throughout",
        "answer": "C\n[0.0, 5.5]",
    },
    {
        "id": 3,
        "source": "STR_plm_rdcap",
        "task": "temporal-spatial free-form QA",
        "video_path": "str/b.mp4",
        "question": "What colour is the square?",
        "answer": "red",
        "image_size": [W, H],
        "key_frames": [
            {"idx": 4, "time": 1.0, "path": "kf/3_4.jpg"},
            {"idx": 12, "time": 3.0, "path": "kf/3_12.jpg"},
        ],
        "key_items": {
            "4": {"red square": [[0.1875, 0.2083, 0.4375, 0.5417]]},
            "12": {"red square": [[0.5, 0.2083, 0.75, 0.5417]]},
        },
    },
    {
        "id": 4,
        "source": "videor1_mc",
        "task": "General video QA MCQ",
        "video_path": "vr1/a.mp4",
        "question": "Which way does the square move?\nA. left\nB. right\nC. up\nD. down",
        "answer": "B",
    },
    {
        "id": 5,
        "source": "videor1_free_from",
        "task": "General video QA Free-form",
        "video_path": "vr1/a.mp4",
        "question": "Describe the video.",
        "answer": "A red square moves to the right.",
    },
    {
        "id": 6,
        "source": "gqa",
        "task": "visual QA",
        "image_path": "gqa/1.jpg",
        "question": "Where is the cup?",
        "answer": "<obj>cup</obj><box>[10,20,30,40]</box>",
        "image_size": [640, 480],
    },
]


def write_image(path: Path, width: int, height: int) -> Path:
    """A jpg of width x height (STGR's gqa image records): a dark frame with a red box."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (20, 20, 20))
    ImageDraw.Draw(image).rectangle([width // 8, height // 6, width // 2, height // 2], fill=(230, 30, 30))
    image.save(path)
    return path


def write_stgr_rl(root: Path) -> Path:
    for rel in ("timerft/a.mp4", "tvg/a.mp4", "str/b.mp4", "vr1/a.mp4"):
        write_video(root / rel)
    write_image(root / "gqa" / "1.jpg", 640, 480)  # the visual QA record's image_size
    return _array(root / "STGR-RL.json", STGR_RL)


STGR_SFT = [
    {
        **STGR_RL[2],
        "id": 11,
        "reasoning_process": "At <t>1.0</t>s the <obj>red square</obj><box>[0.1875,0.2083,0.4375,0.5417]</box> is "
        "on the left; it is red.",
    },
    {
        **STGR_RL[0],
        "id": 12,
        "answer": "From <t>0.5</t>s to <t>3.0</t>s",
        "reasoning_process": "The square starts at <t>0.5</t>s on the left and leaves that half at <t>3.0</t>s.",
    },
    {**STGR_RL[3], "id": 13, "reasoning_process": "The square goes from left to right, so B."},
]


def write_stgr_sft(root: Path) -> Path:
    for rel in ("timerft/a.mp4", "str/b.mp4", "vr1/a.mp4"):
        if not (root / rel).exists():
            write_video(root / rel)
    return _array(root / "STGR-SFT.json", STGR_SFT)


VIDEO_R1 = [
    {
        "problem_id": 1,
        "problem": "Which way does the square move?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. left", "B. right"],
        "solution": "<answer>B</answer>",
        "path": "./LLaVA-Video-178K/a.mp4",
        "data_source": "LLaVA-Video-178K",
    },
    {
        "problem_id": 2,
        "problem": "How many squares are there?",
        "data_type": "video",
        "problem_type": "numerical",
        "options": [],
        "solution": "<answer>1.0</answer>",
        "path": "./STAR/b.mp4",
        "data_source": "STAR",
    },
    {
        "problem_id": 3,
        "problem": "What moves?",
        "data_type": "video",
        "problem_type": "free-form",
        "options": [],
        "solution": "<answer>a red square</answer>",
        "path": "./STAR/b.mp4",
        "data_source": "STAR",
    },
    {
        "problem_id": 4,
        "problem": "What text is shown?",
        "data_type": "video",
        "problem_type": "OCR",
        "options": [],
        "solution": "<answer>none</answer>",
        "path": "./STAR/b.mp4",
        "data_source": "STAR",
    },
    {
        "problem_id": 5,
        "problem": "How many seconds does the video last?",
        "data_type": "video",
        "problem_type": "regression",
        "options": [],
        "solution": "<answer>6</answer>",
        "path": "./LLaVA-Video-178K/a.mp4",
        "data_source": "LLaVA-Video-178K",
    },
    {
        "problem_id": 6,
        "problem": "What is in the image?",
        "data_type": "image",
        "problem_type": "free-form",
        "options": [],
        "solution": "<answer>a cat</answer>",
        "path": "./Images/c.jpg",
        "data_source": "Images",
    },
]


def write_video_r1(root: Path) -> Path:
    for rel in ("LLaVA-Video-178K/a.mp4", "STAR/b.mp4"):
        write_video(root / rel)
    return _array(root / "Video-R1-260k.json", VIDEO_R1)


VSTAR = [
    {
        "vid": "vs_one",
        "domain": "Indoor",
        "fps": 4,
        "width": W,
        "height": H,
        "frame_count": 24,
        "question": "What moves across the video?",
        "answer": "A red square.",
        "temporal_question": "When is the square on the right half?",
        "timestamps": [3.0, 5.5],
        "spatial_question": "Where is the square while it is on the right?",
        "spatial_question_2": "Where is the square?",
        "object": "red square",
        "bboxes": [
            {"timestamp": 3, "frame_index": 12, "xmin": 28, "ymin": 10, "xmax": 44, "ymax": 26},
            {"timestamp": 5, "frame_index": 20, "xmin": 44, "ymin": 10, "xmax": 60, "ymax": 26},
        ],
    },
    {
        "vid": "vs_two",
        "domain": "Outdoor",
        "fps": 4,
        "width": W,
        "height": H,
        "frame_count": 24,
        "question": "What colour is the square?",
        "answer": "Red.",
        "temporal_question": "When is the square visible?",
        "timestamps": [0.0, 6.0],
        "spatial_question": "Where is the square?",
        "spatial_question_2": "Where is the square at the start?",
        "object": "square",
        "bboxes": [{"timestamp": 1, "frame_index": 4, "xmin": 12, "ymin": 10, "xmax": 28, "ymax": 26}],
    },
]


def write_vstar(root: Path) -> Path:
    write_video(root / "videos" / "part1" / "vs_one.mp4")
    write_video(root / "videos" / "part2" / "deep" / "vs_two.mp4")
    return _array(root / "V_STaR_test.json", VSTAR)


CHARADES_LINES = [
    "AB12C 0.0 3.2##a person opens a door.",
    "AB12C 2.5 6.8##a person walks to the window.",  # ends past the 6 s video: clipped, counted
    "ZZ9XY 1.0 4.0##someone sits down.",
]


def write_charades(root: Path) -> Path:
    write_video(root / "Charades_v1_480" / "AB12C.mp4")
    write_video(root / "Charades_v1_480" / "ZZ9XY.mp4")
    path = root / "charades_sta_test.txt"
    path.write_text("\n".join(CHARADES_LINES) + "\n", encoding="utf-8")
    return path


def write_charades_json(root: Path) -> Path:
    """Time-R1's cached Charades-STA: one JSON object keyed by video; sentences keep their newline."""
    write_video(root / "videos" / "AB12C.mp4")
    data = {"AB12C": {"duration": 6.0, "timestamps": [[0.0, 3.2], [2.5, 6.4]],
                      "sentences": ["a person opens a door.\n", "a person walks to the window.\n"]}}  # fmt: skip
    path = root / "charades_test.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def write_tvgbench(root: Path) -> Path:
    write_video(root / "activitynet" / "v_abc.mp4")
    data = [{"path": "./activitynet/v_abc.mp4", "question": "When does the square reach the right edge?",
             "answer": "3.5-6.0", "duration": 6.0, "question_type": "human_action", "source": "activitynet"}]  # fmt: skip
    path = root / "tvgbench.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path
