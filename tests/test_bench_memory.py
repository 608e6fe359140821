"""bench/memory.py at a tiny size, so that the benchmark cannot rot (not timed; memory is not compared at
this size, where the interpreter's own memory dominates): the lean step against micro_batch_size, and the
lean step against the full-logit reference at the model's vocabulary and at Qwen2.5-VL's."""

from __future__ import annotations

import json

from conftest import load_bench


def test_memory_bench_runs_and_micro_batches_and_paths_agree(tmp_path):
    bench = load_bench("memory")
    out = tmp_path / "memory.json"
    result = bench.main(["--size", "tiny", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    runs = result["runs"]
    assert [(r["path"], r["micro_batch_size"]) for r in runs] == [("lean", 4), ("lean", 2), ("lean", 1)]
    for r in runs:
        assert r["peak_rss_mib"] > 0 and r["step_peak_rise_mib"] >= 0
        assert r["loss_abs_diff_vs_full"] < 1e-5 and r["grad_max_abs_diff_vs_full"] < 1e-5
        assert r["delta_max_abs_diff_vs_full"] < 1e-5
    assert result["max_abs_grad_full"] > 0 and result["max_abs_delta_full"] > 1e-3
    compared = result["lean_vs_reference"]
    assert [c["vocab"] for c in compared] == [bench.SIZES["tiny"]["vocab"], bench.QWEN_VOCAB]
    for c in compared:
        assert (c["reference"]["path"], c["lean"]["path"]) == ("reference", "lean")
        assert c["reference"]["vocab"] == c["lean"]["vocab"] == c["vocab"]
        assert c["max_abs_grad_reference"] > 0
        assert c["loss_abs_diff"] < 1e-6 and c["grad_max_abs_diff"] < 1e-6 * max(
            1.0, c["max_abs_grad_reference"]
        )
        for name in ("delta", "weights", "token_advantages", "logprobs", "old_logprobs"):
            assert c[f"{name}_max_abs_diff"] < 1e-5, name
        assert c["entropy_abs_diff"] < 1e-5
    # V = 151,936 at hidden 32: the vocabulary's tensors dominate the step, and the lean step's rise is lower
    assert compared[1]["lean"]["step_peak_rise_mib"] < compared[1]["reference"]["step_peak_rise_mib"]
