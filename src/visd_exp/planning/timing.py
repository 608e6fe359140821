"""Step-time estimates per optimizer step, for the HF engine (ZeRO-3 gathers per layer or once per generate
call) and the colocated vLLM engine. Every figure is an assumption (planning/assumptions.py) times a count
from the config; nothing here is measured.

- HF generate, `per_layer`: every decode step is a forward of the partitioned model, so each step
  all-gathers the whole model (bf16 bytes x (N - 1) / N at the all-gather bus bandwidth, plus a latency
  per gathered module) and then reads it from HBM; `synced_gpus` makes every rank run as many steps as the
  longest completion on any rank (max_completion_length, the worst case).
- HF generate, `once`: one gather of the whole model per generate call, then memory-bound decoding.
- vLLM: memory-bound decoding (weights + KV cache read per step at hbm_efficiency), the prompt prefilled
  once per prompt (prefix caching), a weight push per optimizer step (gather + copy) and sleep / wake
  (its weights over PCIe both ways).
- Training: 2 FLOPs per parameter per token forward (the output layer only over completion positions),
  plus causal attention (2 T^2 H per layer); the update is forward + backward (x 3), one more forward
  with gradient checkpointing; the teacher's replay and, when recomputed, the old log-probs are one forward
  each; at the MFU assumed. ZeRO-3's gathers and the gradient reduce-scatter overlap the compute
  (overlap_comm): the update takes the longer of the two.
"""

from __future__ import annotations

import math

from visd_exp.planning.assumptions import Assumptions
from visd_exp.planning.memory import Setting, shard
from visd_exp.planning.models import ModelSpec
from visd_exp.planning.shapes import Shapes


def _gather_seconds(nbytes: float, shapes: Shapes, assume: Assumptions) -> float:
    if shapes.world <= 1 or shapes.stage != 3:
        return 0.0
    bandwidth = assume.nvlink_gbps if shapes.nodes == 1 else assume.internode_gbps
    return nbytes * (shapes.world - 1) / shapes.world / (bandwidth * 1e9)


def forward_flops(spec: ModelSpec, rows: int, length: int, completion: int, patches: int) -> float:
    """FLOPs of one forward: the language model over rows x length, its output layer over the completion
    positions, and the vision tower over `patches` (its attention windows are small and left out)."""
    head = spec.vocab * spec.hidden
    matmul = spec.numel - spec.vision_numel - head * (1 if spec.tied else 2)  # embeddings are lookups
    lm = 2 * matmul * rows * length + 2 * head * rows * completion
    attention = 2 * spec.layers * spec.hidden * length * length * rows  # causal: half of 4 T^2 H
    return lm + attention + 2 * spec.vision_numel * patches


def recomputes_old_logprobs(cfg, shapes: Shapes, engine: str) -> bool:
    setting = str(cfg.algorithm.get("old_logprobs") or "auto")
    return engine == "vllm" or setting == "recompute" or (setting == "auto" and shapes.half)


def training_seconds(cfg, spec, shapes: Shapes, st: Setting, assume: Assumptions, engine: str) -> dict:
    flops_rate = assume.bf16_tflops * 1e12 * assume.mfu
    completion = shapes.mean_completion
    s_len, t_len = shapes.prompt + completion, shapes.prompt + shapes.privileged + completion
    prompts_patches = shapes.prompts * shapes.frames * shapes.patches_per_frame  # one vision pass per prompt
    student = forward_flops(spec, shapes.rows, s_len, completion, prompts_patches)
    teacher = (
        forward_flops(spec, shapes.rows, t_len, completion, prompts_patches) if shapes.privileged else 0.0
    )
    checkpointing = bool(cfg.model.get("gradient_checkpointing", False))
    old = recomputes_old_logprobs(cfg, shapes, engine)
    flops = student * (3 + (1 if checkpointing else 0) + (1 if old else 0)) + teacher
    micro = math.ceil(shapes.rows / shapes.micro_rows)
    model_bytes = spec.numel * st.weight_bytes
    # per micro-batch: student forward + backward gathers, the gradient reduce-scatter, the teacher's forward
    passes = micro * (3 + (1 if shapes.privileged else 0) + (1 if old else 0))
    comm = _gather_seconds(passes * model_bytes, shapes, assume)
    compute = flops / flops_rate
    return {"flops": flops, "compute_s": compute, "comm_s": comm, "seconds": max(compute, comm)}


def decode_seconds(
    spec, shapes: Shapes, st: Setting, assume: Assumptions, engine: str, gather: str, eager: bool
) -> dict:
    steps = shapes.completion  # synced_gpus / the longest row of the batch
    hbm = assume.hbm_gbps * 1e9 * assume.hbm_efficiency
    weights = spec.numel * 2
    kv_per_step = shapes.rows * (shapes.prompt + shapes.completion / 2) * spec.layers * 2 * spec.kv_dim * 2
    read = (weights + kv_per_step) / hbm
    latency = spec.modules_with_params * assume.collective_latency_us * 1e-6
    prefill_rows = shapes.prompts if engine == "vllm" else shapes.rows  # vLLM: prefix caching
    patches = shapes.prompts * shapes.frames * shapes.patches_per_frame
    prefill = forward_flops(spec, prefill_rows, shapes.prompt, 1, patches) / (
        assume.bf16_tflops * 1e12 * assume.mfu
    )
    if engine == "vllm":
        per_step = (
            read + (assume.vllm_step_overhead_ms if eager else assume.vllm_graph_step_overhead_ms) * 1e-3
        )
        return {
            "decode_steps": steps,
            "per_step_s": per_step,
            "prefill_s": prefill,
            "seconds": steps * per_step + prefill,
        }
    per_step = read + assume.hf_step_overhead_ms * 1e-3
    gathered = _gather_seconds(spec.numel * st.weight_bytes, shapes, assume) + (
        latency if st.stage == 3 and shapes.world > 1 else 0
    )
    if gather == "per_layer":
        per_step += gathered
        prefill += gathered
    else:
        prefill += gathered
    return {
        "decode_steps": steps,
        "per_step_s": per_step,
        "prefill_s": prefill,
        "seconds": steps * per_step + prefill,
    }


def step_seconds(
    cfg, spec, shapes: Shapes, st: Setting, assume: Assumptions, engine: str, gather: str
) -> dict:
    """One optimizer step: `accumulate` x (rollouts + training), the AdamW step, and the engine's extras."""
    eager = bool((cfg.rollout.get("vllm") or {}).get("enforce_eager", True))
    rollout = decode_seconds(spec, shapes, st, assume, engine, gather, eager)
    train = training_seconds(cfg, spec, shapes, st, assume, engine)
    s = sum(shard(p.numel, st.world) for p in spec.params) if st.stage == 3 else spec.numel
    hbm = assume.hbm_gbps * 1e9 * assume.hbm_efficiency
    optimizer = s * 40 / hbm  # masters, moments and gradient read and written, the bf16 copy; EMA alike
    extras = 0.0
    if engine == "vllm":
        push = _gather_seconds(spec.numel * st.weight_bytes, shapes, assume) + spec.numel * 2 / hbm
        sleep_wake = (
            2 * spec.numel * 2 / (assume.pcie_gbps * 1e9)
            if cfg.rollout.vllm.get("sleep_between_rollouts", True)
            else 0.0
        )
        extras = push + sleep_wake
    total = shapes.accumulate * (rollout["seconds"] + train["seconds"]) + optimizer + extras
    generated = shapes.accumulate * shapes.rows * shapes.mean_completion
    trained = shapes.accumulate * shapes.rows * (shapes.prompt + shapes.mean_completion)
    return {
        "engine": engine if engine == "vllm" else f"hf/{gather}",
        "rollout_s": shapes.accumulate * rollout["seconds"],
        "decode_per_token_s": rollout["per_step_s"],
        "training_s": shapes.accumulate * train["seconds"],
        "training_compute_s": shapes.accumulate * train["compute_s"],
        "training_comm_s": shapes.accumulate * train["comm_s"],
        "optimizer_s": optimizer,
        "engine_extras_s": extras,
        "step_s": total,
        "generated_tokens_per_s_per_gpu": generated / total,
        "tokens_per_s_per_gpu": trained / total,  # prompt + completion tokens of the rollouts
    }


def all_engines(cfg, spec, shapes: Shapes, st: Setting, assume: Assumptions) -> list[dict]:
    return [
        step_seconds(cfg, spec, shapes, st, assume, "hf", "per_layer"),
        step_seconds(cfg, spec, shapes, st, assume, "hf", "once"),
        step_seconds(cfg, spec, shapes, st, assume, "vllm", "once"),
    ]
