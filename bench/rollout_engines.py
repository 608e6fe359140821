"""HF `generate` against the colocated vLLM engine (issue 22): rollouts, weight pushes and training steps.

Run in .venv-vllm (both engines there):  OMP_NUM_THREADS=2 .venv-vllm/bin/python bench/rollout_engines.py
Writes bench/results/rollout_engines.json. `--quick`: the tiny model, 8 rollouts, 2 training steps (smoke).

1. Rollouts on the same prompts and lengths: every completion exactly `--tokens` long (min = max new
   tokens on both engines, so equal work), G = 8 rollouts per prompt, 8 / 32 / 64 rollouts, fp32:
   - tiny: the default tiny model (hidden 128, 2 layers), 8 frames of 56 x 56 per prompt;
   - mid:  hidden 512, 8 layers (head dim 64), vision hidden 128, random weights, 16 frames of 112 x 112.
   Each timed `--repeats` times after one warm-up; the median is reported, with tokens/s = rollouts x tokens
   / seconds. The weight push (trainer -> engine, every parameter, caches reset) is timed on each model.
2. Training: `+experiment=ema_topk` for `--steps` steps with each engine on the tiny default (validation and
   checkpoints off), median step_time and timing/weight_sync over the steps after the first 5.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": {"frames": 8, "pixels": 56, "spec": {}},
    "mid": {
        "frames": 16,
        "pixels": 112,
        "spec": dict(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            vision_hidden_size=128,
            vision_intermediate_size=256,
        ),
    },  # fmt: skip
}
G = 8


def build_batch(processor, prompts: int, frames: int, pixels: int) -> dict:
    from visd_exp.data.datamodule import collate_prompts, encode_prompt, prompt_text
    from visd_exp.data.frames import FramePlan

    items = []
    gen = torch.Generator().manual_seed(0)
    for i in range(prompts):
        plan = FramePlan(tuple(float(t) for t in range(frames)), pixels, pixels, float(frames))
        record = {"question": f"When does square {i} appear?", "task": "temporal_grounding"}
        video = torch.randint(0, 256, (frames, 3, pixels, pixels), dtype=torch.uint8, generator=gen)
        text = prompt_text(processor, record, plan)
        items.append(
            {**encode_prompt(processor, text, video), "sample": record, "frames": video, "text": text}
        )
    return collate_prompts(items, processor.tokenizer.pad_token_id)


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def rollouts(size_name: str, counts: list[int], tokens: int, repeats: int, cache: Path) -> dict:
    from visd_exp.models import load_model_and_processor, vision_token_ids
    from visd_exp.rollout.generation import generate_rollouts
    from visd_exp.rollout.vllm_engine import VLLMEngine

    size = SIZES[size_name]
    cfg = OmegaConf.create({"tiny": {"seed": 0, **size["spec"]}, "cache_dir": str(cache), "dtype": "float32",
                            "attn_implementation": "sdpa", "warm_start": None})  # fmt: skip
    model, processor = load_model_and_processor(cfg)
    model.eval()
    suppress = vision_token_ids(processor.tokenizer)
    how = OmegaConf.create({"num_generations": G, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                            "max_completion_length": tokens, "min_completion_length": tokens})  # fmt: skip
    batches = {n: build_batch(processor, n // G, size["frames"], size["pixels"]) for n in counts}
    longest = max(b["input_ids"].shape[1] for b in batches.values()) + tokens
    vcfg = OmegaConf.load(ROOT / "conf/rollout/default.yaml").vllm
    vcfg.kv_cache_gib = max(0.25, 2 * max(counts) * longest * kv_bytes_per_token(model) / 2**30)
    limits = {"max_images": size["frames"], "max_model_len": longest, "max_num_seqs": max(counts)}
    engine = VLLMEngine(vcfg, model, processor, precision="32-true", limits=limits)
    version = iter(range(10**6))
    push = timed(lambda: engine.sync(model, next(version)), repeats=5)
    out = {"params": sum(p.numel() for p in model.parameters()), "frames": size["frames"],
           "pixels": size["pixels"], "prompt_tokens": batches[counts[0]]["input_ids"].shape[1],
           "push_s": statistics.median(push), "rollouts": {}}  # fmt: skip
    for n in counts:
        batch = batches[n]
        hf = timed(lambda b=batch: generate_rollouts(model, processor, b, how, suppress), repeats)
        vl = timed(lambda b=batch: engine.generate(model, processor, b, how, suppress), repeats)
        check = engine.generate(model, processor, batch, how, suppress)
        assert int(check.completion_mask.sum(1).min()) == tokens, "completions must all be `tokens` long"
        row = {"hf_s": statistics.median(hf), "vllm_s": statistics.median(vl), "hf_runs": hf, "vllm_runs": vl}
        row["hf_tokens_per_s"] = n * tokens / row["hf_s"]
        row["vllm_tokens_per_s"] = n * tokens / row["vllm_s"]
        row["vllm_speedup"] = row["hf_s"] / row["vllm_s"]
        out["rollouts"][str(n)] = row
        print(f"{size_name} {n:3d} rollouts x {tokens}: HF {row['hf_s']:.2f} s, vLLM {row['vllm_s']:.2f} s "
              f"({row['vllm_speedup']:.2f}x)", flush=True)  # fmt: skip
    engine.close()
    return out


def kv_bytes_per_token(model) -> int:
    text = model.config.get_text_config()
    head_dim = text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 4


def training(engine: str, steps: int, out_dir: Path) -> dict:
    args = [
        sys.executable, "-m", "visd_exp.train", "+experiment=ema_topk", f"rollout.engine={engine}",
        f"trainer.max_steps={steps}", "logger=csv", "callbacks.validation.every_n_steps=0",
        "callbacks.validation.at_start=false", "callbacks.model_checkpoint=null", "callbacks.progress_bar=null",
        "dumps.credit_every_n_steps=0", "save_hf_model=false", f"paths.output_dir={out_dir}",
    ]  # fmt: skip
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    with open(out_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    tail = rows[5:] if len(rows) > 5 else rows
    med = {k: statistics.median(float(r[k]) for r in tail)
           for k in ("step_time", "timing/rollout", "timing/weight_sync", "timing/old_logprobs", "timing/update")
           if k in tail[0] and tail[0][k] != ""}  # fmt: skip
    med["weight_sync_share"] = med.get("timing/weight_sync", 0.0) / med["step_time"]
    med["steps"] = len(rows)
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--counts", nargs="+", type=int, default=[8, 32, 64])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "bench/results/rollout_engines.json"))
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.counts, args.tokens, args.repeats, args.steps = ["tiny"], [8], 16, 1, 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # before the engine: it freezes it
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "tokens": args.tokens, "G": G, "rollouts": {}, "training": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            result["rollouts"][size] = rollouts(
                size, args.counts, args.tokens, args.repeats, Path(tmp) / "models"
            )
        for engine in ("hf", "vllm"):
            result["training"][engine] = training(engine, args.steps, Path(tmp) / f"train-{engine}")
            print(f"training {engine}: {result['training'][engine]}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
