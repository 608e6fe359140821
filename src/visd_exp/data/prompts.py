"""Prompt building, the Open-o3-Video way: each sampled frame is an image preceded by its timestamp,
plus a line with the video's length, the question, and a system prompt asking for grounded reasoning.
An image record (data/media.py) is shown as its one image, without times, under a system prompt that
asks for boxes only (as Open-o3-Video prompts its visual QA images).

The student and the teacher use the SAME builder; the teacher's prompt only adds a privileged block
after the question (VISD section 3.2), so the completion tokens that follow line up one to one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SYSTEM_PROMPT = (
    "You answer questions about a video. First reason inside <think> </think>: cite the evidence you "
    "use as <obj>object</obj><box>[x1,y1,x2,y2]</box>at<t>seconds</t>s, with box corners in pixels of "
    "the frame. Then give only the final answer inside <answer> </answer>. For a time span, answer "
    "From <t>start</t>s to <t>end</t>s. For a multiple-choice question, answer with the option letter."
)

IMAGE_SYSTEM_PROMPT = (
    "You answer questions about an image. First reason inside <think> </think>: cite the evidence you "
    "use as <obj>object</obj><box>[x1,y1,x2,y2]</box>, with box corners in pixels of the image. Then "
    "give only the final answer inside <answer> </answer>."
)

# Task-specific reminders appended to the question; they tell the model which answer format is scored.
TASK_INSTRUCTIONS = {
    "temporal_grounding": "Answer with the time span as From <t>start</t>s to <t>end</t>s.",
    "temporal_grounding_choice": (
        "Answer with the time span as From <t>start</t>s to <t>end</t>s. then, on a new line, "
        "Correct Option: and the option letter."
    ),
    "spatio_temporal_qa": "Answer in a few words.",
    "visual_qa": "Answer with <obj>object</obj><box>[x1,y1,x2,y2]</box>.",
    "ocr": "Answer with the text exactly as written.",
    "spatio_temporal_grounding": "Answer with <obj>object</obj><box>[x1,y1,x2,y2]</box>at<t>seconds</t>s.",
    "multiple_choice": "Answer with the option letter.",
    "free_form": "Answer in a few words.",
    "numerical": "Answer with a number.",
    "regression": "Answer with a number.",
    "vstar_what_when_where": "Answer: colour; From <t>start</t>s to <t>end</t>s; <obj>object</obj><box>[x1,y1,x2,y2]</box>at<t>seconds</t>s.",
    "vstar_what_where_when": "Answer: colour; <obj>object</obj><box>[x1,y1,x2,y2]</box>at<t>seconds</t>s; From <t>start</t>s to <t>end</t>s.",
}


def _canonical(task: str) -> str | None:
    from visd_exp.rewards.tasks import UnknownTaskError, canonical_task

    try:
        return canonical_task(task)
    except UnknownTaskError:
        return None


def format_seconds(t: float) -> str:
    return f"{t:.1f}"


def build_messages(
    question: str,
    task: str,
    frame_times: Sequence[float],
    duration: float,
    privileged: str | None = None,
    system_prompt: str | None = None,
    image: bool = False,
) -> list[dict]:
    """Chat messages for one sample; one {"type": "image"} entry per sampled frame, in time order.
    `image`: the sample is one still image (frame_times holds its one frame), shown without times."""
    if image:
        if len(frame_times) != 1:
            raise ValueError(f"an image record is shown as one frame, got {len(frame_times)} frame times")
        system_prompt = IMAGE_SYSTEM_PROMPT if system_prompt is None else system_prompt
        content: list[dict] = [
            {"type": "text", "text": "The image:"},
            {"type": "image"},
            {"type": "text", "text": "\n"},
        ]
    else:
        system_prompt = SYSTEM_PROMPT if system_prompt is None else system_prompt
        content = [{"type": "text", "text": f"The video is {format_seconds(duration)} seconds long.\n"}]
        for i, t in enumerate(frame_times):
            content.append({"type": "text", "text": f"Frame {i + 1} at {format_seconds(t)}s:"})
            content.append({"type": "image"})
            content.append({"type": "text", "text": "\n"})
    instruction = TASK_INSTRUCTIONS.get(task) or TASK_INSTRUCTIONS.get(_canonical(task), "")
    content.append({"type": "text", "text": f"{question.strip()}\n{instruction}".rstrip()})
    if privileged:
        content.append({"type": "text", "text": "\n" + privileged.strip()})
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": content},
    ]


def render_prompt(
    processor, record: Mapping, frame_times: Sequence[float], duration: float, privileged: str | None = None
) -> str:
    """The chat-template text of a record's prompt; student and teacher prompts both come from here
    (an image record's, `image_path`, shows its one image: build_messages)."""
    from visd_exp.data.media import is_image_record

    if record.get("prompt") is not None:
        messages = benchmark_messages(record["prompt"], frame_times, privileged)
    else:
        messages = build_messages(
            record["question"],
            record["task"],
            frame_times,
            duration,
            privileged,
            image=is_image_record(record),
        )
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def benchmark_messages(
    prompt: Mapping, frame_times: Sequence[float], privileged: str | None = None
) -> list[dict]:
    """Chat messages of a record that carries its benchmark's own prompt (`record["prompt"]`, set by the
    benchmark readers in data/formats/): `system` (a string, or null for no system message), `text` (the
    whole user text after the frames, sent verbatim: no task instruction is appended), `timestamps`
    (true: each frame is labelled "Frame i at t s:" as in training; false: the frames are bare images, as
    the official pipelines pass a video) and optionally `images` (how many still images, e.g. VideoMMMU's
    Adaptation image, follow the video frames: they are the last entries of the plan).

    Two optional keys lay out prompts whose official text surrounds the frames: `before` (text sent before
    the first frame; then `text` follows the frames with no newline added, and an empty `text` adds
    nothing) and `frame` (each video frame as a template: "{image}" where the image goes, {i} its 1-based
    number, {t} its time as str(round(t, 1)); e.g. Open-o3-Video's "Frame {i} at {t}s: {image}\n")."""
    unknown = set(prompt) - {"system", "text", "timestamps", "images", "before", "frame"}
    if unknown or "text" not in prompt:
        raise ValueError(
            "record prompt: needs 'text', takes system/text/timestamps/images/before/frame; "
            f"got {sorted(prompt)}"
        )
    stills = int(prompt.get("images") or 0)
    video_times = list(frame_times)[: len(frame_times) - stills] if stills else list(frame_times)
    content: list[dict] = []
    if prompt.get("before"):
        content.append({"type": "text", "text": prompt["before"]})
    template = prompt.get("frame")
    if template is not None and template.count("{image}") != 1:
        raise ValueError(f"record prompt: 'frame' must hold one {{image}}, got {template!r}")
    for i, t in enumerate(video_times):
        if template is not None:
            head, tail = template.split("{image}")
            label = {"i": i + 1, "t": round(float(t), 1)}
            content.extend([{"type": "text", "text": head.format(**label)}] if head else [])
            content.append({"type": "image"})
            content.extend([{"type": "text", "text": tail.format(**label)}] if tail else [])
            continue
        if prompt.get("timestamps", False):
            content.append({"type": "text", "text": f"Frame {i + 1} at {format_seconds(t)}s:"})
        content.append({"type": "image"})
    for _ in range(stills):
        content.append({"type": "image"})
    if "before" in prompt:
        if prompt["text"]:
            content.append({"type": "text", "text": prompt["text"]})
    else:
        content.append({"type": "text", "text": ("\n" if content else "") + prompt["text"]})
    if privileged:
        content.append({"type": "text", "text": "\n" + privileged.strip()})
    messages = [{"role": "user", "content": content}]
    if prompt.get("system") is not None:
        messages.insert(0, {"role": "system", "content": prompt["system"]})
    return messages


def sample_text_for_corpus(sample: Mapping) -> str:
    """Plain text of a sample (question + answer + reasoning) for tokenizer training corpora."""
    parts = [sample.get("question", ""), sample.get("answer", ""), sample.get("reasoning_process", "")]
    return "\n".join(p for p in parts if p)
