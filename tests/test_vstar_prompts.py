"""V-STaR queried as the official pipelines query it: the prompt layout keys (`before`, `frame`), the
official and Open-o3-Video prompts a reader gives its records (data.vstar_prompts), the rendered prompts.

Records are invented in the published shape; every expected value is worked out by hand from the official
scripts' rules and written as a literal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visd_exp.data.datamodule import key_times
from visd_exp.data.formats import read_file
from visd_exp.data.prompts import benchmark_messages, render_prompt

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
PAD = " " * 20  # the continuation lines of inference_demo.py's triple-quoted where prompts

# ----------------------------------------------------------------------------- benchmark_messages layout keys


def _flat(messages: list[dict]) -> str:
    return "".join(c["text"] if c["type"] == "text" else "<IMG>" for c in messages[-1]["content"])


def test_before_puts_text_ahead_of_the_frames():
    prompt = {"system": "S", "before": "Look: ", "text": "", "timestamps": False}
    messages = benchmark_messages(prompt, [0.0, 1.0])
    assert messages[0] == {"role": "system", "content": "S"}
    assert messages[1]["content"] == [
        {"type": "text", "text": "Look: "},
        {"type": "image"},
        {"type": "image"},
    ]  # an empty text adds nothing after the frames, and no newline is inserted
    with_text = benchmark_messages({**prompt, "text": "Q?"}, [0.0])
    assert _flat(with_text) == "Look: <IMG>Q?"
    # without `before` the old layout stands: the text after the frames, on a new line
    assert _flat(benchmark_messages({"system": None, "text": "Q?"}, [0.0])) == "<IMG>\nQ?"


def test_frame_template_labels_each_frame():
    prompt = {"system": None, "before": "", "frame": "Frame {i} at {t}s: {image}\n", "text": "Q?"}
    messages = benchmark_messages(prompt, [0.0, 1.25, 12.0])
    assert len(messages) == 1  # system None: no system message
    assert _flat(messages) == "Frame 1 at 0.0s: <IMG>\nFrame 2 at 1.2s: <IMG>\nFrame 3 at 12.0s: <IMG>\nQ?"
    # stills after the frames are not labelled
    stills = benchmark_messages({**prompt, "images": 1}, [0.0, 1.0])
    assert _flat(stills) == "Frame 1 at 0.0s: <IMG>\n<IMG>Q?"


def test_prompt_keys_are_checked():
    with pytest.raises(ValueError, match="one \\{image\\}"):
        benchmark_messages({"text": "Q", "frame": "Frame {i}:"}, [0.0])
    with pytest.raises(ValueError, match="takes system/text/timestamps/images/before/frame"):
        benchmark_messages({"text": "Q", "after": "x"}, [0.0])


# ----------------------------------------------------------------------------- the reader's prompts

RECORD = {
    "vid": "vs_alpha",
    "domain": "Indoor",
    "fps": 5,
    "width": 640,
    "height": 360,
    "frame_count": 52,
    "question": "What is the person holding?",
    "answer": "A red cup.",
    "temporal_question": "When does the person lift the cup?",
    "timestamps": [2.4, 5.6],
    "spatial_question": "Where is the cup while it is lifted?",
    "spatial_question_2": "Where is the cup?",
    "object": "cup",
    "bboxes": [
        {"timestamp": 3, "frame_index": 15, "xmin": 100, "ymin": 100, "xmax": 200, "ymax": 200},
        {"timestamp": 5, "frame_index": 25, "xmin": 20.5, "ymin": 8, "xmax": 44, "ymax": 36},
    ],
}


@pytest.fixture()
def vstar_file(tmp_path) -> Path:
    from conftest import write_square_video

    write_square_video(tmp_path / "videos" / "vs_alpha.mp4")
    path = tmp_path / "V_STaR_test.json"
    path.write_text(json.dumps([RECORD], indent=2))
    return path


def _records(path: Path, mode: str) -> dict[str, dict]:
    loaded = read_file(path, video_root=path.parent / "videos", options={"vstar_prompts": mode})
    return {r["id"].split("/")[1]: r for _, r in loaded.entries}


def test_official_prompts_are_the_pipelines(vstar_file):
    records = _records(vstar_file, "official")
    assert all(r["vstar"]["prompts"] == "official" and r["prompt"]["system"] == "You are a helpful assistant."
               for r in records.values())  # fmt: skip
    assert all(r["prompt"]["text"] == "" and r["prompt"]["frame"] is None for r in records.values())
    assert records["what"]["question"] == "What is the person holding?"  # the judge's question
    assert records["what"]["prompt"]["before"] == (
        "Answer the question about the video: What is the person holding? \n "
        "(If the answer is a person, you don't need to identify the person.)"
    )
    # 52 / 5 = 10.4 s; the script's trailing comma makes the prompt a 1-tuple, printed by the chat template
    assert records["when1"]["prompt"]["before"] == (
        "('This video is 10.4 seconds long. Answer the question about the video: When does the person lift "
        "the cup? \\n Output the start and end moment timestamps.',)"
    )
    assert records["when2"]["prompt"]["before"] == (
        "('This video is 10.4 seconds long with a resolution of 640x360 (width x height). Answer the question "
        "about the video: When does the person lift the cup? \\n There are 2 bounding boxes of the key object "
        "related to the question in the video without knowing the time, which are:[[100, 100, 200, 200], "
        "[20.5, 8, 44, 36]]. Output the start and end moment timestamps.',)"
    )
    # chain 2's where: no time, the number of boxes; the object is not named beyond the question
    assert records["where2"]["prompt"]["before"] == (
        "Please answer the question about the video: Where is the cup? with a series of bounding boxes in "
        "[x1, y1, x2, y2] format. \n\n"
        f"{PAD}For each whole second that may related to the question, output a series of bounding boxes of "
        "the object in JSON format. You only need to output 2 bbox(es). You need to determine which frame is "
        "related to the question, and you don't need to output the bbox for the frames not related to the "
        "question.\n"
        f"{PAD}The keys should be the whole seconds (as strings), and the values should be the bounding box in "
        "[x0,y0,x1,y1] format. \n"
        f"{PAD}\n Example output:\n"
        f'{PAD}{{"0": [x0,y0,x1,y1], "1":..., ..., "2":...}} (if the frames at 0~2 second are related to the '
        "questions)\n"
        f"{PAD}"
    )
    # the official pipelines sample frames without the answer's boxes: no key frames merged in
    assert key_times(records["where1"]) == [] and records["where1"]["key_frames"]


def test_project_prompts_stay_the_default(vstar_file):
    loaded = read_file(vstar_file, video_root=vstar_file.parent / "videos")
    records = {r["id"].split("/")[1]: r for _, r in loaded.entries}
    assert all("prompt" not in r and r["vstar"]["prompts"] == "project" for r in records.values())
    assert "<obj>cup</obj>" in records["where1"]["question"]  # the project names the object
    assert key_times(records["where1"]) == [3.0, 5.0]
    with pytest.raises(ValueError, match="data.vstar_prompts='openo3'"):
        read_file(vstar_file, video_root=vstar_file.parent / "videos", options={"vstar_prompts": "openo3"})


def test_the_model_is_sent_the_official_where_prompt(tiny, vstar_file):
    _, processor = tiny
    where1 = _records(vstar_file, "official")["where1"]
    text = render_prompt(processor, where1, [0.0, 1.0, 2.0], 10.4)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Please answer the question about the video: Where is the cup while it is lifted? with a series of "
        "bounding boxes in [x1, y1, x2, y2] format. \n\n"
        f"{PAD}For each whole second within the time range [3, 4, 5] provided (inclusive of the boundaries), "
        "output a series of bounding boxes of the object in JSON format. The keys should be the whole seconds "
        "(as strings), and the values should be the box in [x1, y1, x2, y2] format.\n"
        f'{PAD}Example output: {{"3": [x1, y1, x2, y2],...}}\n'
        f"{PAD}{IMG}{IMG}{IMG}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_the_model_is_sent_open_o3_videos_where_prompt(tiny, vstar_file):
    _, processor = tiny
    where1 = _records(vstar_file, "open_o3")["where1"]
    text = render_prompt(processor, where1, [0.0, 1.0], 10.4)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Frame 1 at 0.0s: {IMG}\nFrame 2 at 1.0s: {IMG}\n"
        "\nPlease answer the question about the video: Where is the cup while it is lifted? with a series of "
        "bounding boxes in [x1, y1, x2, y2] format.\n"
        "You must first think about the reasoning process in the mind and then provide the user with the "
        "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively.\n"
        "In the answer part, for each whole second within the time range [3, 4, 5] provided (inclusive of the "
        "boundaries), output a series of bounding boxes of the object in JSON format. The keys should be the "
        "whole seconds (as strings), and the values should be the box in [x1, y1, x2, y2] format.\n"
        'Example output of the answer part: {"3": [x1, y1, x2, y2],...}\n'
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_open_o3_when_prompt_surrounds_the_frames(vstar_file):
    when1 = _records(vstar_file, "open_o3")["when1"]
    assert _flat(benchmark_messages(when1["prompt"], [0.0])) == (
        "This video is 10.4 seconds long. Frame 1 at 0.0s: <IMG>\n"
        "\nAnswer the question about the video: When does the person lift the cup? \n. You must first think "
        "about the reasoning process in the mind and then provide the user with the answer. The reasoning "
        "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively. "
        "The answer must follow the following format: `From <t>start_time</t>s to <t>end_time</t>s'"
    )
