"""bench/vs_trl.py at a tiny size, so that the benchmark cannot rot (not timed): both sides train on the same
one-frame prompts (the TRL worker checks every prompt's tokens against ours), every completion has exactly
the asked number of new tokens on both, and the ratio is formed from the two runs' iteration times."""

from __future__ import annotations

import json

import pytest

from conftest import load_bench

pytestmark = pytest.mark.slow


def test_vs_trl_bench_runs(tmp_path, cache_dir):
    pytest.importorskip("trl", reason="the optional `bench` extra (make install installs it)")
    bench = load_bench("vs_trl")
    out = tmp_path / "vs_trl.json"
    paths = [
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir / 'data'}",
        f"paths.log_dir={tmp_path}",
    ]
    args = ["--size", "tiny", "--steps", "4", "--skip", "1", "--rounds", "1", "--new-tokens", "8"]
    result = bench.main([*args, "--out", str(out), *paths])
    assert json.loads(out.read_text()) == result
    (run,) = result["rounds"]
    for side in ("ours", "trl"):
        assert len(run[side]["iteration_s"]) == 2  # 4 steps: 3 intervals, the first skipped
        assert run[side]["completion_mean_length"] == 8.0  # min = max new tokens on both sides
    assert result["pooled"]["iterations_per_side"] == 2
    assert result["ours_vs_trl"] == pytest.approx(
        run["ours"]["median_iteration_s"] / run["trl"]["median_iteration_s"]
    )


def test_trl_rows_are_our_prompts(tiny, tmp_path):
    """The TRL side's dataset row of one of our items renders to exactly our prompt tokens and image grid;
    a prompt with more than one frame is refused (the bench compares one-frame prompts)."""
    pytest.importorskip("trl", reason="the optional `bench` extra (make install installs it)")
    from omegaconf import OmegaConf

    from conftest import write_square_video
    from visd_exp.data.datamodule import VideoQADataset
    from visd_exp.data.frames import plan_frames, probe_video

    bench = load_bench("vs_trl")
    _, processor = tiny
    video = write_square_video(tmp_path / "v.mp4")
    record = {
        "id": "q0",
        "task": "multiple_choice",
        "question": "What colour?",
        "answer": "A",
        "video_path": str(video),
    }
    items = []
    for frames in (1, 3):
        cfg = OmegaConf.create({"fps": frames / 8.0, "min_frames": frames, "max_frames": frames,
                                "min_pixels": 784, "max_pixels": 100352, "total_pixels": 401408})  # fmt: skip
        plan = plan_frames(probe_video(str(video)), cfg)
        items.append(VideoQADataset([record], [plan], processor)[0])
    rows = [bench.trl_row(items[0])]
    bench.check_same_prompts(processor, rows, [items[0]])  # raises on any difference
    rows[0]["prompt"][1]["content"][-1]["text"] += " Be brief."
    with pytest.raises(SystemExit, match="differ from ours"):
        bench.check_same_prompts(processor, rows, [items[0]])
    with pytest.raises(SystemExit, match="3 frames"):
        bench.trl_row(items[1])
