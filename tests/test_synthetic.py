"""The synthetic grounded-video data set: schema, splits, determinism, real pixels, CLI, reuse."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from visd_exp.data import synthetic
from visd_exp.data.synthetic import CHAINS, PRESETS, TASKS, ensure_dataset, generate, make_difficulty
from visd_exp.data.synthetic_render import BACKGROUND, COLOURS

FIELDS = {
    "id": str,
    "task": str,
    "source": str,
    "video_path": str,
    "question": str,
    "answer": str,
    "key_frames": list,
    "key_items": dict,
    "image_size": list,
    "duration": float,
    "reasoning_process": str,
}
ORDER = [
    "id",
    "task",
    "source",
    "video_path",
    "question",
    "options",
    "answer",
    "segment",
    "key_frames",
    "key_items",
    "image_size",
    "duration",
    "reasoning_process",
]
T = r"\d+\.\d+"
CLAIM = rf"<obj>([a-z]+ [a-z]+)</obj><box>\[(\d+),(\d+),(\d+),(\d+)\]</box>at<t>({T})</t>s"
TG_ANSWER = rf"From <t>({T})</t>s to <t>({T})</t>s"
REASONING = rf"<think>((?:{CLAIM} )+)[A-Z][^<]*\.</think><answer>(.*)</answer>"


def read_split(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


def read_all(root: Path) -> list[dict]:
    return [r for s in synthetic.SPLITS for r in read_split(root, s)]


def read_core(root: Path) -> list[dict]:
    """The four per-video task records (without the test split's V-STAR chain records)."""
    return [r for r in read_all(root) if r["task"] in TASKS]


def decode_at(path: Path, times: list[float]) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    frames = VideoDecoder(str(path)).get_frames_played_at(seconds=times).data
    return frames.permute(0, 2, 3, 1).numpy().astype(np.float32)  # N, H, W, 3


def box_mean(frame: np.ndarray, box: list[int], inset: int = 3) -> np.ndarray:
    """Mean colour inside a box, shrunk so that chroma bleeding at the edges does not count."""
    x1, y1, x2, y2 = box
    return frame[y1 + inset : y2 - inset, x1 + inset : x2 - inset].reshape(-1, 3).mean(0)


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("easy") / "ds", num_videos=24, seed=0)


def test_schema_of_every_record(easy):
    records = read_all(easy)
    test_videos = {r["video_path"] for r in read_split(easy, "test")}
    assert len(records) == 24 * len(TASKS) + len(test_videos) * len(CHAINS)
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        for field, typ in FIELDS.items():
            assert isinstance(r[field], typ), (field, r)
        assert [k for k in r if k not in ("chain", "what")] == ORDER
        assert r["source"] == "synthetic" and r["task"] in (*TASKS, *CHAINS)
        assert re.fullmatch(r"videos/\d+\.mp4", r["video_path"]) and (easy / r["video_path"]).is_file()
        assert r["image_size"] == [56, 56] and r["duration"] == 8.0
        s, e = r["segment"]
        assert isinstance(s, float) and isinstance(e, float) and s < e
        assert 1 <= len(r["key_frames"]) <= 3
        assert set(r["key_items"]) == {str(k["idx"]) for k in r["key_frames"]}
        for kf in r["key_frames"]:
            assert isinstance(kf["idx"], int) and isinstance(kf["time"], float)
            assert kf["idx"] == round(kf["time"] * 4) and s <= kf["time"] <= e
            (name, boxes), *rest = r["key_items"][str(kf["idx"])].items()
            assert not rest and re.fullmatch(r"[a-z]+ square", name) and len(boxes) == 1
            x1, y1, x2, y2 = boxes[0]
            assert all(isinstance(v, int) for v in boxes[0])
            assert 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 56 and 22 <= x2 - x1 <= 28
        if r["task"] == "multiple_choice":
            assert [o[:3] for o in r["options"]] == ["A. ", "B. ", "C. ", "D. "]
            assert r["question"].endswith("\n" + "\n".join(r["options"]))
        else:
            assert r["options"] is None


def test_all_tasks_present_and_share_the_video(easy):
    records = read_core(easy)
    assert {r["task"] for r in records} == set(TASKS)
    assert {r["task"] for r in read_all(easy) if r["task"] not in TASKS} == set(CHAINS)
    assert all(r["task"] in TASKS for s in ("train", "val") for r in read_split(easy, s))
    by_video: dict[str, list[dict]] = {}
    for r in records:
        by_video.setdefault(r["video_path"], []).append(r)
    for recs in by_video.values():
        assert sorted(r["task"] for r in recs) == sorted(TASKS)
        assert len({json.dumps([r["segment"], r["key_items"]]) for r in recs}) == 1


def test_splits_are_disjoint_by_video(easy):
    videos = {s: {r["video_path"] for r in read_split(easy, s)} for s in synthetic.SPLITS}
    assert all(videos.values())
    assert not (
        videos["train"] & videos["val"] or videos["train"] & videos["test"] or videos["val"] & videos["test"]
    )
    assert sum(len(v) for v in videos.values()) == 24
    assert synthetic.split_counts(3, (0.8, 0.1, 0.1)) == {"train": 1, "val": 1, "test": 1}
    assert synthetic.split_counts(64, (0.8, 0.1, 0.1)) == {"train": 52, "val": 6, "test": 6}


def test_same_seed_same_data_other_seed_other_data(easy, tmp_path):
    from torchcodec.decoders import VideoDecoder

    again = generate(tmp_path / "again", num_videos=24, seed=0)
    for name in ["manifest.json", *(f"{s}.jsonl" for s in synthetic.SPLITS)]:
        assert (again / name).read_bytes() == (easy / name).read_bytes()
    # The same frames up to codec noise. x264 is not bit-exact here: over 144 videos encoded twice, one
    # differed, by at most 3 intensity levels on 208 of ~300k pixels (the object/background contrast is
    # ~200 levels). So records compare byte for byte, decoded frames within 8 levels.
    for mp4 in sorted((easy / "videos").iterdir()):
        a = VideoDecoder(str(mp4)).get_frames_in_range(start=0, stop=32).data
        b = VideoDecoder(str(again / "videos" / mp4.name)).get_frames_in_range(start=0, stop=32).data
        assert (a.int() - b.int()).abs().max() <= 8, mp4.name
    other = generate(tmp_path / "other", num_videos=24, seed=1)
    assert (other / "train.jsonl").read_bytes() != (easy / "train.jsonl").read_bytes()
    first = VideoDecoder(str(easy / "videos" / "00000.mp4")).get_frames_in_range(start=0, stop=32).data
    assert not torch.equal(
        VideoDecoder(str(other / "videos" / "00000.mp4")).get_frames_in_range(start=0, stop=32).data, first
    )


def test_decoded_video_shows_the_object_exactly_in_its_segment(easy):
    for r in [r for r in read_core(easy) if r["task"] == "temporal_grounding"][:8]:
        s, e = r["segment"]
        frames = decode_at(easy / r["video_path"], [float(t) for t in range(8)])  # the 1 frame/s sample
        kf = {k["time"]: r["key_items"][str(k["idx"])] for k in r["key_frames"]}
        for t, items in kf.items():
            ((name, [box]),) = items.items()
            colour = np.array(COLOURS[name.split()[0]], dtype=np.float32)
            assert np.abs(box_mean(frames[int(t)], box) - colour).max() < 20, (r["id"], t)
        some_box = next(iter(kf.values()))
        box = next(iter(some_box.values()))[0]
        for t in range(8):
            # Anything drawn shows as a large deviation from the plain background somewhere.
            shown = np.abs(frames[t] - np.array(BACKGROUND, dtype=np.float32)).max() > 60
            assert shown == (s <= t <= e), (r["id"], t, r["segment"])
            if not shown:
                assert np.abs(box_mean(frames[t], box) - np.array(BACKGROUND)).max() < 6


def test_easy_preset_values_and_grid(easy):
    d = PRESETS["easy"]
    assert (d.frame_size, d.object_size, d.num_distractors, d.fps, d.duration) == (
        (56, 56),
        (22, 28),
        0,
        4,
        8.0,
    )
    assert (d.visibility, d.time_grid, d.min_segment, d.noise, d.shapes) == (1.0, 1.0, 2.0, 0.0, ("square",))
    for r in read_all(easy):
        s, e = r["segment"]
        assert s == int(s) and e == int(e) and 0 <= s and e <= r["duration"] - 1 and e - s >= 2
        assert [k["time"] for k in r["key_frames"]] == [s, s + (e - s) // 2, e]


def test_answers_and_reasoning_parse(easy):
    letters = set()
    for r in read_core(easy):
        m = re.fullmatch(REASONING, r["reasoning_process"])
        assert m, r["reasoning_process"]
        assert m.group(8) == r["answer"]
        claims = re.findall(CLAIM, m.group(1))
        assert len(claims) == len(r["key_frames"])
        for (name, *box, t), kf in zip(claims, r["key_frames"]):
            assert float(t) == kf["time"] and [int(v) for v in box] == r["key_items"][str(kf["idx"])][name][0]
        target = claims[0][0]
        if r["task"] == "temporal_grounding":
            start, end = re.fullmatch(TG_ANSWER, r["answer"]).groups()
            assert [float(start), float(end)] == r["segment"]
        elif r["task"] == "spatio_temporal_grounding":
            assert (
                re.fullmatch(rf"{CLAIM}(?: {CLAIM})*", r["answer"])
                and re.findall(CLAIM, r["answer"]) == claims
            )
        elif r["task"] == "multiple_choice":
            assert re.fullmatch(r"[ABCD]", r["answer"])
            letters.add(r["answer"])
            # The right option is the direction the boxes move between the first and last key frame.
            first, last = (
                r["key_items"][str(k["idx"])][target][0] for k in (r["key_frames"][0], r["key_frames"][-1])
            )
            dx, dy = last[0] - first[0], last[1] - first[1]
            direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert r["options"]["ABCD".index(r["answer"])] == f"{r['answer']}. {direction}"
            assert sorted(o[3:] for o in r["options"]) == ["down", "left", "right", "up"]
        else:
            assert r["answer"] == target.split()[0] and r["answer"] in COLOURS
    assert len(letters) >= 3  # the right letter's position is random


def test_chain_records_parse(easy):
    chains = [r for r in read_split(easy, "test") if r["task"] in CHAINS]
    assert chains
    for r in chains:
        parts = dict(zip(r["chain"], r["answer"].split("; ")))
        assert r["chain"] == list(CHAINS[r["task"]]) and set(parts) == {"what", "when", "where"}
        assert parts["what"] == r["what"] and r["what"] in COLOURS
        assert [float(v) for v in re.fullmatch(TG_ANSWER, parts["when"]).groups()] == r["segment"]
        assert re.fullmatch(rf"{CLAIM}(?: {CLAIM})*", parts["where"])
        assert r["reasoning_process"] == f"<think>{parts['where']}</think><answer>{r['answer']}</answer>"


def test_medium_and_hard_presets(tmp_path):
    for preset in ("medium", "hard"):
        root = generate(tmp_path / preset, num_videos=3, seed=2, preset=preset)
        d = PRESETS[preset]
        for r in read_all(root):
            assert r["image_size"] == list(d.frame_size) and r["duration"] == d.duration
            s, e = r["segment"]
            assert s * 2 == int(s * 2) and e * 2 == int(e * 2) and e <= d.duration - d.time_grid
            assert len(next(iter(r["key_items"].values()))) == 1  # distractors are not listed


def test_overrides_and_errors(tmp_path):
    root = generate(tmp_path / "big", num_videos=3, seed=0, frame_size=[64, 48], tasks=["free_form"])
    records = read_core(root)
    assert {r["task"] for r in records} == {"free_form"} and records[0]["image_size"] == [64, 48]
    assert json.loads((root / "manifest.json").read_text())["params"]["difficulty"]["frame_size"] == [64, 48]
    with pytest.raises(ValueError, match="valid"):
        make_difficulty("easy", colour_count=3)
    with pytest.raises(ValueError, match="even"):
        make_difficulty("easy", frame_size=(57, 56))
    with pytest.raises(ValueError, match="preset"):
        make_difficulty("impossible")


def test_cli_writes_files_and_rejects_unknown_keys(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "visd_exp.data.synthetic",
        f"out_dir={tmp_path / 'cli'}",
        "num_videos=4",
        "seed=3",
    ]
    done = subprocess.run([*cmd, "frame_size=[64,64]"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "train:" in done.stdout and "temporal_grounding=" in done.stdout
    assert len(list((tmp_path / "cli" / "videos").glob("*.mp4"))) == 4
    assert read_all(tmp_path / "cli")[0]["image_size"] == [64, 64]
    bad = subprocess.run([*cmd, "wobble=1"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "wobble" in bad.stderr and "num_distractors" in bad.stderr


def test_ensure_dataset_reuses_and_regenerates(tmp_path):
    out = tmp_path / "ds"
    assert ensure_dataset(out, num_videos=3, seed=0) == out.absolute()
    stamp = {p: p.stat().st_mtime_ns for p in [out / "manifest.json", out / "videos" / "00000.mp4"]}
    ensure_dataset(out, num_videos=3, seed=0, preset="easy", fps=4)  # same resolved parameters
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    ensure_dataset(out, num_videos=3, seed=5)
    assert json.loads((out / "manifest.json").read_text())["params"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock", "ds"]  # no tmp or old dirs left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_dataset(tmp_path / "mine", num_videos=3)


def test_ensure_dataset_crash_leaves_nothing_complete(tmp_path, monkeypatch):
    calls = []

    def failing_encode(frames, path, fps):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_encode(frames, path, fps)

    real_encode = synthetic.encode_mp4
    monkeypatch.setattr(synthetic, "encode_mp4", failing_encode)
    with pytest.raises(RuntimeError, match="simulated"):
        ensure_dataset(tmp_path / "ds", num_videos=3)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.tmp-*"))
    monkeypatch.setattr(synthetic, "encode_mp4", real_encode)
    assert (ensure_dataset(tmp_path / "ds", num_videos=3) / "manifest.json").is_file()


def test_ensure_dataset_concurrent_callers(tmp_path):
    code = (
        "import sys; from visd_exp.data.synthetic import ensure_dataset; "
        "print(ensure_dataset(sys.argv[1], num_videos=6, seed=1))"
    )
    env = {**os.environ, "TQDM_DISABLE": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ds")], stdout=subprocess.PIPE, env=env)
        for _ in range(3)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(read_core(tmp_path / "ds")) == 6 * len(TASKS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock", "ds"]
