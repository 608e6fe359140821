"""Supervised fine-tuning on grounded chain-of-thought traces (`reasoning_process`).

The paper's RL starts from an SFT checkpoint (VISD appendix C.2, the Open-o3-Video recipe). Here it
gives the tiny random-init model the output format, so RL starts with rewards that differ within a
group (../shared/notes/learnability.md: an EARLY checkpoint keeps sampling headroom).
The loss is the token mean of -log p over assistant tokens; prompts are built exactly as in RL.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
from tqdm import tqdm

from visd_exp.rollout.generation import RolloutBatch, policy_logprobs

log = logging.getLogger(__name__)


def target_batch(processor, batch: dict, targets: list[str]) -> RolloutBatch:
    """Prompt batch + tokenised targets (each ending in the end token) in the rollout layout."""
    tok = processor.tokenizer
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in targets]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return RolloutBatch(
        prompt_ids=batch["input_ids"],
        prompt_mask=batch["attention_mask"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        pixel_values=torch.cat(batch["pixel_values"]),
        image_grid_thw=torch.cat(batch["image_grid_thw"]),
        completion_ids=ids,
        completion_mask=mask,
        old_logprobs=torch.zeros(ids.shape),
        truncated=torch.zeros(len(rows), dtype=torch.bool),
        texts=list(targets),
    )


def sft_loss(model, processor, batch: dict) -> torch.Tensor:
    """Mean negative log-likelihood of the `reasoning_process` targets given the prompts."""
    targets = [
        sample.get("reasoning_process") or f"<answer>{sample['answer']}</answer>"
        for sample in batch["samples"]
    ]
    rb = target_batch(processor, batch, targets)
    logprobs, _ = policy_logprobs(model, rb, temperature=1.0)
    mask = rb.completion_mask.float()
    return -(logprobs * mask).sum() / mask.sum()


def run_sft(
    model,
    processor,
    loader,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup: int = 10,
    seed: int = 0,
) -> list[float]:
    """`steps` AdamW steps over `loader` (cycled); returns the loss per step."""
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # linear warm-up, then cosine decay to 10% of lr
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(1, warmup)) * (0.55 + 0.45 * math.cos(math.pi * s / steps)),
    )
    losses = []
    batches = itertools.cycle(loader)
    with tqdm(total=steps, desc="sft warm start", leave=False) as bar:
        for _ in range(steps):
            loss = sft_loss(model, processor, next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
    model.eval()
    return losses
