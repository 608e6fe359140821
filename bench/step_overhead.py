"""What a VISD step costs over a GRPO step, on the same seed and data (issue: "VISD within 15% of GRPO").

Runs `python -m visd_exp.train` for each variant on the tiny default (or --size tiny for a smoke run),
with validation, checkpoints and credit dumps off, in --rounds rounds (each round runs every variant
once, the order rotated, so a slow stretch of the machine hits each variant alike: identical runs on
these shared cores differ by up to 15% run to run), then reads each run's per-step timings from its
metrics.csv (median over the steps after --skip):

    visd          the default (EMA teacher, top-K credit, rule judge, lambda 0.5)
    visd_lambda0  the same with lambda = 0 from the start: no judge call and no teacher replay may run
    grpo          +experiment=grpo (no teacher, no judge)

and reports, each the median over rounds of the round's ratio (the per-round values beside it)
    within_run_ratio   VISD step / (step - teacher - judge), medians of the same run: what the teacher
                       replay and the judge add to a step (target <= 1.15)
    lambda0_vs_grpo    VISD with lambda = 0 / GRPO, median step times (target <= 1.03); the two train
                       the same tokens (same seed, no replay at lambda = 0), so this is pure overhead
    visd_vs_grpo       VISD / GRPO, median step times, side by side (their rollouts' lengths part once
                       the policies differ: completions/mean_length is reported per variant)
and per variant data_wait_s, the loader's share: the wait between two batches (timing/data_wait).
Writes bench/results/step_overhead.json.

    .venv/bin/python bench/step_overhead.py [--steps 40] [--skip 5] [--rounds 3] [--seed 0] [--size default|tiny]
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

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "visd": [],
    "visd_lambda0": ["schedule=constant", "schedule.value=0.0"],
    "grpo": ["+experiment=grpo"],
}
QUIET = [
    "logger=csv",
    "callbacks.validation.every_n_steps=0",
    "callbacks.validation.at_start=false",
    "callbacks.model_checkpoint=null",
    "callbacks.progress_bar=null",
    "dumps.credit_every_n_steps=0",
    "save_hf_model=false",
]
TINY = [  # a smoke run: small data, short completions, a short warm start
    "data.synthetic.num_videos=12",
    "model.warm_start.steps=4",
    "model.warm_start.batch_size=4",
    "model.warm_start.data.num_videos=12",
    "algorithm.max_completion_length=24",
]


def run(name: str, overrides: list[str], out: Path, log: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "visd_exp.train", *overrides, f"hydra.run.dir={out}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    with log.open("w") as handle:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{name}: training failed (exit {code}); see {log}")
    with open(out / "csv" / "version_0" / "metrics.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("step_time")]


def median(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return statistics.median(values) if values else 0.0


def summarise(rows: list[dict], skip: int) -> dict:
    rows = rows[skip:]
    base = [
        float(r["step_time"]) - float(r.get("timing/teacher") or 0) - float(r.get("timing/judge") or 0)
        for r in rows
    ]
    return {
        "steps_timed": len(rows),
        "step_s": median(rows, "step_time"),
        "step_without_teacher_and_judge_s": statistics.median(base),
        **{f"{k.split('/')[1]}_s": median(rows, k) for k in ("timing/rollout", "timing/reward", "timing/judge", "timing/teacher", "timing/update", "timing/data_wait")},
        "completion_mean_length": statistics.fmean(float(r["completions/mean_length"]) for r in rows),
    }  # fmt: skip


def ratios_of(results: dict) -> dict:
    """The three ratios of one round's runs (those whose variants ran)."""
    out = {}
    if "visd" in results:
        v = results["visd"]
        out["within_run_ratio"] = v["step_s"] / v["step_without_teacher_and_judge_s"]
    if "grpo" in results:
        for name, key in (("visd", "visd_vs_grpo"), ("visd_lambda0", "lambda0_vs_grpo")):
            if name in results:
                out[key] = results[name]["step_s"] / results["grpo"]["step_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the medians")
    parser.add_argument("--rounds", type=int, default=3, help="each runs every variant once, rotated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=("default", "tiny"), default="default")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step_overhead.json")
    parser.add_argument("overrides", nargs="*", help="extra key=value for every run")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="step_overhead-"))
    common = [
        f"trainer.max_steps={args.steps}",
        f"seed={args.seed}",
        *QUIET,
        *(TINY if args.size == "tiny" else []),
    ]
    names = args.variants.split(",")
    rounds = []  # per round: {variant: its run's summary}
    for r in range(args.rounds):
        results = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
            start = time.perf_counter()
            out = work / f"{name}_{r}"
            rows = run(name, [*VARIANTS[name], *common, *args.overrides], out, work / f"{name}_{r}.log")
            results[name] = {**summarise(rows, args.skip), "wall_s": time.perf_counter() - start}
            print(f"round {r} {name}: median step {results[name]['step_s']:.3f} s", flush=True)
        rounds.append(results)
    per_round = [ratios_of(results) for results in rounds]
    ratios = {k: statistics.median(p[k] for p in per_round) for k in per_round[0]}
    variants = {  # each figure: the median over rounds
        name: {k: statistics.median(rd[name][k] for rd in rounds) for k in rounds[0][name]} for name in names
    }
    result = {
        "variants": variants,
        **ratios,
        "per_round": per_round,
        "rounds": args.rounds,
        "targets": {"within_run_ratio": 1.15, "lambda0_vs_grpo": 1.03},
        "steps": args.steps,
        "skip": args.skip,
        "seed": args.seed,
        "size": args.size,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": "bench/step_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(ratios, indent=1), "->", args.out)
    return result


if __name__ == "__main__":
    main()
