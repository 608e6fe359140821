"""Precision of the trained weights and of the old log-probs (issue 11, item 1).

Trained weights are fp32 masters: torch AdamW steps them in fp32 while the forward runs under bf16
autocast (`trainer.precision=bf16-mixed`). A bf16 weight of magnitude ~0.02 has a rounding step of ~1e-4,
so an update of lr ~1e-6 stepped in bf16 rounds away and almost no weight ever changes. Hence, at the
start of fit (`VISDModule.setup`):

- half-precision trained weights (e.g. `model.dtype=bfloat16`, as the 7B config loads them) under a
  `*-mixed` precision are upcast to fp32 in place: the fp32 masters of the run;
- a pure half-precision run with a plain torch optimizer (`trainer.precision=bf16-true` or `16-true`, or
  half weights under `32-true`) is refused with a message saying what to set instead;
- DeepSpeed is left alone: its bf16 mode keeps fp32 master weights in its optimizer.

`algorithm.old_logprobs` (generate | recompute | current | auto): `generate` takes pi_old(y_t) from the
sampling pass; `recompute` runs a no-grad forward with the update's micro-batching before the update, so
the first importance ratio is exactly 1; `current` takes pi_old from the update's own forward, detached:
there is exactly one update per rollout batch, so pi_old IS the policy being updated, rho_t = 1 by
construction and the recompute forward (about a sixth of the update's compute) buys nothing. `auto` (the
default): `generate` when the forward is fp32 (32-true / 64-true) and the HF engine sampled; otherwise
`current` (in bf16 the cached decoding's log-probs differ from the training forward's by far more than the
1e-4 of fp32, and a vLLM engine's are its own); `recompute` when `algorithm.rollout_correction` is enabled,
whose weights min(pi_old / pi_engine, cap) need pi_old before the update.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

FP32_FORWARD = ("32-true", "32", "64-true", "64")  # trainer.precision values whose forward is not autocast
HALF = (torch.bfloat16, torch.float16)
OLD_LOGPROBS = ("auto", "generate", "recompute", "current")


class PrecisionError(ValueError):
    """Trained weights would be stepped in half precision by a plain torch optimizer."""


def trained_half_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    """Half-precision dtypes among the trainable parameters."""
    return {p.dtype for p in model.parameters() if p.requires_grad and p.dtype in HALF}


def refusal(dtype: str, precision: str) -> str:
    return (
        f"trained weights in {dtype} with trainer.precision={precision}: torch AdamW would step the "
        f"{dtype} weights directly, and an update of lr ~1e-6 is far below a bf16 weight's rounding step "
        "(~1e-4 at magnitude 0.02), so almost no weight would ever change. Set trainer.precision=bf16-mixed "
        "(the student's trained weights are then upcast to fp32 master weights and the forward runs under "
        "bf16 autocast; trainer=gpu does this), or model.dtype=float32 with trainer.precision=32-true; "
        "under DeepSpeed, trainer=deepspeed keeps fp32 master weights in its bf16 mode."
    )


def prepare_trained_weights(model: torch.nn.Module, precision: str, strategy: str = "") -> int:
    """Make the trainable weights fp32 masters, or refuse; returns how many tensors were upcast.

    precision: Lightning's `trainer.precision` string; strategy: the strategy's class name.
    """
    precision = str(precision)
    if "deepspeed" in strategy.lower():  # its bf16 mode keeps fp32 masters inside its optimizer
        return 0
    if precision.endswith("-true") and precision not in FP32_FORWARD:  # Lightning casts the module to half
        raise PrecisionError(refusal(precision.split("-")[0], precision))
    half = trained_half_dtypes(model)
    if not half:
        return 0
    names = "/".join(sorted(str(d).removeprefix("torch.") for d in half))
    if not precision.endswith("-mixed"):
        raise PrecisionError(refusal(names, precision))
    upcast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in HALF:
            param.data = param.data.float()  # the same Parameter objects (tied weights stay tied)
            upcast += 1
    log.info(
        "upcast %d trained tensors from %s to fp32 master weights (%s autocast)", upcast, names, precision
    )
    return upcast


def resolve_old_logprobs(
    setting: str | None, precision: str, engine: str = "hf", correction: bool = False
) -> str:
    """`generate`, `recompute` or `current` for `algorithm.old_logprobs` (module docstring for `auto`).

    With rollout.engine=vllm the sampling pass's log-probs are the engine's, not the trainer's policy's:
    `generate` is refused. correction: `algorithm.rollout_correction.enabled` (needs pi_old before the update,
    so `current` is refused)."""
    setting = str(setting or "auto")
    if setting not in OLD_LOGPROBS:
        raise ValueError(f"algorithm.old_logprobs must be one of {', '.join(OLD_LOGPROBS)}, got {setting!r}")
    if setting == "current" and correction:
        raise ValueError(
            "algorithm.old_logprobs=current with algorithm.rollout_correction.enabled: the correction's weights "
            "min(pi_old / pi_engine, cap) are needed before the update's forward. Use auto or recompute."
        )
    if engine != "hf" and setting == "generate":
        raise ValueError(
            f"algorithm.old_logprobs=generate with rollout.engine={engine}: the engine's log-probs are "
            "its own (another kernel, its own logit processing), not the trainer's policy's, so the "
            "importance ratio would not start at 1. Use auto, current or recompute (the trainer's forward); "
            "the engine-trainer gap is logged as rollout/logprob_diff_* and algorithm.rollout_correction "
            "corrects for it."
        )
    if setting == "auto":
        if correction:
            return "recompute"
        return "generate" if engine == "hf" and str(precision) in FP32_FORWARD else "current"
    if setting == "generate" and str(precision) not in FP32_FORWARD:
        log.warning(
            "algorithm.old_logprobs=generate with trainer.precision=%s: the sampling pass's log-probs differ "
            "from the training forward's, so the importance ratio starts away from 1",
            precision,
        )
    return setting
