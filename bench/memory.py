"""Peak memory of one update step (issues 11 and 23) on CPU, fp32: against `algorithm.micro_batch_size`, and
the lean log-probs (issue 23, item 3) against the full-logit path they replaced.

Run: .venv/bin/python bench/memory.py            (about 8 minutes on 2 cores)
Writes bench/results/memory.json.

A random-weight Qwen2.5-VL of the real class (hidden 512, 8 layers, vocabulary 32,000, a small vision
tower; built from the config classes, nothing downloaded), N = 4 rollouts (one prompt x G = 4) of 768
completion tokens, an EMA-style teacher with a 32-token privileged block, top-K credit (K = 16), lambda 0.5.
One step is what `VISDModule.training_step` runs after the rewards: the old-log-prob recompute (no grad),
then `policy_update` (teacher replay -> Delta_t -> m_t -> A^_t -> student forward -> Eq. 9 -> backward),
micro-batch by micro-batch. Rollout generation is left out: its memory does not depend on the micro batch.

Settings (`path`): `lean` is the project's step (no [n, C, V] tensor: objectives/chunked_logprobs.py,
credit/lean.py); `reference` is the full-logit path before issue 23 (`reference_step` here, bench-only:
the teacher's whole [n, C, V] logits, then top-K; the student's logits kept for backward through
`selective_log_softmax`). Lean at micro batch 4 / 2 / 1 and reference at 4 on the model above, then
reference and lean at micro batch 4 with Qwen2.5-VL's vocabulary of 151,936 (the same model otherwise).

Memory: each setting runs in a fresh subprocess; `peak_rss_mib` is that process's ru_maxrss (the
kernel's high-water mark of resident memory, model and Python included), `step_peak_rise_mib` the rise
of the RSS (sampled every millisecond) over the RSS just before the step. torch's CPU allocator keeps
no statistics and tracemalloc does not see its allocations, so neither is used. The children run with
MALLOC_MMAP_THRESHOLD_=65536, so that freed tensors leave the RSS (glibc's default raises the threshold
after the first large free and then keeps freed blocks resident, which inflates and blurs the peak).
Agreement: every lean setting's loss, gradient (all parameters) and Delta_t against lean at
micro_batch_size = N; lean against reference at N: loss, gradients, Delta_t, m_t, A^_t, log-probs, old
log-probs and entropy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

MIB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")
SIZES = {  # name -> model and step shape
    "mid": dict(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1376, vocab=32_000, completion=768),
    "tiny": dict(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, vocab=512, completion=32),
}
QWEN_VOCAB = 151_936  # Qwen2.5-VL's vocabulary (its config's vocab_size; the 7B's lm_head has 152,064 rows)
PATHS = ("lean", "reference")
N, PROMPT, PRIVILEGED, K, LAM = 4, 64, 32, 16, 0.5
IMAGE_PAD, VISION_START, VISION_END, PAD, FIRST_TEXT = 5, 6, 7, 0, 16
# glibc serves allocations above 64 KiB with mmap and unmaps them on free (a fixed threshold: by default it
# rises after the first large free and freed tensors then stay resident), so the RSS follows live tensors.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}
GRID = (1, 4, 4)  # one 56 x 56 image per prompt: 16 patches, 4 vision tokens after the 2 x 2 merge


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def build_model(size: dict):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = size["hidden"] // size["heads"]
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": size["vocab"],
            "hidden_size": size["hidden"],
            "intermediate_size": size["intermediate"],
            "num_hidden_layers": size["layers"],
            "num_attention_heads": size["heads"],
            "num_key_value_heads": size["kv_heads"],
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 1_000_000.0},
            "bos_token_id": PAD,
            "eos_token_id": PAD + 1,
            "pad_token_id": PAD,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": size["hidden"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=IMAGE_PAD,
        video_token_id=IMAGE_PAD + 100,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).train()


def prompt_rows(n: int, length: int, vocab: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, length] prompts: text, then vision start, 4 image pads, vision end, then text; mm type ids."""
    ids = torch.randint(FIRST_TEXT, vocab, (n, length), generator=generator)
    ids[:, 8] = VISION_START
    ids[:, 9:13] = IMAGE_PAD
    ids[:, 13] = VISION_END
    return ids, (ids == IMAGE_PAD).long()


def build_step(size: dict, completion: int | None = None, images: int = 1, grid=GRID, prompt=None):
    """Student, teacher, rollouts of N x C tokens, the teacher's replay inputs and the advantages.

    completion: C (default: the size's); images: per prompt, each of `grid` patches; prompt: generator ->
    ([1, P] ids, their mm type ids) with images x the grid's merged tokens of <image_pad> (default: 64
    tokens around one image, prompt_rows). bench/scaling.py varies them."""
    from visd_exp.rollout.generation import RolloutBatch

    model = build_model(size)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # an EMA teacher a little away from the student, so that Delta_t != 0
        for p in teacher.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    C, V = completion or size["completion"], size["vocab"]
    prompt, mm = prompt(g) if prompt is not None else prompt_rows(1, PROMPT, V, g)
    prompt, mm = prompt.repeat(N, 1), mm.repeat(N, 1)  # G = 4 rollouts of one prompt
    ids = torch.randint(FIRST_TEXT, V, (N, C), generator=g)
    mask = torch.ones(N, C, dtype=torch.long)
    for i in range(N):  # rows of different lengths (right padding after the end)
        mask[i, C - i * (C // 8) :] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    patches = grid[0] * grid[1] * grid[2]
    pixels = torch.randn(N * images * patches, 3 * 2 * 14 * 14, generator=g)
    grids = torch.tensor([grid] * (N * images))
    rollouts = RolloutBatch(
        prompt_ids=prompt,
        prompt_mask=torch.ones_like(prompt),
        mm_token_type_ids=mm,
        pixel_values=pixels,
        image_grid_thw=grids,
        completion_ids=ids,
        completion_mask=mask,
        old_logprobs=torch.zeros(N, C),
        truncated=torch.zeros(N, dtype=torch.bool),
        texts=[""] * N,
        images_per_row=[images] * N,
    )
    block = torch.randint(FIRST_TEXT, V, (N, PRIVILEGED), generator=g)  # the privileged block r, as tokens
    t_prompt = torch.cat([prompt, block], dim=1)
    inputs = {
        "input_ids": torch.cat([t_prompt, ids], dim=1),
        "attention_mask": torch.cat([torch.ones_like(t_prompt), mask], dim=1),
        "mm_token_type_ids": torch.cat(
            [torch.cat([mm, torch.zeros_like(block)], 1), torch.zeros_like(mask)], 1
        ),
        "pixel_values": pixels,
        "image_grid_thw": grids,
    }
    advantages = torch.tensor([1.0, -0.5, 0.3, -0.8])
    return model, teacher, rollouts, inputs, advantages


def one_step(
    model, teacher, rollouts, inputs, advantages, micro_batch_size, path="lean", credit=None, temperature=1.0
):
    """The update of one training step: recompute pi_old (no grad), then policy_update (path `lean`) or
    the full-logit reference (`reference_step`). teacher: a copy, or `model` itself (teacher=current)."""
    from omegaconf import OmegaConf

    from visd_exp.step_forward import TeacherReplay, policy_update, recompute_logprobs
    from visd_exp.teacher import teacher_states

    credit = credit or OmegaConf.create({"name": "topk", "k": K, "eps_w": 0.2, "chunk_size": 1024})
    if path == "reference":
        return reference_step(
            model, teacher, rollouts, inputs, advantages, micro_batch_size, credit, temperature
        )
    if path != "lean":
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    C = rollouts.completion_ids.shape[1]
    rollouts.old_logprobs = recompute_logprobs(model, rollouts, temperature, micro_batch_size)
    replay = TeacherReplay(
        inputs,
        lambda x, images, features=None: teacher_states(teacher, x, C, images, features),
        credit,
        LAM,
        shares_student_vision=teacher is model,
    )
    return policy_update(
        model,
        rollouts,
        advantages,
        temperature=temperature,
        epsilon=0.2,
        micro_batch_size=micro_batch_size,
        replay=replay,
    )


def full_logits(model, inputs, completion_len, images_per_row, features=None):
    """[n, C, V] logits at the completion positions: the whole output layer at once (the reference)."""
    from visd_exp.models.shared_vision import forward_with_shared_vision

    out = forward_with_shared_vision(
        model, inputs, images_per_row, features, logits_to_keep=completion_len + 1, use_cache=False
    )
    return out.logits[:, :-1]


def reference_step(model, teacher, rollouts, inputs, advantages, micro_batch_size, credit, temperature):
    """The step as it was before the lean log-probs (issue 23, item 3), kept here as the reference: the
    teacher's whole [n, C, V] logits, top-K taken afterwards (credit.log_ratio_for on full logits), the
    student's [n, C, V] logits through selective_log_softmax, the entropy from them. Teacher first."""
    from types import SimpleNamespace

    from visd_exp import credit as credit_fns
    from visd_exp.models.shared_vision import detached, vision_features
    from visd_exp.objectives import clipped_surrogate_loss, selective_log_softmax
    from visd_exp.rollout.generation import select_rows
    from visd_exp.step_forward import micro_slices

    N, C = rollouts.completion_ids.shape
    mask = rollouts.completion_mask.float()
    shares = teacher is model
    old = torch.zeros(N, C)
    with torch.no_grad():
        for rows in micro_slices(N, micro_batch_size):
            part = rollouts.select(rows)
            logits = full_logits(model, part.model_inputs(), C, part.images_per_row)
            old[rows] = selective_log_softmax(logits, part.completion_ids, temperature) * mask[rows]
            del logits
    rollouts.old_logprobs = old
    out = {name: torch.zeros(N, C) for name in ("logprobs", "delta", "weights", "token_advantages")}
    loss_total, entropy = torch.zeros(()), 0.0
    for rows in micro_slices(N, micro_batch_size):
        part = rollouts.select(rows)
        features = (
            vision_features(model, part.pixel_values, part.image_grid_thw, part.images_per_row)
            if shares
            else None
        )
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            t_logits = full_logits(
                teacher,
                select_rows(inputs, rows, rollouts.images_per_row),
                C,
                part.images_per_row,
                detached(features) if features is not None else None,
            )
        teacher.train(was_training)
        logits = full_logits(model, part.model_inputs(), C, part.images_per_row, features)
        lp = selective_log_softmax(logits, part.completion_ids, temperature)
        tokens = part.completion_ids.masked_fill(mask[rows] == 0, -100)
        s_logits = logits.detach()
        if temperature != 1.0:
            t_logits, s_logits = t_logits / temperature, s_logits / temperature
        d = credit_fns.log_ratio_for(credit, t_logits, s_logits, tokens)
        del t_logits, s_logits
        a = advantages[rows]
        m = credit_fns.token_weights(d, a, credit.eps_w)
        adv = credit_fns.token_advantages(a, m, LAM)
        with torch.no_grad():
            for row, row_mask in zip(logits.detach(), mask[rows]):
                logp = torch.log_softmax(row.float() / temperature, dim=-1)
                entropy += (-(logp.exp() * logp).sum(-1) * row_mask).sum().item()
        del logits
        loss = clipped_surrogate_loss(lp, part.old_logprobs, adv, mask[rows], 0.2)
        loss = loss * ((rows.stop - rows.start) / N)
        loss.backward()
        loss_total = loss_total + loss.detach()
        out["logprobs"][rows], out["delta"][rows], out["weights"][rows] = lp.detach() * mask[rows], d, m
        out["token_advantages"][rows] = adv
    return SimpleNamespace(loss=loss_total, entropy=entropy / max(mask.sum().item(), 1.0), **out)


SAVED = ("loss", "delta", "weights", "token_advantages", "logprobs", "old_logprobs")


def child(
    size_name: str, vocab: int | None, path: str, micro_batch_size: int, out: str, threads: int
) -> None:
    """One setting in this (fresh) process: the step, its peak memory, and its results for the parent."""
    torch.set_num_threads(threads)
    size = {**SIZES[size_name], **({"vocab": vocab} if vocab else {})}
    model, teacher, rollouts, inputs, advantages = build_step(size)
    base, peak, done = rss_bytes(), [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    result = one_step(model, teacher, rollouts, inputs, advantages, micro_batch_size, path)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    mask = rollouts.completion_mask.float()
    saved = {
        "loss": result.loss,
        "delta": result.delta,
        "weights": result.weights,
        "token_advantages": result.token_advantages,
        "logprobs": result.logprobs * mask,
        "old_logprobs": rollouts.old_logprobs * mask,
        "entropy": result.entropy,
        "grads": grads,
    }
    torch.save(saved, out)
    stats = {
        "path": path,
        "vocab": size["vocab"],
        "micro_batch_size": micro_batch_size,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB,  # Linux: KiB
        "rss_before_step_mib": base / MIB,
        "step_peak_rise_mib": (max(peak[0], rss_bytes()) - base) / MIB,
        "seconds": seconds,
        "loss": float(result.loss),
    }
    print(json.dumps(stats), flush=True)


def measure(size_name: str, vocab: int, path: str, micro_batch_size: int, threads: int, tmp: str):
    """(stats, saved results) of one setting, run in a fresh subprocess."""
    out = str(Path(tmp) / f"{path}_v{vocab}_mb{micro_batch_size}.pt")
    cmd = [sys.executable, __file__, "--child", "--size", size_name, "--vocab", str(vocab), "--path", path]
    cmd += ["--micro-batch-size", str(micro_batch_size), "--result", out, "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **MALLOC}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(stats, flush=True)
    return stats, torch.load(out, weights_only=False)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def agreement(got: dict, ref: dict) -> dict:
    """Largest differences of one setting's results from a reference setting's."""
    out = {"loss_abs_diff": abs(float(got["loss"]) - float(ref["loss"]))}
    out["grad_max_abs_diff"] = max(max_diff(got["grads"][k], ref["grads"][k]) for k in ref["grads"])
    for name in SAVED[1:]:
        out[f"{name}_max_abs_diff"] = max_diff(got[name], ref[name])
    out["entropy_abs_diff"] = abs(got["entropy"] - ref["entropy"])
    if got["grads"].keys() != ref["grads"].keys():
        raise RuntimeError("the settings' gradients are on different parameters")
    return out


def run(size_name: str, threads: int) -> dict:
    size = SIZES[size_name]
    runs, comparisons = [], []
    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for m in (N, N // 2, 1):  # the lean step against micro_batch_size
            stats, saved[m] = measure(size_name, size["vocab"], "lean", m, threads, tmp)
            runs.append(stats)
        ref = saved[N]
        for entry in runs:
            diff = agreement(saved[entry["micro_batch_size"]], ref)
            entry["loss_abs_diff_vs_full"] = diff["loss_abs_diff"]
            entry["grad_max_abs_diff_vs_full"] = diff["grad_max_abs_diff"]
            entry["delta_max_abs_diff_vs_full"] = diff["delta_max_abs_diff"]
        grad_scale = max(g.abs().max().item() for g in ref["grads"].values())
        delta_scale = ref["delta"].abs().max().item()
        for vocab in (size["vocab"], QWEN_VOCAB):  # lean against the full-logit reference, micro batch N
            if vocab == size["vocab"]:
                lean, lean_saved = runs[0], ref
            else:
                lean, lean_saved = measure(size_name, vocab, "lean", N, threads, tmp)
            reference, ref_saved = measure(size_name, vocab, "reference", N, threads, tmp)
            comparisons.append(
                {
                    "vocab": vocab,
                    "micro_batch_size": N,
                    "reference": reference,
                    "lean": lean,
                    "step_peak_rise_reduction": 1
                    - lean["step_peak_rise_mib"] / reference["step_peak_rise_mib"],
                    "peak_rss_reduction": 1 - lean["peak_rss_mib"] / reference["peak_rss_mib"],
                    **agreement(lean_saved, ref_saved),
                    "max_abs_grad_reference": max(g.abs().max().item() for g in ref_saved["grads"].values()),
                }
            )
    peaks = [r["peak_rss_mib"] for r in runs]
    return {
        "model": {
            **size,
            "vision": "depth 2, hidden 64",
            "parameters": sum(p.numel() for p in build_model(size).parameters()),
        },
        "rollouts_N": N,
        "prompt_tokens": PROMPT,
        "privileged_tokens": PRIVILEGED,
        "valid_completion_tokens": [size["completion"] - i * (size["completion"] // 8) for i in range(N)],
        "credit": f"topk K={K}, lambda {LAM}",
        "dtype": "float32",
        "measure": "ru_maxrss of a fresh subprocess per setting (peak_rss_mib); RSS sampled every 1 ms "
        "during the step, minus the RSS before it (step_peak_rise_mib); MALLOC_MMAP_THRESHOLD_=65536",
        "step": "old-log-prob recompute + policy_update (teacher replay, Delta_t, m_t, A^_t, forward, backward)",
        "runs": runs,
        "peak_falls_with_micro_batch": all(a > b for a, b in zip(peaks, peaks[1:])),
        "max_abs_grad_full": grad_scale,
        "max_abs_delta_full": delta_scale,
        "lean_vs_reference": comparisons,
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
    }


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=PATHS, default="lean", help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.size, args.vocab, args.path, args.micro_batch_size, args.result, args.threads)
        return None
    result = run(args.size, args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
