"""bench/decode.py at a tiny size, so that the benchmark cannot rot (not timed): both methods return the
same planned frames of a real h264 file."""

from __future__ import annotations

import json

from conftest import load_bench


def test_decode_bench_runs_and_both_methods_agree(tmp_path):
    bench = load_bench("decode")
    out = tmp_path / "decode.json"
    result = bench.main(
        ["--seconds", "3", "--size", "64x48", "--fps", "10", "--gop", "10", "--frames", "6", "--repeats", "1",
         "--cache", str(tmp_path / "cache"), "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == result
    # 6 frames spread over 3 s: 0.0, 0.5, ... 2.5 (sample_times), decoded to the same pixels both ways
    assert result["times_planned"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] and result["frames"] == 6
    assert result["max_pixel_difference_seek_vs_decode_all"] == 0
    assert len(result["seconds"]["seek"]) == len(result["seconds"]["decode_all"]) == 1
    assert result["speedup_seek_over_decode_all"] > 0
