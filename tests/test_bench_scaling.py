"""bench/scaling.py at a tiny size, so that the benchmark cannot rot (not timed): both sweeps run in their
own processes, the fits and the plot are written."""

from __future__ import annotations

import json

import pytest

from conftest import load_bench


def test_scaling_bench_runs_both_sweeps_and_fits_them(tmp_path):
    bench = load_bench("scaling")
    out = tmp_path / "scaling.json"
    result = bench.main(["--size", "tiny", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    frames, completion = result["sweeps"]["frames"], result["sweeps"]["completion"]
    assert [r["frames"] for r in frames] == [2, 4] and [r["completion"] for r in completion] == [8, 16]
    # the prompt holds each frame's <vision_start>, 64 pads and <vision_end> between 48 text tokens
    assert [r["prompt_tokens"] for r in frames] == [48 + 66 * 2, 48 + 66 * 4]
    assert all(r["seconds"] > 0 and r["peak_rss_mib"] > 0 for r in frames + completion)
    for sweep in ("frames", "completion"):
        assert set(result["growth"][sweep]) == {"seconds", "step_peak_rise_mib"}


def test_growth_fit_recovers_known_exponents():
    bench = load_bench("scaling")
    xs = [64, 128, 256, 512]
    quad = bench.growth(xs, [3.0 * x**2 for x in xs])
    assert quad["exponent"] == pytest.approx(2.0)
    line = bench.growth(xs, [0.5 + 0.01 * x for x in xs])
    assert line["slope"] == pytest.approx(0.01) and line["intercept"] == pytest.approx(0.5)
    assert 0 < line["exponent"] < 1  # an intercept bends the log-log slope below 1
