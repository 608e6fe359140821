"""Rows of several RolloutBatches, whose prompts and completions differ in length, as one RolloutBatch.

FFR (algorithms/ffr.py) trains on a chosen rollout per item: the first-pass rollout, or its re-answer under
a teacher's evidence patch, which was sampled from a longer prompt in a separate `generate` call. The
ratio of each row must be computed under the prompt THAT row was sampled with, so the merged batch keeps
every row's own prompt ids and its own sampling pass's log-probs:

    prompts      left-padded to the longest chosen prompt: pad id, attention mask 0, mm token type 0
                 (the model's positions, mrope included, count only attended tokens, so extra left
                 padding leaves a row's log-probs unchanged: tests/test_ffr.py checks it to 1e-5)
    completions  right-padded to the longest chosen completion: pad id, mask 0, old log-prob 0
    vision       each row's pixel patches and image grids, concatenated in the merged row order
    per row      texts, truncated, images_per_row

Columns that no chosen row uses (all-padding prompt columns on the left, all-masked completion columns on
the right) are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from visd_exp.rollout.generation import RolloutBatch


def _left_pad(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.cat([x.new_full((x.shape[0], length - x.shape[1]), value), x], dim=1)


def _right_pad(x: torch.Tensor, length: int, value) -> torch.Tensor:
    return torch.cat([x, x.new_full((x.shape[0], length - x.shape[1]), value)], dim=1)


def merge_rows(
    batches: Sequence[RolloutBatch], rows: Sequence[tuple[int, int]], pad_token_id: int
) -> RolloutBatch:
    """The rollouts `rows` = [(batch index, row index), ...], in that order, as one batch."""
    if not rows:
        raise ValueError("merge_rows needs at least one row")
    parts = [batches[b].select(slice(r, r + 1)) for b, r in rows]
    prompt_len = max(p.prompt_ids.shape[1] for p in parts)
    completion_len = max(p.completion_ids.shape[1] for p in parts)
    prompt_ids = torch.cat([_left_pad(p.prompt_ids, prompt_len, pad_token_id) for p in parts])
    prompt_mask = torch.cat([_left_pad(p.prompt_mask, prompt_len, 0) for p in parts])
    mm = torch.cat([_left_pad(p.mm_token_type_ids, prompt_len, 0) for p in parts])
    completion_ids = torch.cat([_right_pad(p.completion_ids, completion_len, pad_token_id) for p in parts])
    completion_mask = torch.cat([_right_pad(p.completion_mask, completion_len, 0) for p in parts])
    old_logprobs = torch.cat([_right_pad(p.old_logprobs, completion_len, 0.0) for p in parts])
    engine = None
    if all(p.engine_logprobs is not None for p in parts):
        engine = torch.cat([_right_pad(p.engine_logprobs, completion_len, 0.0) for p in parts])

    # Drop columns no row uses: leading prompt columns masked everywhere, trailing completion columns too.
    used = prompt_mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else prompt_len
    used = completion_mask.any(dim=0).nonzero()
    stop = int(used[-1]) + 1 if len(used) else 0
    return RolloutBatch(
        prompt_ids=prompt_ids[:, start:],
        prompt_mask=prompt_mask[:, start:],
        mm_token_type_ids=mm[:, start:],
        pixel_values=torch.cat([p.pixel_values for p in parts]),
        image_grid_thw=torch.cat([p.image_grid_thw for p in parts]),
        completion_ids=completion_ids[:, :stop],
        completion_mask=completion_mask[:, :stop],
        old_logprobs=old_logprobs[:, :stop],
        engine_logprobs=None if engine is None else engine[:, :stop],
        truncated=torch.cat([p.truncated for p in parts]),
        texts=[t for p in parts for t in p.texts],
        images_per_row=[n for p in parts for n in p.images_per_row],
    )
