"""bench/memory.py at a tiny size, so that the benchmark cannot rot (not timed; memory is not compared at
this size, where the interpreter's own memory dominates)."""

from __future__ import annotations

import json

from conftest import load_bench


def test_memory_bench_runs_and_micro_batches_agree(tmp_path):
    bench = load_bench("memory")
    out = tmp_path / "memory.json"
    result = bench.main(["--size", "tiny", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    runs = result["runs"]
    assert [r["micro_batch_size"] for r in runs] == [4, 2, 1]
    for r in runs:
        assert r["peak_rss_mib"] > 0 and r["step_peak_rise_mib"] >= 0
        assert r["loss_abs_diff_vs_full"] < 1e-5 and r["grad_max_abs_diff_vs_full"] < 1e-5
        assert r["delta_max_abs_diff_vs_full"] < 1e-5
    assert result["max_abs_grad_full"] > 0 and result["max_abs_delta_full"] > 1e-3
