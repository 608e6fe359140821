"""bench/step_overhead.py at a tiny size, so that the benchmark cannot rot (not timed): it trains each
variant, reads the per-step timings back and forms the ratios."""

from __future__ import annotations

import json

import pytest

from conftest import load_bench

pytestmark = pytest.mark.slow


def test_step_overhead_bench_runs(tmp_path, cache_dir):
    bench = load_bench("step_overhead")
    out = tmp_path / "step_overhead.json"
    paths = [
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir / 'data'}",
        f"paths.log_dir={tmp_path}",
    ]
    result = bench.main(
        [
            "--size",
            "tiny",
            "--steps",
            "3",
            "--skip",
            "1",
            "--variants",
            "visd,grpo",
            "--rounds",
            "1",
            "--out",
            str(out),
            *paths,
        ]
    )
    assert json.loads(out.read_text()) == result
    visd, grpo = result["variants"]["visd"], result["variants"]["grpo"]
    assert visd["steps_timed"] == grpo["steps_timed"] == 2
    assert visd["teacher_s"] > 0 and grpo["teacher_s"] == 0.0  # GRPO never replays a teacher
    assert visd["step_s"] > visd["step_without_teacher_and_judge_s"] > 0
    assert result["within_run_ratio"] == pytest.approx(
        visd["step_s"] / visd["step_without_teacher_and_judge_s"]
    )
    assert result["visd_vs_grpo"] == pytest.approx(visd["step_s"] / grpo["step_s"])
    assert result["per_round"] == [{k: result[k] for k in ("within_run_ratio", "visd_vs_grpo")}]
    assert visd["completion_mean_length"] > 0
