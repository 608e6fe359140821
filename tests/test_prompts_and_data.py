"""Prompt building (Open-o3-Video style), the data module's setup checks, and collation."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from test_frames import DATA_CFG
from visd_exp.data.datamodule import VideoQADataModule, collate_prompts
from visd_exp.data.frames import VideoDecodeError
from visd_exp.data.prompts import SYSTEM_PROMPT, build_messages
from visd_exp.data.records import RecordError, load_records


def record(video: str, **extra) -> dict:
    base = {
        "id": "r0",
        "task": "temporal_grounding",
        "source": "test",
        "video_path": video,
        "question": "When is the red square visible?",
        "answer": "From <t>2.0</t>s to <t>5.0</t>s",
        "segment": [2.0, 5.0],
        "key_frames": [{"idx": 12, "time": 3.0}],
        "key_items": {"12": {"red square": [[8, 8, 32, 32]]}},
        "image_size": [56, 56],
        "duration": 8.0,
    }
    return {**base, **extra}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def data_cfg(train_file, **extra):
    """A data config over one JSONL file, with test_frames' frame settings."""
    files = {
        "train_file": str(train_file),
        "val_file": None,
        "test_file": None,
        "synthetic": None,
        "tasks": None,
    }
    loading = {"seed": 0, "batch_size": 2, "num_workers": 0, "max_prompt_length": 16384}
    return OmegaConf.merge(DATA_CFG, files, loading, extra)


def test_messages_put_a_timestamp_before_each_frame():
    messages = build_messages("Q?", "temporal_grounding", [0.0, 1.0, 2.5], 8.0)
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    parts = messages[1]["content"]
    assert parts[0]["text"].startswith("The video is 8.0 seconds long")
    images = [i for i, p in enumerate(parts) if p["type"] == "image"]
    assert len(images) == 3
    assert [parts[i - 1]["text"] for i in images] == [
        "Frame 1 at 0.0s:",
        "Frame 2 at 1.0s:",
        "Frame 3 at 2.5s:",
    ]
    assert "From <t>start</t>s to <t>end</t>s" in parts[-1]["text"]


def test_chat_template_and_vision_expansion(tiny, square_video):
    _, processor = tiny
    messages = build_messages("Q?", "multiple_choice", [0.0, 1.0], 8.0)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2


def test_datamodule_builds_batches(tiny, tmp_path, square_video):
    _, processor = tiny
    train = write_jsonl(tmp_path / "train.jsonl", [record("videos/square.mp4", id=f"r{i}") for i in range(3)])
    dm = VideoQADataModule(data_cfg(train), processor)
    dm.setup("fit")
    assert dm.stats["data/train_records"] == 3 and dm.stats["data/train_dropped_long_prompts"] == 0
    item = dm.datasets["train"][0]
    assert item["sample"]["frame_size"] == [56, 56] and item["sample"]["frame_times"][:3] == [0.0, 1.0, 2.0]
    # 8 frames of 56x56 -> 8 x (2 x 2) = 32 image tokens
    assert int((item["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 32
    assert int(item["mm_token_type_ids"].sum()) == 32
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and len(batch["pixel_values"]) == 2


def test_collate_left_pads():
    items = [
        {
            "input_ids": torch.tensor([[5, 6, 7]]),
            "attention_mask": torch.ones(1, 3, dtype=torch.long),
            "mm_token_type_ids": torch.tensor([[0, 1, 0]]),
            "pixel_values": torch.zeros(4, 2),
            "image_grid_thw": torch.tensor([[1, 2, 2]]),
            "sample": {},
            "frames": None,
            "text": "a",
        },
        {
            "input_ids": torch.tensor([[8]]),
            "attention_mask": torch.ones(1, 1, dtype=torch.long),
            "mm_token_type_ids": torch.tensor([[0]]),
            "pixel_values": torch.zeros(4, 2),
            "image_grid_thw": torch.tensor([[1, 2, 2]]),
            "sample": {},
            "frames": None,
            "text": "b",
        },
    ]
    batch = collate_prompts(items, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_over_long_prompts_are_dropped_and_counted(tiny, tmp_path, square_video):
    _, processor = tiny
    long_q = "word " * 400
    records = [
        record("videos/square.mp4", id="short"),
        record("videos/square.mp4", id="long", question=long_q),
    ]
    train = write_jsonl(tmp_path / "train.jsonl", records)
    dm = VideoQADataModule(data_cfg(train, max_prompt_length=400), processor)
    dm.setup("fit")
    assert dm.stats["data/train_dropped_long_prompts"] == 1
    assert [r["id"] for r in dm.datasets["train"].records] == ["short"]
    # the kept prompt's real length (processor output) is within the limit: the estimate is exact
    assert dm.datasets["train"][0]["input_ids"].shape[1] <= 400


def test_prompt_length_estimate_is_exact(tiny, tmp_path, square_video):
    from visd_exp.data.datamodule import prompt_length, prompt_text

    _, processor = tiny
    train = write_jsonl(tmp_path / "train.jsonl", [record("videos/square.mp4")])
    dm = VideoQADataModule(data_cfg(train), processor)
    dm.setup("fit")
    ds = dm.datasets["train"]
    text = prompt_text(processor, ds.records[0], ds.plans[0])
    assert prompt_length(processor, text, ds.plans[0]) == ds[0]["input_ids"].shape[1]


def test_missing_video_fails_at_setup_naming_the_file(tiny, tmp_path):
    from visd_exp.data.validate import DataValidationError

    _, processor = tiny
    train = write_jsonl(tmp_path / "train.jsonl", [record("videos/missing.mp4")])
    # validated first: file, line and field of the record, and the video's path
    dm = VideoQADataModule(data_cfg(train), processor)
    with pytest.raises(DataValidationError, match=r"train\.jsonl:1: video_path: .*videos/missing\.mp4"):
        dm.setup("fit")
    # without validation the probe still names the file
    dm = VideoQADataModule(data_cfg(train, validation="off"), processor)
    with pytest.raises(VideoDecodeError, match=r"videos/missing\.mp4: video file not found"):
        dm.setup("fit")


def test_bad_jsonl_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record("v.mp4")) + "\n" + json.dumps(record("v.mp4", question="")) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: question: missing"):
        load_records(path)
    path.write_text("{not json\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: <json>"):
        load_records(path)


def test_native_video_input_is_refused_clearly(tiny, tmp_path):
    _, processor = tiny
    with pytest.raises(NotImplementedError, match="data.video_input='video'"):
        VideoQADataModule(data_cfg(tmp_path / "x.jsonl", video_input="video"), processor)
