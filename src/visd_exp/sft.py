"""The SFT stage: supervised fine-tuning on grounded chain-of-thought traces (`reasoning_process`).

The paper's RL starts from an SFT checkpoint (VISD appendix C.2, the Open-o3-Video recipe):

    python -m visd_exp.train +experiment=sft data=jsonl data.train_file=STGR-SFT.json
    python -m visd_exp.train +experiment=... model.init_from=<sft run>/hf_model

It is a normal training run (train.py picks `SFTModule` when `algorithm.name == "sft"`): the same data
module and prompt builder as RL, checkpoints under <run>/checkpoints (exact resume), <run>/hf_model.
The tiny model's warm start (models/warm_start.py) fits this same module, so there is one SFT.

The target is the record's `reasoning_process` (`<think>...</think><answer>...</answer>`) with its
boxes rescaled from `image_size` to the `frame_size` the model sees, followed by the end token. The
loss is the token mean of -log p over those target tokens only: the prompt is never in the loss
(only the completion positions' logits are computed). Train records without a target are dropped at
set-up and counted (`data/train_no_target`); targets longer than `algorithm.max_target_length`
tokens are dropped and counted (`data/train_dropped_long_targets`), never truncated.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import lightning as L
import torch

from visd_exp.data.datamodule import VideoQADataModule, VideoQADataset
from visd_exp.data.formats.base import scale_boxes_in_text
from visd_exp.distributed.ranks import all_ranks
from visd_exp.distributed.zero import accumulating_backward
from visd_exp.module import VISDModule
from visd_exp.precision import prepare_trained_weights
from visd_exp.rollout.generation import RolloutBatch, policy_logprobs
from visd_exp.utils.optim import adamw
from visd_exp.utils.run_length import planned_optimizer_steps

log = logging.getLogger(__name__)


# -- targets -------------------------------------------------------------------------------------------
def has_target(record: dict) -> bool:
    text = record.get("reasoning_process")
    return isinstance(text, str) and bool(text.strip())


def sft_target(sample: dict) -> str:
    """The sample's `reasoning_process`, boxes rescaled from `image_size` to `frame_size` pixels.

    Unchanged when either size is missing or they are equal (the model saw frames of the original size).
    """
    if not has_target(sample):
        raise ValueError(f"{sample.get('_where', sample.get('id'))}: no reasoning_process (the SFT target)")
    text = sample["reasoning_process"]
    image, frame = sample.get("image_size"), sample.get("frame_size")
    if not image or not frame or [float(v) for v in image] == [float(v) for v in frame]:
        return text
    if image[0] <= 0 or image[1] <= 0:
        return text
    return scale_boxes_in_text(text, frame[0] / image[0], frame[1] / image[1])


def target_ids(tokenizer, text: str) -> list[int]:
    """The target's token ids, ending in the end token (the token that stops a rollout)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def target_batch(processor, batch: dict, targets: list[str]) -> RolloutBatch:
    """Prompt batch + tokenised targets (each ending in the end token) in the rollout layout."""
    tok = processor.tokenizer
    rows = [target_ids(tok, t) for t in targets]
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


@dataclass
class SFTLoss:
    loss: torch.Tensor  # token mean of -log p over the target tokens (with grad)
    target_tokens: torch.Tensor  # [B] target length per sample, end token included
    token_accuracy: torch.Tensor  # greedy (argmax) accuracy over the target tokens


def sft_loss(model, processor, batch: dict) -> SFTLoss:
    """Mean negative log-likelihood of the samples' targets (`sft_target`) given their prompts."""
    rb = target_batch(processor, batch, [sft_target(sample) for sample in batch["samples"]])
    # logits at the target positions only: the prompt's tokens are never predicted, so never in the loss
    logprobs, out = policy_logprobs(model, rb, temperature=1.0)  # chunk by chunk: no [B, T, V] logits
    mask = rb.completion_mask.to(logprobs.dtype)
    with torch.no_grad():
        correct = (out.argmax == rb.completion_ids).to(mask.dtype)
        accuracy = (correct * mask).sum() / mask.sum()
    return SFTLoss(-(logprobs * mask).sum() / mask.sum(), rb.completion_mask.sum(dim=1), accuracy)


# -- data -------------------------------------------------------------------------------------------
class SFTDataModule(VideoQADataModule):
    """VideoQADataModule (the same frames, prompts and validation as RL) whose train split keeps only
    records with a target: the others are dropped and counted, and a file with none fails, named."""

    def __init__(self, cfg, processor, max_target_length: int | None = None):
        super().__init__(cfg, processor)
        self.max_target_length = int(max_target_length) if max_target_length else None

    def read_records(self, split: str, path: str) -> list[dict]:
        records = super().read_records(split, path)
        if split != "train":
            return records
        kept = [r for r in records if has_target(r)]
        self.stats["data/train_no_target"] = len(records) - len(kept)
        if not kept:
            raise ValueError(
                f"{path}: none of its {len(records)} records has a reasoning_process, the SFT target "
                "(<think>...</think><answer>...</answer>)"
            )
        if len(kept) < len(records):
            log.warning(
                "%s: dropped %d of %d records without a reasoning_process (the SFT target)",
                path,
                len(records) - len(kept),
                len(records),
            )
        return kept

    def build_split(self, split: str) -> VideoQADataset | None:
        dataset = super().build_split(split)
        if split != "train" or dataset is None:
            return dataset
        dropped = 0
        if self.max_target_length is not None:
            tok, keep = self.processor.tokenizer, []
            for record, plan in zip(dataset.records, dataset.plans):
                sample = {**record, "frame_size": list(plan.frame_size)}  # as the dataset's item has it
                keep.append(len(target_ids(tok, sft_target(sample))) <= self.max_target_length)
            dropped = keep.count(False)
            if dropped:
                log.warning(
                    "%s: dropped %d of %d SFT targets longer than %d tokens",
                    self.cfg.train_file,
                    dropped,
                    len(keep),
                    self.max_target_length,
                )
                if dropped == len(keep):
                    raise ValueError(
                        f"{self.cfg.train_file}: every SFT target is longer than "
                        f"algorithm.max_target_length={self.max_target_length} tokens"
                    )
                dataset = VideoQADataset(
                    [r for r, k in zip(dataset.records, keep) if k],
                    [p for p, k in zip(dataset.plans, keep) if k],
                    self.processor,
                    cache_items=dataset.cache_items,
                )
                self.stats["data/train_records"] = len(dataset)
        self.stats["data/train_dropped_long_targets"] = dropped
        return dataset


def sft_datamodule(cfg, processor) -> SFTDataModule:
    """The SFT data module of a composed run config (`data` and `algorithm`)."""
    return SFTDataModule(cfg.data, processor, cfg.algorithm.get("max_target_length"))


# -- the LightningModule -----------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, total: int, decay: str, min_ratio: float) -> float:
    """lr / optim.lr at optimizer step `step`: linear warm-up (as VISDModule), then constant, cosine or
    linear decay to `min_ratio` at step `total` (linear to 0: Hugging Face Trainer's default schedule)."""
    factor = min(1.0, (step + 1) / (warmup + 1))
    if decay == "constant":
        return factor
    if decay not in ("cosine", "linear"):
        raise ValueError(f"algorithm.lr_decay must be cosine, linear or constant, got {decay!r}")
    p = min(1.0, step / max(1, total))
    shape = 1.0 - p if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return factor * (min_ratio + (1.0 - min_ratio) * shape)


class SFTModule(L.LightningModule):
    """Supervised fine-tuning of the student: one AdamW step per `optim.accumulate_grad_batches` batches.

    Manual optimisation like VISDModule, sharing its optimizer step (clip, skip a non-finite window),
    its checkpoint state (RNG streams, `batches_seen`: exact resume) and its set-up logging.
    """

    def __init__(self, model, processor, cfg):
        super().__init__()
        self.model = model.train()
        self.processor = processor
        self.cfg = cfg  # needs `algorithm` (name sft) and `optim`
        self.automatic_optimization = False
        self.accumulate_grad_batches = k = int(cfg.optim.get("accumulate_grad_batches", 1))
        if k < 1:
            raise ValueError(f"optim.accumulate_grad_batches must be >= 1, got {k}")
        algo = cfg.algorithm
        self.lr_decay = str(algo.get("lr_decay", "constant"))
        self.min_lr_ratio = float(algo.get("min_lr_ratio", 0.0))
        lr_factor(0, 0, 1, self.lr_decay, self.min_lr_ratio)  # checked at start
        self.accumulated, self.window_finite = 0, True
        self.stepped = False
        self.batches_seen = 0
        self.skipped_steps = 0
        self.skipped_videos = 0
        self.consecutive_skips = 0

    # The same code as RL's: data set-up counts at step 0, the optimizer step, the resume state.
    on_train_start = VISDModule.on_train_start
    take_optimizer_step = VISDModule.take_optimizer_step
    on_save_checkpoint = VISDModule.on_save_checkpoint
    on_load_checkpoint = VISDModule.on_load_checkpoint

    def setup(self, stage: str) -> None:
        prepare_trained_weights(self.model, str(self.trainer.precision), type(self.trainer.strategy).__name__)

    def configure_optimizers(self):
        optim = self.cfg.optim
        optimizer = adamw(self.model, optim)
        # the decay spans the run's real optimizer steps: max_steps, or the epochs' (utils/run_length.py)
        total = planned_optimizer_steps(self._trainer, self.accumulate_grad_batches)
        warmup, total = max(0, int(optim.warmup_steps)), max(1, int(total or 1))
        decay_name, min_ratio = self.lr_decay, self.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total, decay_name, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        start = time.perf_counter()
        self.batches_seen += 1
        self.stepped = False
        self.skipped_videos += batch.get("skipped_videos", 0)
        if not all_ranks(bool(batch["samples"]), self.device):  # every video of the batch failed to decode
            self.log("data/skipped_videos", float(self.skipped_videos), on_step=True, batch_size=1)
            return None
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        if self.accumulated == 0:
            optimizer.zero_grad(set_to_none=True)
        out = sft_loss(self.model, self.processor, batch)
        k = self.accumulate_grad_batches
        accumulating_backward(self, 1, self.accumulated + 1 == k)(out.loss / k)
        self.accumulated += 1
        self.window_finite = self.window_finite and bool(torch.isfinite(out.loss))
        grad_norm = torch.tensor(math.nan)  # logged only when the optimizer steps
        if self.accumulated == k:
            grad_norm = self.take_optimizer_step(optimizer, scheduler)
        loss = float(out.loss.detach())
        metrics = {
            "loss": loss,  # the name every training row has (summaries read it)
            "train/loss": loss,
            "sft/target_tokens": float(out.target_tokens.float().mean()),
            "sft/target_tokens_max": float(out.target_tokens.max()),
            "sft/token_accuracy": float(out.token_accuracy),
            "grad_norm": float(grad_norm),
            "lr": scheduler.get_last_lr()[0],
            "train/skipped_steps": float(self.skipped_steps),
            "data/skipped_videos": float(self.skipped_videos),
            "step_time": time.perf_counter() - start,
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch["samples"]))
        return out.loss.detach()
