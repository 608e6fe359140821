"""Frame sampling, decoding with torchcodec, pixel budgets, and errors that name the file."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from visd_exp.data.frames import (
    VideoDecodeError,
    decode_frames,
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
        "total_pixels": 401408,
    }
)


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
