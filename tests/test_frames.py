"""Frame sampling, decoding with torchcodec, pixel budgets, and errors that name the file."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT
from visd_exp.data.frames import (
    VideoDecodeError,
    VideoInfo,
    decode_frames,
    frame_pixels_cap,
    plan_frames,
    probe_video,
    sample_times,
    smart_resize,
)

DATA_CFG = OmegaConf.create(
    {
        "fps": 1.0,
        "min_frames": 4,
        "max_frames": 16,
        "min_pixels": 3136,
        "max_pixels": 100352,
        "image_max_pixels": 401408,
        "total_pixels": None,
    }
)
PER_FRAME = 128 * 28 * 28  # Open-o3-Video's VIDEO_MAX_PIXELS
HD = VideoInfo(duration=20.0, width=1920, height=1080, fps=30.0)


def test_sample_times_at_fps_and_clamped():
    assert sample_times(8.0, 1.0, 4, 16) == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
    # 2 fps over 20 s would be 40 frames: clamped to 16 spread over the whole video
    times = sample_times(20.0, 2.0, 4, 16)
    assert len(times) == 16 and times[0] == 0.0 and times[-1] < 20.0 and times[-1] > 18.0
    # too short: at least min_frames
    assert len(sample_times(2.0, 1.0, 4, 16)) == 4


def test_key_frames_are_merged_and_kept_when_capping():
    times = sample_times(8.0, 1.0, 4, 16, key_times=[2.5, 6.25])
    assert 2.5 in times and 6.25 in times and len(times) == 10
    capped = sample_times(8.0, 1.0, 4, 5, key_times=[2.5, 6.25])
    assert len(capped) == 5 and 2.5 in capped and 6.25 in capped


def test_smart_resize_multiple_of_28_and_budget():
    assert smart_resize(56, 56, 3136, 100352) == (56, 56)
    h, w = smart_resize(1080, 1920, 3136, 401408 // 16)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 401408 // 16
    assert abs(w / h - 1920 / 1080) < 0.2
    h, w = smart_resize(20, 20, 3136, 100352)  # too small: scaled up to the minimum
    assert h * w >= 3136


def test_decode_only_planned_frames(square_video):
    info = probe_video(square_video)
    assert info.duration == pytest.approx(8.0) and (info.width, info.height) == (56, 56)
    plan = plan_frames(info, DATA_CFG)
    frames = decode_frames(square_video, plan)
    assert frames.shape == (8, 3, 56, 56)
    red = frames[:, 0, 10:30, 10:30].float().mean(dim=(1, 2))
    visible = [bool(r > 200) for r in red]
    assert visible == [False, False, True, True, True, True, False, False]  # visible 2..5 s inclusive


def test_shipped_frame_defaults_are_open_o3_videos():
    """2 fps for real data, 4-16 frames, 128x28x28 per frame, 401,408 per image, no total budget."""
    synthetic = OmegaConf.load(PROJECT_ROOT / "conf/data/synthetic_easy.yaml")
    jsonl = OmegaConf.load(PROJECT_ROOT / "conf/data/jsonl.yaml")
    assert (synthetic.min_frames, synthetic.max_frames, synthetic.max_pixels) == (4, 16, PER_FRAME)
    assert synthetic.image_max_pixels == 401408 and synthetic.total_pixels is None
    assert jsonl.fps == 2.0


def test_sixteen_frames_each_get_the_full_per_frame_budget():
    """A 20 s 1080p video at 2 fps: 16 frames, each near 128x28x28 pixels (not a quarter of it)."""
    plan = plan_frames(HD, OmegaConf.merge(DATA_CFG, {"fps": 2.0}))
    assert len(plan.times) == 16
    pixels = plan.height * plan.width
    assert plan.height % 28 == 0 and plan.width % 28 == 0
    assert 0.85 * PER_FRAME <= pixels <= PER_FRAME
    assert abs(plan.width / plan.height - 16 / 9) < 0.1


def test_per_frame_cap_is_honoured_and_the_image_cap_binds_only_below_it():
    for max_pixels in (784 * 16, 50176, PER_FRAME):
        plan = plan_frames(HD, OmegaConf.merge(DATA_CFG, {"max_pixels": max_pixels}))
        assert plan.height * plan.width <= max_pixels
    # a per-frame budget above the per-image cap: the per-image cap wins
    cfg = OmegaConf.merge(DATA_CFG, {"max_pixels": 10**7})
    assert frame_pixels_cap(cfg, 16) == 401408
    plan = plan_frames(HD, cfg)
    assert 0.85 * 401408 <= plan.height * plan.width <= 401408
    # without an image cap only the per-frame budget counts
    assert frame_pixels_cap(OmegaConf.merge(DATA_CFG, {"image_max_pixels": None}), 16) == PER_FRAME


def test_total_budget_applies_only_when_set():
    fps2 = OmegaConf.merge(DATA_CFG, {"fps": 2.0})
    assert frame_pixels_cap(fps2, 16) == PER_FRAME  # off by default: frame count does not matter
    assert frame_pixels_cap(fps2, 4) == PER_FRAME
    budget = OmegaConf.merge(fps2, {"total_pixels": 401408})
    assert frame_pixels_cap(budget, 16) == 401408 // 16  # the old behaviour, now opt-in
    assert frame_pixels_cap(budget, 2) == PER_FRAME  # a share above the per-frame budget does not raise it
    plan = plan_frames(HD, budget)
    assert len(plan.times) * plan.height * plan.width <= 401408
    with pytest.raises(ValueError, match="data.total_pixels"):
        frame_pixels_cap(OmegaConf.merge(DATA_CFG, {"total_pixels": 0}), 16)


def test_total_pixel_budget_shrinks_frames(square_video):
    cfg = OmegaConf.merge(DATA_CFG, {"total_pixels": 8 * 28 * 28, "min_pixels": 784})
    plan = plan_frames(probe_video(square_video), cfg)
    assert (plan.height, plan.width) == (28, 28)
    assert decode_frames(square_video, plan).shape == (8, 3, 28, 28)


def test_missing_video_names_the_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError, match="nope.mp4: video file not found"):
        probe_video(path)


def test_corrupt_video_names_the_file(tmp_path, square_video):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(VideoDecodeError, match="broken.mp4: cannot read video"):
        probe_video(broken)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(square_video.read_bytes()[:600])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        plan = plan_frames(probe_video(truncated), DATA_CFG)
        decode_frames(truncated, plan)
