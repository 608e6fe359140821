"""Judge benchmark: concurrent HTTP judging against the local server, rule-judge throughput, training
against a faulty served judge, and how much of a slow judge's latency the VISD step hides.

.venv/bin/python bench/judge.py    # writes bench/results/judge.json
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

from visd_exp.judge import JudgeItem, RuleJudge
from visd_exp.judge.http import HttpJudge
from visd_exp.judge.serve import start_server, stop

OUT = Path(__file__).resolve().parent / "results" / "judge.json"
LATENCY = 0.2
N_CONCURRENT = 16
N_RULE = 5000

EVIDENCE = {
    "segment": [2.0, 5.0],
    "key_frames": [{"time": 3.0, "objects": {"red square": [[10, 10, 50, 50]]}}],
}
STG_REF = "<obj>red square</obj><box>[10,10,50,50]</box>at<t>3.0</t>s"


def make_items(n: int, tag: str = "") -> list[JudgeItem]:
    """A mix of tasks and outcomes (right, wrong window, drift, truncated, boxes, options, free text)."""
    templates = [
        (
            "temporal_grounding",
            "From <t>2.0</t>s to <t>5.0</t>s",
            "<think>The <obj>red square</obj><box>[10,10,50,50]</box>at<t>{a}.0</t>s moves right until <t>4.5</t>s."
            "</think><answer>From <t>{a}.0</t>s to <t>{b}.0</t>s</answer>",
        ),
        (
            "temporal_grounding",
            "From <t>2.0</t>s to <t>5.0</t>s",
            "<think>The square is seen at <t>{b}.0</t>s and then at <t>{a}.5</t>s, and then it",
        ),
        (
            "spatio_temporal_grounding",
            STG_REF,
            "<think>I find the <obj>red square</obj><box>[{a}0,10,50,5{b}]</box>at<t>3.0</t>s on the left.</think>"
            "<answer><obj>red square</obj><box>[{a}0,10,50,5{b}]</box>at<t>3.0</t>s</answer>",
        ),
        (
            "multiple_choice",
            "B",
            "<think>The person walks to the right side at <t>{a}.0</t>s, so the answer is B.</think><answer>{c}</answer>",
        ),
        (
            "free_form",
            "a man rides a red bicycle",
            "<think>A man on a red bicycle passes at <t>{a}.0</t>s.</think><answer>a man riding a {d} bicycle</answer>",
        ),
    ]
    items = []
    for i in range(n):
        task, ref, completion = templates[i % len(templates)]
        completion = completion.format(a=1 + i % 4, b=5 + i % 5, c="ABC"[i % 3], d=("red", "blue")[i % 2])
        items.append(JudgeItem(task, f"Question {tag}{i}?", ref, EVIDENCE, completion))
    return items


def bench_http() -> dict:
    server, thread, url = start_server("127.0.0.1", 0, latency=LATENCY)
    try:
        with HttpJudge(url, "visd-rule-judge", api_key_env=None, api_key_required=False) as judge:
            t0 = time.perf_counter()
            assert all(judge.judge_batch(make_items(N_CONCURRENT, "cold")))
            cold = time.perf_counter() - t0
            warm = []
            for rep in range(5):
                t0 = time.perf_counter()
                assert all(judge.judge_batch(make_items(N_CONCURRENT, f"warm{rep}-")))
                warm.append(time.perf_counter() - t0)
            metrics = judge.pop_metrics()
        with HttpJudge(
            url, "visd-rule-judge", api_key_env=None, api_key_required=False, max_concurrency=1
        ) as one:
            t0 = time.perf_counter()
            assert all(one.judge_batch(make_items(N_CONCURRENT, "seq")))
            sequential = time.perf_counter() - t0
    finally:
        stop(server, thread)
    return {
        "items": N_CONCURRENT,
        "server_latency_s": LATENCY,
        "wall_s_cold": round(cold, 4),
        "wall_s_warm_median": round(statistics.median(warm), 4),
        "wall_s_warm_max": round(max(warm), 4),
        "wall_s_one_at_a_time": round(sequential, 4),
        "target_s": 0.5,
        "meets_target": statistics.median(warm) <= 0.5 and cold <= 0.5,
        "latency_p50_s": round(metrics["judge/latency_p50"], 4),
        "latency_p95_s": round(metrics["judge/latency_p95"], 4),
    }


def bench_faults() -> dict:
    """64 items, 30% injected 500/429 and 10% malformed replies: how many still get feedback."""
    server, thread, url = start_server(
        "127.0.0.1",
        0,
        latency=0.05,
        error_rate=0.3,
        error_codes=(500, 429),
        retry_after=0.2,
        malformed_rate=0.1,
        seed=0,
    )
    try:
        with HttpJudge(
            url, "visd-rule-judge", api_key_env=None, api_key_required=False, backoff_max=1.0
        ) as judge:
            t0 = time.perf_counter()
            out = judge.judge_batch(make_items(64, "fault"))
            wall = time.perf_counter() - t0
            metrics = judge.pop_metrics()
    finally:
        stop(server, thread)
    return {
        "items": 64,
        "wall_s": round(wall, 4),
        "fallback_rate": round(metrics["judge/fallback_rate"], 4),
        "answered": sum(o is not None for o in out),
        "requests": int(metrics["judge/requests"]),
        "retries": int(metrics["judge/retries"]),
        "server": dict(server.stats),
    }


def train_against_served_judge(
    steps: int, overrides: list[str], **server_options
) -> tuple[list[dict], dict, float]:
    """A VISD run (+experiment=ema_topk, tiny default) against the judge served in this process with
    `server_options` (latency, error_rate, ...): (its training rows of metrics.csv, the server's counts,
    the run's wall seconds)."""
    import csv
    import tempfile

    from hydra import compose, initialize_config_dir

    from visd_exp.train import train

    root = Path(__file__).resolve().parents[1]
    server, thread, url = start_server("127.0.0.1", 0, **server_options)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            initialize_config_dir(str(root / "conf"), version_base="1.3"),
        ):
            cfg = compose(
                "train",
                [
                    "+experiment=ema_topk",
                    "judge=openai",
                    f"judge.base_url={url}",
                    "judge.api_key_required=false",
                    "judge.cache_dir=null",
                    f"trainer.max_steps={steps}",
                    "logger=csv",
                    "callbacks.progress_bar=null",
                    f"paths.output_dir={tmp}",
                    *overrides,
                ],
            )
            t0 = time.perf_counter()
            train(cfg)
            wall = time.perf_counter() - t0
            with open(Path(tmp) / "csv" / "version_0" / "metrics.csv") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("step_time")]  # not validation's rows
    finally:
        stop(server, thread)
    return rows, dict(server.stats), wall


def bench_training_with_faults(steps: int = 20) -> dict:
    """A 20-step VISD training run (tiny default) against the served judge with 30% injected 500/429s.

    Every fault must be accounted for: each injected error is either retried or ends in a fallback,
    so server errors <= judge retries + fallbacks, and the judge's HTTP attempts equal the server's.
    """
    rows, server, wall = train_against_served_judge(
        steps, ["judge.backoff_max=1.0"], error_rate=0.3, error_codes=(500, 429), retry_after=0.2
    )
    total = {k: sum(float(r[k]) for r in rows) for k in ("judge/requests", "judge/retries", "judge/items")}
    fallbacks = sum(float(r["judge/fallback_rate"]) * float(r["judge/items"]) for r in rows)
    return {
        "steps_completed": len(rows),
        "wall_s": round(wall, 2),
        "server": server,
        "judge_requests": int(total["judge/requests"]),
        "judge_retries": int(total["judge/retries"]),
        "judge_items": int(total["judge/items"]),
        "judge_fallbacks": round(fallbacks),
        "every_request_counted": int(total["judge/requests"]) == server["chat"],
        "every_fault_counted": server["errors"] <= total["judge/retries"] + round(fallbacks),
    }


def bench_overlap(steps: int = 15, latency: float = 0.15, skip: int = 3, overrides: tuple = ()) -> dict:
    """VISD steps (tiny default) against the served judge answering each request after `latency` s.

    The judge is asked in a background thread when the rollouts exist, and the step waits for its feedback
    only at the first teacher forward, after the first student forward: `timing/judge` is the wait left.
    hidden_s = what a request takes (judge/latency_p50) - the wait (timing/judge), medians after `skip` steps.
    """
    quiet = [
        "callbacks.validation=null",
        "callbacks.model_checkpoint=null",
        "dumps.credit_every_n_steps=0",
        "save_hf_model=false",
    ]
    rows, _, _ = train_against_served_judge(steps, [*quiet, *overrides], latency=latency)
    rows = rows[skip:]

    def med(key: str) -> float:
        return round(statistics.median(float(r[key]) for r in rows), 4)

    keys = ("judge/latency_p50", "timing/judge", "timing/update", "timing/teacher", "step_time")
    out = {"steps_timed": len(rows), "server_latency_s": latency, **{k: med(k) for k in keys}}
    out["hidden_s"] = round(out["judge/latency_p50"] - out["timing/judge"], 4)
    return out


def bench_rule() -> dict:
    judge = RuleJudge()
    items = make_items(N_RULE)
    judge.judge_batch(items[:50])  # warm regex and reference caches
    t0 = time.perf_counter()
    out = judge.judge_batch(items)
    wall = time.perf_counter() - t0
    assert all(out)
    rate = N_RULE / wall
    return {
        "items": N_RULE,
        "wall_s": round(wall, 4),
        "per_s": round(rate, 1),
        "target_per_s": 1000,
        "meets_target": rate >= 1000,
    }


def main() -> None:
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "http_concurrent": bench_http(),
        "http_faults": bench_faults(),
        "rule_throughput": bench_rule(),
        "training_with_30pct_faults": bench_training_with_faults(),
        "judge_overlap": bench_overlap(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
