"""How the cost of a VISD update grows with the frames per prompt and the completion length (issue 15).

Run: .venv/bin/python bench/scaling.py          (about 4 minutes on 2 cores)
Writes bench/results/scaling.json and bench/results/scaling.png.

The model is bench/memory.py's mid-size random-weight Qwen2.5-VL (hidden 512, 8 layers, vocabulary
32,000, the real class, nothing downloaded); the step is what memory.py measures: the old-log-prob
recompute, then `policy_update` with an EMA-style teacher's replay (a 32-token privileged block), top-K
credit and the backward pass, for N = 4 rollouts of one prompt (G = 4), in micro-batches of 2, fp32.
Rollout generation is left out: it is C sequential decoding steps whatever the frames, and its prefill
is one forward of the prompt.

Two sweeps, each setting in a fresh subprocess (seconds of the step, peak RSS and the RSS rise during
the step, measured as in memory.py):
    frames      4, 8, 16 frames of 224 x 224 (64 vision tokens each) at 256 completion tokens
    completion  64, 128, 256, 512, 768 completion tokens at 8 frames
and the growth fitted by least squares on log-log axes: seconds ~ x^b (b = 1: linear, 2: quadratic),
with the fitted line seconds = a + c x beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import memory  # noqa: E402  (bench/memory.py: the model, the step and the RSS probe)

FRAMES = [4, 8, 16]
COMPLETIONS = [64, 128, 256, 512, 768]
BASE_FRAMES, BASE_COMPLETION = 8, 256
TINY = {"frames": [2, 4], "completions": [8, 16], "base_frames": 2, "base_completion": 8}
TEXT_BEFORE, TEXT_AFTER = 16, 32  # prompt text around the frames (the tiny prompts' question and template)
# Frames of 224 x 224: a 16 x 16 patch grid, 64 vision tokens after the 2 x 2 merge (Open-o3-Video's
# per-frame budget allows up to 128; the tiny default's 56 x 56 frames have 4, too few to show a trend)
GRID = (1, 16, 16)
TOKENS_PER_FRAME = math.prod(GRID) // 4


def prompt_ids(frames: int, vocab: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, P]: text, then per frame <vision_start>, TOKENS_PER_FRAME x <image_pad>, <vision_end>, then text;
    and the mm type ids."""
    parts = [torch.randint(memory.FIRST_TEXT, vocab, (TEXT_BEFORE,), generator=generator)]
    for _ in range(frames):
        parts.append(
            torch.tensor([memory.VISION_START, *[memory.IMAGE_PAD] * TOKENS_PER_FRAME, memory.VISION_END])
        )
    parts.append(torch.randint(memory.FIRST_TEXT, vocab, (TEXT_AFTER,), generator=generator))
    ids = torch.cat(parts)[None]
    return ids, (ids == memory.IMAGE_PAD).long()


def build_step(size: dict, frames: int, completion: int):
    """memory.build_step with `frames` images of GRID per prompt and `completion` tokens per rollout."""
    return memory.build_step(
        size, completion, images=frames, grid=GRID, prompt=lambda g: prompt_ids(frames, size["vocab"], g)
    )


def child(size_name: str, frames: int, completion: int, micro_batch_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    step = build_step(memory.SIZES[size_name], frames, completion)
    base, peak, done = memory.rss_bytes(), [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], memory.rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    memory.one_step(*step, micro_batch_size)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    prompt_tokens = step[2].prompt_ids.shape[1]
    print(
        json.dumps(
            {
                "frames": frames,
                "completion": completion,
                "prompt_tokens": prompt_tokens,
                "seconds": seconds,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / memory.MIB,
                "step_peak_rise_mib": (max(peak[0], memory.rss_bytes()) - base) / memory.MIB,
            }
        ),
        flush=True,
    )


def measure(size_name: str, frames: int, completion: int, micro_batch_size: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--size", size_name, "--threads", str(threads)]
    cmd += [
        "--frames",
        str(frames),
        "--completion",
        str(completion),
        "--micro-batch-size",
        str(micro_batch_size),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **memory.MALLOC}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"frames={frames} completion={completion}: {proc.stderr[-3000:]}")
    entry = json.loads(proc.stdout.strip().splitlines()[-1])
    print(entry, flush=True)
    return entry


def growth(xs: list[float], ys: list[float]) -> dict:
    """Least squares: log y = log k + b log x (the exponent b), and y = a + c x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ly)) / sum((u - mx) ** 2 for u in lx)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    c = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return {"exponent": b, "intercept": mean_y - c * mean_x, "slope": c}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for col, (sweep, key, label, per) in enumerate(
        [
            ("frames", "frames", "frames per prompt", "frame"),
            ("completion", "completion", "completion tokens", "token"),
        ]
    ):
        runs = result["sweeps"][sweep]
        xs = [r[key] for r in runs]
        for row, (metric, ylabel) in enumerate(
            [("seconds", "update step (s)"), ("step_peak_rise_mib", "RSS rise in the step (MiB)")]
        ):
            ax = axes[row][col]
            ax.plot(xs, [r[metric] for r in runs], "o-")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            fit, unit = result["growth"][sweep][metric], "s" if metric == "seconds" else "MiB"
            ax.set_title(
                f"{fit['intercept']:.3g} {unit} + {fit['slope']:.3g} {unit} per {per}"
                f" (log-log slope {fit['exponent']:.2f})",
                fontsize=9,
            )
            ax.grid(alpha=0.3)
    fig.suptitle(
        f"VISD update cost, {result['model']['parameters'] / 1e6:.0f} M-parameter Qwen2.5-VL, fp32, CPU"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(memory.SIZES), default="mid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--completion", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.size, args.frames, args.completion, args.micro_batch_size, args.threads)
        return None
    tiny = args.size == "tiny"
    frames = TINY["frames"] if tiny else FRAMES
    completions = TINY["completions"] if tiny else COMPLETIONS
    base_frames = TINY["base_frames"] if tiny else BASE_FRAMES
    base_completion = TINY["base_completion"] if tiny else BASE_COMPLETION
    m, t = args.micro_batch_size, args.threads
    sweeps = {
        "frames": [measure(args.size, f, base_completion, m, t) for f in frames],
        "completion": [measure(args.size, base_frames, c, m, t) for c in completions],
    }
    size = memory.SIZES[args.size]
    result = {
        "model": {**size, "parameters": sum(p.numel() for p in memory.build_model(size).parameters())},
        "step": "old-log-prob recompute + policy_update (teacher replay with a 32-token privileged block, "
        "top-K credit, forward, backward); rollout generation left out",
        "rollouts_N": memory.N,
        "micro_batch_size": m,
        "tokens_per_frame": TOKENS_PER_FRAME,
        "fixed": {"frames sweep: completion": base_completion, "completion sweep: frames": base_frames},
        "sweeps": sweeps,
        "growth": {
            sweep: {
                metric: growth([r[key] for r in runs], [max(r[metric], 1e-3) for r in runs])
                for metric in ("seconds", "step_peak_rise_mib")
            }
            for sweep, key, runs in (
                ("frames", "frames", sweeps["frames"]),
                ("completion", "completion", sweeps["completion"]),
            )
        },
        "measure": "a fresh subprocess per setting; seconds of the step; ru_maxrss (peak_rss_mib); RSS sampled "
        "every 1 ms minus the RSS before the step (step_peak_rise_mib); MALLOC_MMAP_THRESHOLD_=65536",
        "dtype": "float32",
        "device": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": t,
        "torch": torch.__version__,
        "command": "bench/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
