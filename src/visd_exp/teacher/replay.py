"""Teacher replay: the teacher scores the SAME completion tokens the student sampled, after a prompt that
differs from the student's only by the privileged block (Algorithm 1, line 16; Eq. 2).

The teacher prompt reuses the student's frames: the text is rendered with the same chat template and each
<|image_pad|> is expanded to the same number of vision tokens the processor used for the student, so
pixel values and image grids are shared and no image is processed twice.
"""

from __future__ import annotations

import torch

from visd_exp.data.prompts import render_prompt
from visd_exp.models.shared_vision import CompletionStates, completion_states
from visd_exp.rollout.generation import RolloutBatch


def expand_and_tokenize(processor, text: str, image_grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """What the processor does for text: one <|image_pad|> per vision token; mm type 1 marks them."""
    tok = processor.tokenizer
    pad = processor.image_token
    merge = processor.image_processor.merge_size**2
    pieces = text.split(pad)
    if len(pieces) - 1 != image_grid_thw.shape[0]:
        raise ValueError(f"prompt has {len(pieces) - 1} images but {image_grid_thw.shape[0]} grids")
    expanded = pieces[0]
    for grid, piece in zip(image_grid_thw, pieces[1:]):
        expanded += pad * int(grid.prod().item() // merge) + piece
    ids = tok(expanded, add_special_tokens=False)["input_ids"]
    image_id = tok.convert_tokens_to_ids(pad)
    return ids, [1 if i == image_id else 0 for i in ids]


def teacher_inputs(
    processor,
    rollouts: RolloutBatch,
    samples: list[dict],
    blocks: list[str | None],
    grids_per_row: list[torch.Tensor],
) -> dict:
    """Model inputs of the teacher replay for every rollout row: left-padded teacher prompt + completion.

    A prompt's G rows hold the same sample object; rows whose privileged block is the same too (no
    feedback, or equal feedback) share one rendering and tokenisation."""
    rendered: dict = {}
    rows = []
    for s, b, g in zip(samples, blocks, grids_per_row):
        key = (id(s), b, tuple(g.flatten().tolist()))
        if key not in rendered:
            text = render_prompt(processor, s, s["frame_times"], s["video_duration"], b)
            rendered[key] = expand_and_tokenize(processor, text, g)
        rows.append(rendered[key])
    length = max(len(ids) for ids, _ in rows)
    pad_id = processor.tokenizer.pad_token_id
    n = len(rows)
    prompt_ids = torch.full((n, length), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(n, length, dtype=torch.long)
    mm = torch.zeros(n, length, dtype=torch.long)
    for i, (ids, types) in enumerate(rows):
        prompt_ids[i, length - len(ids) :] = torch.tensor(ids)
        prompt_mask[i, length - len(ids) :] = 1
        mm[i, length - len(ids) :] = torch.tensor(types)
    device = rollouts.completion_ids.device
    return {
        "input_ids": torch.cat([prompt_ids.to(device), rollouts.completion_ids], dim=1),
        "attention_mask": torch.cat([prompt_mask.to(device), rollouts.completion_mask], dim=1),
        "mm_token_type_ids": torch.cat([mm.to(device), torch.zeros_like(rollouts.completion_ids)], dim=1),
        "pixel_values": rollouts.pixel_values,
        "image_grid_thw": rollouts.image_grid_thw,
    }


@torch.no_grad()
def teacher_states(
    teacher_model,
    inputs: dict,
    completion_len: int,
    images_per_row: list[int] | None = None,
    image_features: dict | None = None,
) -> CompletionStates:
    """The teacher's last hidden states [N, C, H] at the completion positions (hidden[:, t] scores token t)
    and its output layer; the credit takes its top-K from them chunk by chunk (credit/lean.py), so no
    [N, C, V] logits are made. images_per_row: the rows' image counts, so that the G rollouts of a prompt
    share one vision pass. image_features: the rows' image features already computed by these same
    weights (teacher=current: the student's forward of these rows), so the frames are not encoded again."""
    was_training = teacher_model.training
    teacher_model.eval()
    try:
        return completion_states(teacher_model, inputs, completion_len, images_per_row, image_features)
    finally:
        teacher_model.train(was_training)
