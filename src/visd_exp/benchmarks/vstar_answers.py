"""V-STaR: the answers read out of a prediction row (what, when, where), as the official pipelines read them.

- what: the text of the first `<answer>...</answer>` (across lines, stripped), else the whole reply
  (Open-o3-Video `test_vstar_multi_images.py` with --think_mode; V-STaR's `inference_demo.py` keeps the whole
  reply, which is the same for replies without tags).
- when: the answer's <t> interval; else, as `extract_timestamps` reads a reply, the two numbers of the answer
  text when it holds exactly two ("[2.0, 5.0]", "2 - 5 seconds"); for rows asked with Open-o3-Video's prompts
  (vstar.prompts = open_o3) its "m:ss" times are first turned into seconds, as its extract_timestamps does.
- where, two forms:
    * the project's claims `<obj>..</obj><box>[x1,y1,x2,y2]</box>at<t>sec</t>s` inside the answer: boxes in
      pixels of the frame the model saw, rescaled from `frame_size` to `image_size` (original pixels), keyed
      by the claim's time rounded half up to a whole second;
    * otherwise the official JSON form {"<sec>": [x1, y1, x2, y2], ...}, read by the rules of
      `extract_bounding_boxes` (V-STaR inference_demo.py at 1894682b; Open-o3-Video's copy at 1eb6ecae first
      takes the `<answer>` text): a ```json fenced block, else the span from the first "[" or "{" to the last
      "]" or "}"; single quotes made double; a list of objects merged into one; a list of [sec, box] pairs
      keyed str(sec); on a JSON error the brackets are balanced and a list is kept as a list (it scores 0).
      Keys and boxes are kept as written: both scripts define `denormalize_bbox` but never call it, so the
      boxes are compared with the ground truth in ORIGINAL video pixels, matched by key == str(timestamp).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

from visd_exp.rewards.parsing import parse_completion

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TWO_NUMBERS = re.compile(r"\b\d+(?:\.\d+)?\b")  # extract_timestamps
_MINUTES = re.compile(r"(\d+:\d+)")  # Open-o3-Video's extract_timestamps: "1:05" -> 65 s
_FENCED = re.compile(r"```json\s*\n(\[.*?\]|\{.*?\})\s*\n```", re.DOTALL)
_BRACKETED = re.compile(r"(\[[\s\S]*\]|\{[\s\S]*\})", re.DOTALL)


def claim_key(time: float) -> str:
    """Key of a predicted claim: its time rounded half up to the nearest whole second."""
    return str(math.floor(float(time) + 0.5))


def answer_text(row: Mapping) -> str:
    """The what-answer: the first <answer> block's text, stripped, else the whole reply."""
    reply = row.get("prediction") or ""
    match = _ANSWER.search(reply)
    return match.group(1).strip() if match else reply


def predicted_segment(row: Mapping) -> list[float] | None:
    """The answer's <t> interval, else the answer text's two numbers when it holds exactly two."""
    parsed = parse_completion(row.get("prediction") or "")
    if parsed.answer_segment is not None:
        return [float(parsed.answer_segment[0]), float(parsed.answer_segment[1])]
    text = parsed.answer if parsed.answer is not None else answer_text(row)
    if (row.get("vstar") or {}).get("prompts") == "open_o3":
        for stamp in _MINUTES.findall(text):
            minutes, seconds = stamp.split(":")
            text = text.replace(stamp, f"<t>{int(minutes) * 60 + int(seconds)}</t>s")
    numbers = _TWO_NUMBERS.findall(text)
    return [float(numbers[0]), float(numbers[1])] if len(numbers) == 2 else None


def _balanced(text: str) -> str:
    """fix_incomplete_json: missing closing brackets appended, missing opening ones prepended."""
    for open_, close in (("[", "]"), ("{", "}")):
        missing = text.count(open_) - text.count(close)
        text = text + close * missing if missing > 0 else open_ * -missing + text
    return text


def json_boxes(reply: str):
    """The where-answer's JSON form by the official rules (module docstring): a dict, a list, or None."""
    match = _ANSWER.search(reply)
    if match:
        reply = match.group(1).strip()
    found = _FENCED.search(reply) or _BRACKETED.search(reply)
    if found is None:
        return None
    text = found.group(1).strip().replace("'", '"')
    try:
        value = json.loads(text)
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            merged: dict = {}
            for item in value:
                merged.update(item)
            value = merged
        if isinstance(value, list):
            return {str(pair[0]): pair[1] for pair in value}
        return dict(value) if isinstance(value, dict) else None
    except Exception:  # the scripts catch everything here, the pair comprehension's errors included
        try:
            value = json.loads(_balanced(text))
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, (list, dict)) else None


def claim_boxes(row: Mapping) -> dict[str, list]:
    """{"<sec>": box or [boxes]} in image_size pixels from the answer's claims (unscaled when frame_size or
    image_size is unknown); {} when the answer has no claim with a time."""
    image, frame = row.get("image_size"), row.get("frame_size")
    known = image and frame and all(v > 0 for v in (*image, *frame))
    sx, sy = (image[0] / frame[0], image[1] / frame[1]) if known else (1.0, 1.0)
    by_key: dict[str, list[list[float]]] = {}
    for claim in parse_completion(row.get("prediction") or "").answer_claims:
        if claim.time is None:
            continue  # a box with no time has no key to be scored under
        for x1, y1, x2, y2 in claim.boxes:
            box = [round(x1 * sx, 2), round(y1 * sy, 2), round(x2 * sx, 2), round(y2 * sy, 2)]
            by_key.setdefault(claim_key(claim.time), []).append(box)
    return {k: boxes[0] if len(boxes) == 1 else boxes for k, boxes in by_key.items()}


def predicted_boxes(row: Mapping):
    """The where-answer: the project's claims when the answer has any, else the official JSON form ({} when
    neither is there; a list when the JSON form could only be read as one)."""
    claims = claim_boxes(row)
    if claims:
        return claims
    found = json_boxes(row.get("prediction") or "")
    return {} if found is None else found
