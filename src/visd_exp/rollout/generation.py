"""Sampling G completions per prompt with HF `generate`, keeping what the update needs.

Each prompt is repeated G times (rows of one prompt are contiguous: the group layout of Eq. 14).
The sampled tokens' log-probabilities under the policy, log softmax(logits / temperature) at the
chosen token, are taken step by step from the raw logits (before suppression, temperature and
top-p), so only [N, C] numbers are kept, never [N, C, V] scores. In fp32 they are the old policy's
log-probs (`tests/test_logprob_consistency.py`: equal to the training forward's to 1e-4); in bf16 the
cached decoding differs from a full forward, so the update recomputes them (`algorithm.old_logprobs`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from visd_exp.credit.lean import PositionTerms
from visd_exp.distributed.zero import generate_sync_kwargs
from visd_exp.models.shared_vision import completion_states, without_pixels
from visd_exp.objectives.chunked_logprobs import LOGPROB_CHUNK_SIZE, TokenLogProbs, completion_logprobs


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
    images_per_row: list[int] | None = None  # images (frames) of each row, to split the vision tensors
    # [N, C] float32: the sampled tokens' log-probs as the rollout engine computed them (HF: the same as
    # old_logprobs from generate; vLLM: its processed log-probs). rollout/logprob_diff_* compares them with
    # the trainer's forward; algorithm.rollout_correction weighs the loss by their ratio.
    engine_logprobs: torch.Tensor | None = None

    @property
    def num_rollouts(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, rows: slice) -> RolloutBatch:
        """Rollouts rows[start:stop] (a micro-batch), with their own pixel values and image grids."""
        if rows == slice(0, self.num_rollouts):
            return self
        vision = select_rows(
            {"pixel_values": self.pixel_values, "image_grid_thw": self.image_grid_thw},
            rows,
            self.images_per_row,
        )
        return RolloutBatch(
            prompt_ids=self.prompt_ids[rows],
            prompt_mask=self.prompt_mask[rows],
            mm_token_type_ids=self.mm_token_type_ids[rows],
            pixel_values=vision["pixel_values"],
            image_grid_thw=vision["image_grid_thw"],
            completion_ids=self.completion_ids[rows],
            completion_mask=self.completion_mask[rows],
            old_logprobs=self.old_logprobs[rows],
            truncated=self.truncated[rows],
            texts=self.texts[rows],
            images_per_row=self.images_per_row[rows],
            engine_logprobs=None if self.engine_logprobs is None else self.engine_logprobs[rows],
        )

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


def select_rows(inputs: dict, rows: slice, images_per_row: list[int] | None) -> dict:
    """Rows rows[start:stop] of model inputs whose vision tensors are concatenated row after row.

    Row tensors ([N, ...]) are sliced; `pixel_values` (patches of every image, in row order) and
    `image_grid_thw` (one per image) keep the images of the selected rows only.
    """
    if images_per_row is None:
        raise ValueError("splitting rollouts into micro-batches needs images_per_row")
    bounds = [0, *itertools.accumulate(images_per_row)]  # image index where each row starts
    first, last = bounds[rows.start], bounds[rows.stop]
    grids = inputs["image_grid_thw"]
    patches = [0, *itertools.accumulate(int(g.prod()) for g in grids)]  # pixel row where each image starts
    out = {k: v[rows] for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
    out["pixel_values"] = inputs["pixel_values"][patches[first] : patches[last]]
    out["image_grid_thw"] = grids[first:last]
    return out


class SampledLogProbs(StoppingCriteria):
    """Records log softmax(raw logits / T) at each step's chosen token: [N] per step, never [N, V] kept.

    A forward hook on the output layer keeps the latest raw logits of the last position; `generate` calls
    stopping criteria right after appending the chosen tokens, so input_ids[:, -1] is the token to score.
    It never stops generation. Raw logits are what the training forward sees (suppression, temperature
    and top-p only shape the sampling distribution).
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.latest: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def hook(self, module, inputs, output) -> None:
        self.latest = output[:, -1].to(dtype=torch.float32, copy=True)  # [N, V] raw logits

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        # [N, V] fp32 is one step's logits (never kept): one fused log-softmax over the N rows, then the chosen
        # token's entry (row by row, as selective_log_softmax does for [N, C, V], it cost 8% of a tiny rollout)
        logits = self.latest if self.temperature == 1.0 else self.latest / self.temperature
        self.steps.append(torch.log_softmax(logits, dim=-1).gather(1, input_ids[:, -1:])[:, 0])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def logprobs(self, length: int) -> torch.Tensor:
        """[N, length]: the first `length` steps (generate may run a few steps it then undoes)."""
        return torch.stack(self.steps[:length], dim=1)


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
    images_per_row = [len(thw) for thw in batch["image_grid_thw"] for _ in range(cfg.num_generations)]
    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()
    do_sample = cfg.get("do_sample", True)
    recorder = SampledLogProbs(cfg.temperature) if do_sample else None  # greedy (evaluation): none needed
    handle = model.get_output_embeddings().register_forward_hook(recorder.hook) if recorder else None
    try:
        sampling = {"do_sample": False}
        if do_sample:
            # transformers defaults top_k to 50: 0 disables it
            sampling = {
                "do_sample": True,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "top_k": cfg.get("top_k", 0),
            }
        out = model.generate(
            **without_pixels(inputs, images_per_row, model),  # a prompt's G copies: one vision pass
            **sampling,
            max_new_tokens=cfg.max_completion_length,
            # benchmarks (bench/vs_trl.py): equal lengths; 0 in training
            min_new_tokens=int(cfg.get("min_completion_length") or 0) or None,
            suppress_tokens=suppress_token_ids,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([recorder] if recorder else []),
            **generate_sync_kwargs(model),  # hook (DeepSpeed ZeRO-3, >1 rank): synced_gpus=True
        )
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    prompt_len = inputs["input_ids"].shape[1]
    completion_ids = out[:, prompt_len:]
    mask, truncated = completion_mask_from(completion_ids, tokenizer.eos_token_id)
    if recorder is not None:
        old_logprobs = recorder.logprobs(completion_ids.shape[1]) * mask
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
        images_per_row=images_per_row,
        engine_logprobs=old_logprobs,
    )


def policy_logprobs(
    model,
    rollouts: RolloutBatch,
    temperature: float,
    image_features: dict | None = None,
    *,
    teacher: PositionTerms | None = None,
    chunk_size: int = LOGPROB_CHUNK_SIZE,
) -> tuple[torch.Tensor, TokenLogProbs]:
    """Log-probs [N, C] of the completion tokens under `model` (with grad; 0 at padding) and the whole pass
    (entropy, greedy tokens, the credit's student terms at `teacher`'s support), never [N, C, V] logits
    (objectives/chunked_logprobs.py). image_features: the rows' `mm_encoder_outputs` when already computed
    (models/shared_vision.py)."""
    # The G rollouts of a prompt share one vision-tower pass (models/shared_vision.py).
    states = completion_states(
        model,
        rollouts.model_inputs(),
        rollouts.completion_ids.shape[1],
        rollouts.images_per_row,
        image_features,
    )
    out = completion_logprobs(
        states.hidden,
        states.head,
        rollouts.completion_ids,
        rollouts.completion_mask,
        temperature,
        teacher=teacher,
        chunk_size=chunk_size,
    )
    return out.logprobs, out
