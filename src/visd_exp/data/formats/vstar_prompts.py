"""V-STaR's five queries as two published pipelines ask them (`data.vstar_prompts`, formats/vstar.py).

Each function returns a record `prompt` (data/prompts.benchmark_messages): `before` (text before the first
frame), `frame` (each frame's template, or None for bare frames), `text` (after the frames), `system`.

- `official`: V-STaR-Bench/V-STaR `inference_demo.py` (read at 1894682b, 2026-03-02): `get_answer_vqa`,
  `get_answer_temporal`, `get_answer_spatial`, `get_answer_spatial_2`, `get_answer_temporal_2`. System
  "You are a helpful assistant."; the user turn is the prompt text, THEN the video (bare frames here). The
  object is not named by the pipeline: only the published questions name it. Facts kept:
    * video length = round(frame_count / fps, 2), written as Python writes a float ("12.0");
    * the two "when" prompts end in a trailing comma in the script (`prompt = f"...",`): a 1-tuple, which
      the chat template renders with str(), so the model reads "('This video is ... timestamps.',)" with
      the string's repr (a newline shows as the two characters "\\n"). Reproduced: str((text,)).
    * the where prompts are triple-quoted: their continuation lines carry the script's 20-space indent, the
      chain-1 range is list(range(ceil(s), floor(e) + 1)) (an empty range makes the script fail on
      time_range[0] and the record go unanswered; here its example key is left empty instead);
    * the boxes of chain 2's when are [[xmin, ymin, xmax, ymax], ...] in file order, as Python lists print.
- `open_o3`: marinero4972/Open-o3-Video `eval/test/test_vstar_multi_images.py` (read at 1eb6ecae,
  2025-11-11) with `--think_mode` (as its eval/scripts/eval_all.sh runs it): the same questions with its
  think-then-answer instructions; the frames are images labelled "Frame {i} at {round(t, 1)}s: " each
  followed by a newline, put where its prompt has the video placeholder (before the text when it has none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MODES = ("project", "official", "open_o3")
SYSTEM = "You are a helpful assistant."  # both pipelines' system message
OPEN_O3_FRAME = "Frame {i} at {t}s: {image}\n"  # create_frame_prompt
_INDENT = " " * 20  # the triple-quoted where prompts' continuation lines in inference_demo.py
_THINK = (
    "You must first think about the reasoning process in the mind and then provide the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively."
)
_GROUNDED = (
    " All reasoning must be grounded in visual evidence from the video. When you mention any related object, "
    "person, or specific visual element, you must strictly follow the following format: "
    "`<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`. "
    "Do not use <box>, <obj> and <t> in the answer part."
)
_SPAN = "`From <t>start_time</t>s to <t>end_time</t>s'"


def video_length(frame_count: float, fps: float) -> str:
    """round(frame_count / fps, 2) as the scripts' f-strings print it."""
    return f"{round(frame_count / fps, 2)}"


def time_range(segment: Sequence[float]) -> list[int]:
    """The whole seconds of the chain-1 where prompt: ceil(start) .. floor(end), both included."""
    return list(range(math.ceil(segment[0]), math.floor(segment[1]) + 1))


def _prompt(before: str, text: str, frame: str | None) -> dict:
    return {"system": SYSTEM, "before": before, "frame": frame, "text": text, "timestamps": False}


# ----------------------------------------------------------------------------- official (inference_demo.py)


def official_what(question: str) -> dict:
    text = (
        f"Answer the question about the video: {question} \n "
        "(If the answer is a person, you don't need to identify the person.)"
    )
    return _prompt(text, "", None)


def official_when(question: str, length: str) -> dict:
    text = (
        f"This video is {length} seconds long. Answer the question about the video: {question} \n "
        "Output the start and end moment timestamps."
    )
    return _prompt(str((text,)), "", None)  # the script's 1-tuple, as the chat template prints it


def official_when_given_boxes(question: str, length: str, size: Sequence[int], boxes: list) -> dict:
    text = (
        f"This video is {length} seconds long with a resolution of {size[0]}x{size[1]} (width x height). "
        f"Answer the question about the video: {question} \n There are {len(boxes)} bounding boxes of the key "
        f"object related to the question in the video without knowing the time, which are:{boxes}. "
        "Output the start and end moment timestamps."
    )
    return _prompt(str((text,)), "", None)


def official_where(question: str, seconds: list[int]) -> dict:
    first = seconds[0] if seconds else ""
    text = (
        f"Please answer the question about the video: {question} with a series of bounding boxes in "
        "[x1, y1, x2, y2] format. \n\n"
        f"{_INDENT}For each whole second within the time range {seconds} provided (inclusive of the "
        "boundaries), output a series of bounding boxes of the object in JSON format. The keys should be the "
        "whole seconds (as strings), and the values should be the box in [x1, y1, x2, y2] format.\n"
        f'{_INDENT}Example output: {{"{first}": [x1, y1, x2, y2],...}}\n'
        f"{_INDENT}"
    )
    return _prompt(text, "", None)


def official_where_unbounded(question: str, count: int) -> dict:
    text = (
        f"Please answer the question about the video: {question} with a series of bounding boxes in "
        "[x1, y1, x2, y2] format. \n\n"
        f"{_INDENT}For each whole second that may related to the question, output a series of bounding boxes "
        f"of the object in JSON format. You only need to output {count} bbox(es). You need to determine which "
        "frame is related to the question, and you don't need to output the bbox for the frames not related "
        "to the question.\n"
        f"{_INDENT}The keys should be the whole seconds (as strings), and the values should be the bounding "
        "box in [x0,y0,x1,y1] format. \n"
        f"{_INDENT}\n Example output:\n"
        f'{_INDENT}{{"0": [x0,y0,x1,y1], "1":..., ..., "{count}":...}} (if the frames at 0~{count} second '
        "are related to the questions)\n"
        f"{_INDENT}"
    )
    return _prompt(text, "", None)


# ----------------------------------------------------------------------------- Open-o3-Video (think mode)


def open_o3_what(question: str) -> dict:
    text = (
        f"Answer the question about the video: {question} \n "
        "(If the answer is a person, you don't need to identify the person.)" + _THINK + _GROUNDED
    )
    return _prompt("", text, OPEN_O3_FRAME)  # no placeholder: the frames come first


def open_o3_when(question: str, length: str) -> dict:
    text = (
        f"\nAnswer the question about the video: {question} \n. {_THINK} "
        f"The answer must follow the following format: {_SPAN}"
    )
    return _prompt(f"This video is {length} seconds long. ", text, OPEN_O3_FRAME)


def open_o3_when_given_boxes(question: str, length: str, size: Sequence[int], boxes: list) -> dict:
    before = (
        f"This video is {length} seconds long with a resolution of {size[0]}x{size[1]} (width x height). "
    )
    text = (
        f"\nAnswer the question about the video: {question} \nThere are {len(boxes)} bounding boxes of the key "
        f"object related to the question in the video without knowing the time, which are:{boxes}. {_THINK} "
        f"The answer must follow the following format: {_SPAN}"
    )
    return _prompt(before, text, OPEN_O3_FRAME)


def open_o3_where(question: str, seconds: list[int]) -> dict:
    first = seconds[0] if seconds else ""
    text = (
        f"\nPlease answer the question about the video: {question} with a series of bounding boxes in "
        f"[x1, y1, x2, y2] format.\n{_THINK}\n"
        f"In the answer part, for each whole second within the time range {seconds} provided (inclusive of the "
        "boundaries), output a series of bounding boxes of the object in JSON format. The keys should be the "
        "whole seconds (as strings), and the values should be the box in [x1, y1, x2, y2] format.\n"
        f'Example output of the answer part: {{"{first}": [x1, y1, x2, y2],...}}\n'
    )
    return _prompt("", text, OPEN_O3_FRAME)


def open_o3_where_unbounded(question: str, count: int) -> dict:
    text = (
        f"\nPlease answer the question about the video: {question} with a series of bounding boxes in "
        f"[x1, y1, x2, y2] format.\n{_THINK}\n"
        "In the answer part, for each whole second that may related to the question, output a series of "
        f"bounding boxes of the object in JSON format. You only need to output {count} bbox(es). You need to "
        "determine which frame is related to the question, and you don't need to output the bbox for the "
        "frames not related to the question.\n"
        "The keys should be the whole seconds (as strings), and the values should be the bounding box in "
        "[x0,y0,x1,y1] format.\n\n"
        "Example output of the answer part:\n"
        f'{{"0": [x0,y0,x1,y1], "1":..., ..., "{count}":...}} (if the frames at 0~{count} second are related '
        "to the questions)\n"
    )
    return _prompt("", text, OPEN_O3_FRAME)


def query_prompts(mode: str, raw: dict, boxes: list, size: Sequence[int], segment: Sequence[float]) -> dict:
    """{query suffix: record prompt} of one published record under `mode` (official | open_o3)."""
    length = video_length(raw["frame_count"], raw["fps"])
    seconds = time_range(segment)
    tq = raw["temporal_question"]
    if mode == "official":
        return {
            "what": official_what(raw["question"]),
            "when1": official_when(tq, length),
            "where1": official_where(raw["spatial_question"], seconds),
            "where2": official_where_unbounded(raw["spatial_question_2"], len(boxes)),
            "when2": official_when_given_boxes(tq, length, size, boxes),
        }
    if mode == "open_o3":
        return {
            "what": open_o3_what(raw["question"]),
            "when1": open_o3_when(tq, length),
            "where1": open_o3_where(raw["spatial_question"], seconds),
            "where2": open_o3_where_unbounded(raw["spatial_question_2"], len(boxes)),
            "when2": open_o3_when_given_boxes(tq, length, size, boxes),
        }
    raise ValueError(f"data.vstar_prompts={mode!r}: expected one of {', '.join(MODES)}")
