"""Sampling G completions per prompt with HF `generate`, keeping what the update needs.

Each prompt is repeated G times (rows of one prompt are contiguous: the group layout of Eq. 14).
The sampled tokens' log-probabilities under the policy, log softmax(logits / temperature), are
taken from the raw logits `generate` returns, so no second forward pass is needed for the old
policy; `tests/test_logprob_consistency.py` checks they match the training forward to 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visd_exp.objectives import selective_log_softmax


@dataclass
class RolloutBatch:
    """N = prompts x G rollouts; P prompt positions (left-padded), C completion positions."""

    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    mm_token_type_ids: torch.Tensor  # [N, P]
    pixel_values: torch.Tensor  # [sum of patches over the N rows, D]
    image_grid_thw: torch.Tensor  # [images over the N rows, 3]
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C]: 1 up to and including the end token
    old_logprobs: torch.Tensor  # [N, C] float32
    truncated: torch.Tensor  # [N] bool: hit max_completion_length with no end token
    texts: list[str]  # decoded completions (special tokens removed)

    @property
    def num_rollouts(self) -> int:
        return self.completion_ids.shape[0]

    def model_inputs(self) -> dict:
        """Inputs of a forward pass over prompt + completion (mrope needs mm_token_type_ids extended)."""
        return {
            "input_ids": torch.cat([self.prompt_ids, self.completion_ids], dim=1),
            "attention_mask": torch.cat([self.prompt_mask, self.completion_mask], dim=1),
            "mm_token_type_ids": torch.cat(
                [self.mm_token_type_ids, torch.zeros_like(self.completion_ids)], dim=1
            ),
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
        }


def repeat_prompts(batch: dict, num_generations: int) -> dict:
    """Repeat every prompt G times, rows of one prompt contiguous; vision tensors follow row order."""
    g = num_generations
    return {
        "input_ids": batch["input_ids"].repeat_interleave(g, dim=0),
        "attention_mask": batch["attention_mask"].repeat_interleave(g, dim=0),
        "mm_token_type_ids": batch["mm_token_type_ids"].repeat_interleave(g, dim=0),
        "pixel_values": torch.cat([pv for pv in batch["pixel_values"] for _ in range(g)]),
        "image_grid_thw": torch.cat([thw for thw in batch["image_grid_thw"] for _ in range(g)]),
    }


def completion_mask_from(ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first end token; rows without one are truncated (mask all)."""
    is_eos = ids == eos_token_id
    has_eos = is_eos.any(dim=1)
    first = torch.where(
        has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, ids.shape[1], dtype=torch.long)
    )
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return (positions <= first.unsqueeze(1)).long(), ~has_eos


@torch.no_grad()
def generate_rollouts(model, processor, batch: dict, cfg, suppress_token_ids: list[int]) -> RolloutBatch:
    """Sample `cfg.num_generations` completions per prompt of a collated batch."""
    inputs = repeat_prompts(batch, cfg.num_generations)
    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()
    try:
        sampling = {"do_sample": False}  # greedy (evaluation): no log-probs needed
        do_sample = cfg.get("do_sample", True)
        if do_sample:
            # transformers defaults top_k to 50: 0 disables it
            sampling = {
                "do_sample": True,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "top_k": cfg.get("top_k", 0),
            }
        out = model.generate(
            **inputs,
            **sampling,
            max_new_tokens=cfg.max_completion_length,
            suppress_tokens=suppress_token_ids,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=do_sample,  # old log-probs for the update; greedy decoding keeps no [N, C, V] logits
            return_dict_in_generate=True,
        )
    finally:
        model.train(was_training)
    prompt_len = inputs["input_ids"].shape[1]
    completion_ids = out.sequences[:, prompt_len:]
    mask, truncated = completion_mask_from(completion_ids, tokenizer.eos_token_id)
    if do_sample:
        logits = torch.stack(out.logits, dim=1)  # raw logits, before temperature / top-p / suppression
        old_logprobs = selective_log_softmax(logits, completion_ids, cfg.temperature) * mask
        del logits
    else:
        old_logprobs = torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
    del out
    # Tokens after the end token are padding: make them the pad id so decoding and replays ignore them.
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return RolloutBatch(
        prompt_ids=inputs["input_ids"],
        prompt_mask=inputs["attention_mask"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        completion_ids=completion_ids,
        completion_mask=mask,
        old_logprobs=old_logprobs,
        truncated=truncated,
        texts=texts,
    )


def policy_logprobs(model, rollouts: RolloutBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens under `model` (with grad) and their logits [N, C, V]."""
    completion_len = rollouts.completion_ids.shape[1]
    # logits_to_keep = C + 1: the last prompt position predicts the first completion token.
    out = model(**rollouts.model_inputs(), logits_to_keep=completion_len + 1, use_cache=False)
    logits = out.logits[:, :-1]
    return selective_log_softmax(logits, rollouts.completion_ids, temperature), logits
