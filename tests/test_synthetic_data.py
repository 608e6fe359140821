"""The synthetic grounded-video generator: schema, determinism, splits, the object really in the mp4,
the command line, and safe reuse of a generated data set."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from torchcodec.decoders import VideoDecoder

from visd_exp.data.records import REQUIRED_FIELDS
from visd_exp.data.synthetic import CHAINS, PRESETS, TASKS, ensure_dataset, generate
from visd_exp.data.synthetic_render import COLOURS

CLAIM = r"<obj>[a-z ]+</obj><box>\[\d+,\d+,\d+,\d+\]</box>at<t>\d+\.\d</t>s"


def load(out, split):
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "easy", num_videos=10, seed=3, preset="easy")


def test_schema_and_task_types(dataset):
    records = [r for s in ("train", "val", "test") for r in load(dataset, s)]
    assert {r["task"] for r in records} == set(TASKS) | set(CHAINS)
    assert {r["task"] for r in load(dataset, "train")} == set(TASKS)  # chains are evaluation-only
    for r in records:
        for field in REQUIRED_FIELDS:
            assert isinstance(r[field], str) and r[field]
        s, e = r["segment"]
        assert 0 <= s < e <= r["duration"] - 1 and r["image_size"] == [56, 56]
        assert (dataset / r["video_path"]).is_file()
        for kf in r["key_frames"]:
            assert s <= kf["time"] <= e and kf["idx"] == round(kf["time"] * 4)
            ((name, boxes),) = r["key_items"][str(kf["idx"])].items()
            x1, y1, x2, y2 = boxes[0]
            assert 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 56 and 22 <= x2 - x1 <= 28
        assert re.fullmatch(r"<think>.*</think><answer>.*</answer>", r["reasoning_process"], re.S)
        assert re.search(CLAIM, r["reasoning_process"])


def test_answers_follow_the_documented_formats(dataset):
    for r in load(dataset, "train"):
        if r["task"] == "temporal_grounding":
            s, e = r["segment"]
            assert r["answer"] == f"From <t>{s:.1f}</t>s to <t>{e:.1f}</t>s"
            assert float(s).is_integer() and float(e).is_integer()  # easy: whole-second grid
        elif r["task"] == "spatio_temporal_grounding":
            assert re.fullmatch(rf"{CLAIM}( {CLAIM})*", r["answer"])
        elif r["task"] == "multiple_choice":
            assert r["answer"] in "ABCD" and len(r["options"]) == 4 and r["options"][0] in r["question"]
        else:
            assert r["answer"] in COLOURS


def test_splits_are_disjoint_by_video(dataset):
    videos = {s: {r["video_path"] for r in load(dataset, s)} for s in ("train", "val", "test")}
    assert all(videos.values())
    assert not (
        videos["train"] & videos["val"] or videos["train"] & videos["test"] or videos["val"] & videos["test"]
    )
    assert sum(len(v) for v in videos.values()) == 10


def test_the_object_is_in_the_video_exactly_when_the_record_says(dataset):
    record = next(r for r in load(dataset, "train") if r["task"] == "temporal_grounding")
    colour_name = record["question"].split()[3]  # "When is the <colour> square visible in the video?"
    colour = torch.tensor(COLOURS[colour_name], dtype=torch.float32)
    decoder = VideoDecoder(str(dataset / record["video_path"]))
    s, e = record["segment"]
    for kf in record["key_frames"]:
        ((box,),) = record["key_items"][str(kf["idx"])].values()
        x1, y1, x2, y2 = box
        frame = decoder.get_frames_played_at(seconds=[kf["time"]]).data[0].float()
        inside = frame[:, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].mean(dim=(1, 2))
        assert (inside - colour).abs().max() < 30, (inside, colour)
        # one second outside the segment the same region is background
        t_out = s - 1 if s >= 1 else e + 1
        empty = (
            decoder.get_frames_played_at(seconds=[t_out]).data[0].float()[:, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3]
        )
        assert (empty.mean(dim=(1, 2)) - colour).abs().max() > 60


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    a = generate(tmp_path / "a", num_videos=4, seed=7)
    b = generate(tmp_path / "b", num_videos=4, seed=7)
    c = generate(tmp_path / "c", num_videos=4, seed=8)
    for split in ("train", "val", "test"):
        assert (a / f"{split}.jsonl").read_text() == (b / f"{split}.jsonl").read_text()
    assert (a / "train.jsonl").read_text() != (c / "train.jsonl").read_text()
    for video in sorted((a / "videos").iterdir()):
        fa = VideoDecoder(str(video)).get_frames_at(indices=list(range(32))).data
        fb = VideoDecoder(str(b / "videos" / video.name)).get_frames_at(indices=list(range(32))).data
        assert torch.equal(fa, fb)


def test_ensure_dataset_reuses_and_regenerates(tmp_path):
    out = tmp_path / "d"
    ensure_dataset(out, num_videos=3, seed=0)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    ensure_dataset(out, num_videos=3, seed=0)
    assert (out / "manifest.json").stat().st_mtime_ns == mtime  # reused, not regenerated
    ensure_dataset(out, num_videos=3, seed=0, frame_size=(64, 64))
    assert json.loads((out / "manifest.json").read_text())["params"]["difficulty"]["frame_size"] == [64, 64]
    assert not list(tmp_path.glob(".d.tmp-*"))


def test_a_half_written_directory_never_counts_as_complete(tmp_path):
    out = tmp_path / "d"
    generate(out, num_videos=3, seed=0)
    (out / "manifest.json").unlink()  # as if a crash happened before the manifest was written
    ensure_dataset(out, num_videos=3, seed=0)
    assert (out / "manifest.json").is_file()


def test_presets_get_harder():
    easy, medium, hard = PRESETS["easy"], PRESETS["medium"], PRESETS["hard"]
    assert easy.object_size[0] > hard.object_size[0] and easy.num_distractors <= medium.num_distractors
    assert easy.visibility >= hard.visibility


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "visd_exp.data.synthetic", f"out_dir={out}", "num_videos=3", "seed=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (out / "train.jsonl").is_file()
    bad = subprocess.run(cmd + ["colour=pink"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown key(s) ['colour']" in bad.stderr and "valid keys" in bad.stderr
