"""One vision-tower pass per distinct prompt: the G rollouts of a prompt (Eq. 14's rows) carry G copies of
its frames, and the rollouts' prefill, the student's update, the old-log-prob recompute and the teacher
replay would otherwise encode every copy. Rows whose images equal an earlier row's (same grids, same
pixels) reuse its image features, handed to the model as `mm_encoder_outputs`; the language model sees
exactly what it saw before, and the gradient that reaches the vision tower is the sum over the copies.

    logits = forward_with_shared_vision(model, inputs, images_per_row, logits_to_keep=..., use_cache=False)
    states = completion_states(model, inputs, completion_len, images_per_row)   # no output layer
    model.generate(**without_pixels(inputs, images_per_row, model), ...)   # the prefill shares them too

With `teacher=current` the teacher IS the student: the update's student forward encodes the frames
(`vision_features`) and the teacher replay of the same rows takes those features, detached, instead of
encoding the same pixels with the same weights again (`image_features=`).

Rows with other frames (T-GRPO's shuffled rollouts, another prompt) are encoded on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from visd_exp.distributed.zero import is_partitioned


def row_slices(image_grid_thw: torch.Tensor, images_per_row: list[int]) -> tuple[list[slice], list[slice]]:
    """Per row: its slice of the images (grid rows) and of the concatenated patches (pixel rows)."""
    patches = image_grid_thw.prod(-1).tolist()
    images, pixels, image, pixel = [], [], 0, 0
    for n in images_per_row:
        count = int(sum(patches[image : image + n]))
        images.append(slice(image, image + n))
        pixels.append(slice(pixel, pixel + count))
        image, pixel = image + n, pixel + count
    return images, pixels


def image_sources(pixel_values, image_grid_thw, images_per_row: list[int]) -> list[int]:
    """sources[r]: the first row whose images equal row r's (r itself when its images are new).

    Only the previous distinct row is compared: repeats are contiguous (rollout/generation.py repeats
    each prompt G times in a row), so the check is linear and never misses a repeat of that layout."""
    images, pixels = row_slices(image_grid_thw, images_per_row)
    sources: list[int] = []
    last = None
    for r in range(len(images_per_row)):
        same = (
            last is not None
            and torch.equal(image_grid_thw[images[r]], image_grid_thw[images[last]])
            and torch.equal(pixel_values[pixels[r]], pixel_values[pixels[last]])
        )
        if not same:
            last = r
        sources.append(last)
    return sources


def shared_image_features(
    model, pixel_values, image_grid_thw, images_per_row: list[int] | None, always: bool = False
):
    """`mm_encoder_outputs` for the rows ({"image": features of every image, row after row}) with each
    distinct row's images encoded once; None when no row repeats an earlier one (nothing to share),
    unless `always` (the features are wanted for another forward too).

    Under ZeRO-3 the features are always computed here, shared or not: the vision tower gathers its
    partitioned weights collectively, so every rank must reach it at the same point of the forward, and
    whether rows repeat can differ between ranks (two equal prompts side by side on one of them)."""
    if images_per_row is None or pixel_values is None:
        return None
    outside = always or is_partitioned(model)
    if len(images_per_row) < 2 and not outside:
        return None
    sources = image_sources(pixel_values, image_grid_thw, images_per_row)
    distinct = sorted(set(sources))
    if len(distinct) == len(sources) and not outside:
        return None
    images, pixels = row_slices(image_grid_thw, images_per_row)
    encoded = model.get_image_features(
        torch.cat([pixel_values[pixels[r]] for r in distinct]),
        torch.cat([image_grid_thw[images[r]] for r in distinct]),
        return_dict=True,
    ).pooler_output  # one [tokens, hidden] tensor per image of the distinct rows
    per_row, start = {}, 0
    for r in distinct:
        per_row[r] = encoded[start : start + images_per_row[r]]
        start += images_per_row[r]
    features = tuple(f for r in range(len(sources)) for f in per_row[sources[r]])
    return {"image": BaseModelOutputWithPooling(pooler_output=features)}


def without_pixels(inputs: dict, images_per_row: list[int] | None, model) -> dict:
    """The inputs with `pixel_values` replaced by shared `mm_encoder_outputs` when rows repeat images."""
    shared = shared_image_features(
        model, inputs.get("pixel_values"), inputs.get("image_grid_thw"), images_per_row
    )
    return inputs if shared is None else with_features(inputs, shared)


def with_features(inputs: dict, features: dict) -> dict:
    """The inputs with `pixel_values` replaced by the rows' `mm_encoder_outputs`."""
    return {**{k: v for k, v in inputs.items() if k != "pixel_values"}, "mm_encoder_outputs": features}


def vision_features(model, pixel_values, image_grid_thw, images_per_row: list[int]) -> dict:
    """The rows' `mm_encoder_outputs`, computed here whether or not rows repeat (with grad when enabled)."""
    return shared_image_features(model, pixel_values, image_grid_thw, images_per_row, always=True)


def detached(features: dict) -> dict:
    """The same `mm_encoder_outputs` cut from the graph (for a no-grad forward that reuses them)."""
    return {
        "image": BaseModelOutputWithPooling(
            pooler_output=tuple(f.detach() for f in features["image"].pooler_output)
        )
    }


def forward_with_shared_vision(
    model, inputs: dict, images_per_row: list[int] | None, image_features: dict | None = None, **kwargs
):
    """model(**inputs, **kwargs), encoding each distinct row's images once, or not at all when their
    `image_features` (`mm_encoder_outputs` of these rows, by the same weights) are given."""
    if image_features is not None:
        return model(**with_features(inputs, image_features), **kwargs)
    return model(**without_pixels(inputs, images_per_row, model), **kwargs)


@dataclass
class CompletionStates:
    """A model's last hidden states at the positions that score the completion tokens, and its output layer:
    logits[:, t] = head(hidden[:, t]) scores token t (the chunked passes take it from here, never [n, C, V])."""

    hidden: torch.Tensor  # [n, C, H]
    head: torch.nn.Module  # the output layer (lm_head)


def completion_states(
    model,
    inputs: dict,
    completion_len: int,
    images_per_row: list[int] | None,
    image_features: dict | None = None,
) -> CompletionStates:
    """The language model without its output layer over prompt + completion (`model.model`, as
    Qwen2.5-VL's forward calls it before `lm_head`), sharing the rows' vision passes like
    `forward_with_shared_vision`; position C + 1 from the end predicts the first completion token."""
    inputs = (
        with_features(inputs, image_features)
        if image_features is not None
        else without_pixels(inputs, images_per_row, model)
    )
    hidden = model.model(**inputs, use_cache=False)[0]  # [n, P + C, H] after the final norm
    length = hidden.shape[1]
    return CompletionStates(
        hidden[:, length - completion_len - 1 : length - 1], model.get_output_embeddings()
    )
