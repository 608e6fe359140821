"""CPU benchmark of visd_exp.credit.topk_support_log_ratio at Qwen2.5-VL scale (V = 151,936, bf16).

Run: .venv/bin/python bench/credit.py [--seq-len 768] [--batch 4] [--k 16]
Writes bench/results/credit.json: seconds per call and the extra memory per chunk size, measured as the
peak rise of the process RSS over the resident inputs (sampled every millisecond) next to an estimate.
"""

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import torch

from visd_exp.credit import sampled_token_log_ratio, topk_support_log_ratio

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def timed_peak(fn) -> tuple[float, int]:
    """Run fn once; return (seconds, peak RSS rise over the RSS at the start, in bytes)."""
    base, peak, done = rss_bytes(), [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return seconds, max(peak[0], rss_bytes()) - base


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "credit.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    shape = (args.batch, args.seq_len, args.vocab)
    teacher = torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 3.0)  # bf16 from the start: no fp32 copy
    student = teacher + torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.5)
    tokens = torch.randint(0, args.vocab, shape[:2])
    tokens[:, -args.seq_len // 8 :] = -100  # right padding on the last eighth of every row
    input_bytes = 2 * teacher.numel() * teacher.element_size()
    itemsize = teacher.element_size()

    runs = []
    for chunk in args.chunk_sizes:
        topk_support_log_ratio(teacher, student, tokens, args.k, chunk_size=chunk)  # warm-up
        measured = [
            timed_peak(lambda c=chunk: topk_support_log_ratio(teacher, student, tokens, args.k, chunk_size=c))
            for _ in range(args.repeats)
        ]
        runs.append(
            {
                "function": "topk_support_log_ratio",
                "chunk_size": chunk,
                "seconds": min(s for s, _ in measured),
                "peak_extra_mib_measured": max(p for _, p in measured) / MIB,
                # two gathered native-dtype [chunk, V] row blocks plus, when some row ties at the K-th place,
                # one [chunk, V] bool mask; topk outputs and index lists are O(chunk * K) or O(B * T)
                "peak_extra_mib_estimate": chunk * args.vocab * (2 * itemsize + 1) / MIB,
            }
        )
        print(runs[-1], flush=True)

    # reference point: the full-vocabulary ratio upcasts each chunk to float32 (copy + logsumexp temporary)
    chunk = args.chunk_sizes[0]
    seconds, peak = timed_peak(lambda: sampled_token_log_ratio(teacher, student, tokens, chunk_size=chunk))
    runs.append(
        {
            "function": "sampled_token_log_ratio",
            "chunk_size": chunk,
            "seconds": seconds,
            "peak_extra_mib_measured": peak / MIB,
            "peak_extra_mib_estimate": chunk * args.vocab * (2 * itemsize + 4 + 4) / MIB,
        }
    )
    print(runs[-1], flush=True)

    result = {
        "shape_BTV": list(shape),
        "dtype": "bfloat16",
        "k": args.k,
        "valid_positions": int((tokens >= 0).sum()),
        "note": "CPU, process RSS sampled every 1 ms; padding positions (last 1/8 of T) are skipped",
        "input_mib_both_models": input_bytes / MIB,
        "fp32_full_copy_mib_avoided": 2 * teacher.numel() * 4 / MIB,
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
