"""Benchmark the verifier: completions scored per second on one CPU core.

Generates realistic ~768-token completions (a grounded <think> with several claims and timestamps,
then a temporal / spatio-temporal / multiple-choice / free-form answer), scores them with
visd_exp.rewards.score, and writes bench/results/rewards.json.

    .venv/bin/python bench/rewards.py [--n 4000] [--seed 0]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from visd_exp.rewards import parse_completion, score  # noqa: E402

OBJECTS = ["red square", "blue circle", "green triangle", "yellow star", "person", "dog", "cup"]
FILLER = (
    "Looking at the frames in order, the scene stays mostly static while the object moves across the "
    "frame, so I compare its position between consecutive frames before deciding. "
)
W, H, DURATION = 448, 252, 16.0


def make_sample(rng: random.Random, task: str) -> dict:
    """A record shaped like docs/DATA.md (+ frame_size), with two to four key frames."""
    times = sorted(rng.sample([round(0.5 * i, 1) for i in range(1, 32)], rng.randint(2, 4)))
    key_frames = [{"idx": int(t * 30), "time": t} for t in times]
    key_items = {}
    for kf in key_frames:
        objs = rng.sample(OBJECTS, rng.randint(1, 2))
        key_items[str(kf["idx"])] = {o: [_box(rng, 2 * W, 2 * H)] for o in objs}  # image = 2x the frame
    sample = {
        "id": f"{task}-{rng.randrange(10**9)}",
        "task": task,
        "key_frames": key_frames,
        "key_items": key_items,
        "image_size": [2 * W, 2 * H],
        "frame_size": [W, H],
        "duration": DURATION,
        "segment": [times[0], times[-1] + 1.0],
    }
    if task == "multiple_choice":
        sample["options"] = ["A. left", "B. right", "C. up", "D. down"]
        sample["answer"] = rng.choice("ABCD")
    elif task == "free_form":
        sample["answer"] = "the red square moves to the left and stops next to the blue circle"
    elif task == "temporal_grounding":
        sample["answer"] = f"From <t>{times[0]}</t>s to <t>{times[-1] + 1.0}</t>s"
    else:
        sample.pop("segment")
        sample["answer"] = ""
    return sample


def _box(rng: random.Random, w: float, h: float) -> list[float]:
    x1, y1 = rng.uniform(0, 0.7 * w), rng.uniform(0, 0.7 * h)
    return [round(x1), round(y1), round(x1 + rng.uniform(10, 0.3 * w)), round(y1 + rng.uniform(10, 0.3 * h))]


def _claim(rng: random.Random, sample: dict) -> str:
    kf = rng.choice(sample["key_frames"])
    name = rng.choice(list(sample["key_items"][str(kf["idx"])]))
    if rng.random() < 0.5:  # near the GT box (scaled from image to frame pixels), else a random box
        gt = sample["key_items"][str(kf["idx"])][name][0]
        boxes = [[round(v / 2 + rng.uniform(-8, 8)) for v in gt]]
    else:
        boxes = [_box(rng, W, H) for _ in range(rng.randint(1, 2))]
    boxes = "".join(f"<box>{b}</box>" for b in boxes).replace(" ", "")
    return f"<obj>{name}</obj>{boxes}at<t>{round(kf['time'] + rng.uniform(-1.5, 1.5), 1)}</t>s"


def make_completion(rng: random.Random, sample: dict, target_chars: int = 3000) -> str:
    """~768 tokens (~3,000 characters): filler prose with grounded claims and free timestamps."""
    think = []
    while sum(map(len, think)) < target_chars:
        think.append(FILLER[: rng.randint(60, len(FILLER))])
        think.append(f"I see the {_claim(rng, sample)}. ")
        if rng.random() < 0.4:
            think.append(f"It changes around <t>{round(rng.uniform(0, DURATION), 1)}</t>s. ")
    task = sample["task"]
    if task == "multiple_choice":
        answer = rng.choice(["A", "B", "C", "D", "(B)", "Correct Option: C"])
    elif task == "free_form":
        answer = "the red square moves left and then stops near the circle"
    elif task == "temporal_grounding":
        s = round(rng.uniform(0, 10), 1)
        answer = f"From <t>{s}</t>s to <t>{round(s + rng.uniform(0.5, 5), 1)}</t>s"
    else:
        answer = " ".join(_claim(rng, sample) for _ in range(rng.randint(1, 3)))
    return f"<think>{''.join(think)}</think>\n<answer>{answer}</answer>"


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pinned_cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000, help="completions to score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rewards.json")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):  # one core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    rng = random.Random(args.seed)
    tasks = ["temporal_grounding", "spatio_temporal_grounding", "multiple_choice", "free_form"]
    samples = [make_sample(rng, tasks[i % len(tasks)]) for i in range(args.n)]
    completions = [make_completion(rng, s) for s in samples]

    for c, s in zip(completions[:50], samples[:50]):  # warm-up: imports, ROUGE scorer
        score(c, s, progress=0.3)

    per_task: dict[str, list[float]] = {t: [] for t in tasks}
    start = time.perf_counter()
    for c, s in zip(completions, samples):
        t0 = time.perf_counter()
        score(c, s, progress=0.3)
        per_task[s["task"]].append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start

    chars = [len(c) for c in completions]
    claims = [len(parse_completion(c).think_claims) for c in completions[:200]]
    result = {
        "benchmark": "visd_exp.rewards.score",
        "n": args.n,
        "seconds": round(elapsed, 4),
        "completions_per_second": round(args.n / elapsed, 1),
        "per_task_completions_per_second": {
            t: round(len(v) / sum(v), 1) for t, v in per_task.items() if v and sum(v) > 0
        },
        "mean_chars": round(statistics.mean(chars), 1),
        "approx_tokens": round(statistics.mean(chars) / 4),  # ~4 characters per token
        "mean_think_claims": round(statistics.mean(claims), 2),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
