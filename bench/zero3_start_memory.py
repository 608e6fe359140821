"""Host memory at start: one process against 2 ZeRO-3 processes (zero.Init), on a mid-size model (issue 23).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/zero3_start_memory.py      (about 3 minutes on 2 cores)
Writes bench/results/zero3_start_memory.json (--size large --out ...: hidden 1024, 16 layers, ~10x).

Each setting is one real `python -m visd_exp.train +experiment=ema_topk` of one optimizer step on a
random-weight Qwen2.5-VL of the real class (the tiny builder with hidden 512, 8 layers, intermediate
1376, vocabulary 1024, vision hidden 128: about 22 M parameters), EMA teacher, AdamW, fp32:

- `single`:  trainer=cpu, one process (the student and the teacher whole);
- `zero3_whole_first`: trainer=deepspeed_cpu, 2 processes, ZeRO-3, but the model loaded whole on every
             rank and the teacher deep-copied before DeepSpeed partitions them (`model.partitioned_init=false`,
             how every ZeRO-3 run started before issue 23);
- `zero3`:   the same with the student and the teacher built under deepspeed.zero.Init and read file by
             file (models/partitioned.py); the teacher's fp32 state is per rank (teacher/sharded.py).

Every child runs with MALLOC_MMAP_THRESHOLD_=65536 (bench/memory.py's reason). What is read is what every
run logs at its start (module.memory_metrics): `memory/host_peak_rss_bytes`
(ru_maxrss of the process, so Python, torch, DeepSpeed and the data set-up included; for ZeRO-3 the
larger of the 2 ranks) and the exact tensor bytes of `distributed/memory.py` (this rank's student and
teacher weights and the teacher's fp32 state; the optimizer's state after the first step).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MID = {
    "model.tiny.hidden_size": 512,
    "model.tiny.intermediate_size": 1376,
    "model.tiny.num_hidden_layers": 8,
    "model.tiny.num_attention_heads": 8,
    "model.tiny.num_key_value_heads": 2,
    "model.tiny.vision_hidden_size": 128,
    "model.tiny.vision_intermediate_size": 256,
}
COMMON = [
    "+experiment=ema_topk",
    "model.warm_start=null",  # random weights: what is measured is memory, not learning
    "trainer.max_steps=1",
    "data.synthetic.num_videos=8",
    "algorithm.max_completion_length=16",
    "algorithm.num_generations=2",
    "callbacks.validation.every_n_steps=0",
    "callbacks.validation.at_start=false",
    "callbacks.model_checkpoint=null",
    "callbacks.progress_bar=null",
    "dumps.credit_every_n_steps=0",
    "save_hf_model=false",
    "logger=csv",
]
LARGE = {  # about 10x the mid size: where the model, not the process, dominates the resident memory
    **MID,
    "model.tiny.hidden_size": 1024,
    "model.tiny.intermediate_size": 2816,
    "model.tiny.num_hidden_layers": 16,
    "model.tiny.num_attention_heads": 16,
    "model.tiny.num_key_value_heads": 4,
}
SETTINGS = {
    "single": ["trainer=cpu"],
    "zero3_whole_first": ["trainer=deepspeed_cpu", "trainer.devices=2", "model.partitioned_init=false"],
    "zero3": ["trainer=deepspeed_cpu", "trainer.devices=2", "trainer.strategy.stage=3"],
}


def start_metrics(run: Path) -> dict[str, float]:
    rows: dict[int, dict[str, float]] = {}
    for path in run.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                values = {k: float(v) for k, v in row.items() if v not in ("", None)}
                rows.setdefault(int(values["step"]), {}).update(values)
    out = {k: v for k, v in rows.get(0, {}).items() if k.startswith("memory/")}  # at start
    for key in ("memory/optimizer_state_bytes", "memory/grad_bytes"):  # they exist from the first step on
        if key in rows.get(1, {}):
            out[f"{key}_after_step"] = rows[1][key]
    return out


def run(name: str, overrides: list[str], work: Path, size: dict) -> dict:
    out = work / name
    args = [sys.executable, "-m", "visd_exp.train", *COMMON, *overrides]
    args += [f"{k}={v}" for k, v in size.items()]
    args += [
        f"paths.cache_dir={work / 'cache'}",
        f"paths.data_dir={work / 'data'}",
        f"paths.output_dir={out}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env["DS_ACCELERATOR"] = "cpu"
    # as bench/memory.py: glibc serves allocations above 64 KiB with mmap and unmaps them on free, so the RSS
    # follows live tensors (by default the threshold rises after the first large free and freed blocks stay
    # resident: zero.Init's create-whole-then-partition of every parameter would then count in the peak)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stderr[-4000:]}")
    metrics = start_metrics(out)
    peak = metrics.get("memory/host_peak_rss_bytes_max_rank", metrics.get("memory/host_peak_rss_bytes"))
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": peak / 2**20,
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "zero3_start_memory.json"))
    parser.add_argument("--size", choices=("mid", "large"), default="mid")
    parser.add_argument("--quick", action="store_true", help="the default tiny model instead (smoke test)")
    args = parser.parse_args(argv)
    size = {} if args.quick else (MID if args.size == "mid" else LARGE)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SETTINGS.items():
            results[name] = run(name, overrides, Path(tmp), size)
            print(f"{name}: peak RSS {results[name]['peak_rss_mib']:.0f} MiB ({results[name]['seconds']} s)")
    single, zero3 = results["single"]["metrics"], results["zero3"]["metrics"]
    payload = {
        "bench": "zero3_start_memory",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/zero3_start_memory.py"
        + (" --quick" if args.quick else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": size or "tiny default",
        "results": results,
        "zero3_whole_first_peak_rss_mib": results["zero3_whole_first"]["peak_rss_mib"],
        "zero3_over_single": {
            "peak_rss": results["zero3"]["peak_rss_mib"] / results["single"]["peak_rss_mib"],
            "teacher_state_bytes": zero3["memory/teacher_state_bytes"] / single["memory/teacher_state_bytes"],
            "student_weight_bytes": zero3["memory/student_weight_bytes"]
            / single["memory/student_weight_bytes"],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["zero3_over_single"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
