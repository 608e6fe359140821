"""Which frames to show the model, decoding only those with torchcodec, and the pixel budget.

Frame sampling follows Open-o3-Video / VISD: `fps` frames per second, clamped to [min_frames,
max_frames] (spread uniformly when clamped), key frames merged in for spatio-temporal tasks; each frame
resized to a multiple of 28 (patch 14 x merge 2) within [min_pixels, frame_pixels_cap(...)]:

- `max_pixels`: the per-frame budget (Open-o3-Video: 128 x 28 x 28 = 100,352 for every video frame);
- `image_max_pixels`: the cap on any one image the processor sees (Open-o3-Video's `--max_pixels
  401408`, the paper's "training pixel budget"); frames are images here, so it caps them too;
- `total_pixels`: an optional budget over all frames of a sample together (null = off, the default;
  Open-o3-Video's own total is about 90 M pixels, which never binds at 16 frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

PATCH_FACTOR = 28  # Qwen2.5-VL: 14 px patches merged 2x2 -> one vision token per 28x28 pixels


class VideoDecodeError(RuntimeError):
    """A video that is missing or cannot be decoded; the message names the file."""


@dataclass(frozen=True)
class FramePlan:
    """The frames of one sample: times (s), resized (height, width), and the video's duration."""

    times: tuple[float, ...]
    height: int
    width: int
    duration: float

    @property
    def frame_size(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True)
class VideoInfo:
    duration: float
    width: int
    height: int
    fps: float


def probe_video(path: str | Path) -> VideoInfo:
    """Open the container and read its header; a clear error naming the file on any failure."""
    from torchcodec.decoders import VideoDecoder

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: video file not found")
    try:
        meta = VideoDecoder(str(path), seek_mode="approximate").metadata
        duration = meta.duration_seconds
        if duration is None or not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"no usable duration ({duration})")
        return VideoInfo(float(duration), int(meta.width), int(meta.height), float(meta.average_fps or 0.0))
    except VideoDecodeError:
        raise
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with decoder internals
        raise VideoDecodeError(f"{path}: cannot read video ({type(exc).__name__}: {exc})") from exc


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = PATCH_FACTOR):
    """Round (height, width) to multiples of `factor`, keeping the aspect ratio, within pixel bounds."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


def sample_times(
    duration: float, fps: float, min_frames: int, max_frames: int, key_times: Sequence[float] = ()
) -> tuple[float, ...]:
    """Frame times at `fps` from t=0, clamped in count; key-frame times merged in (kept when capping)."""
    natural = int(math.floor(duration * fps + 1e-6))
    n = max(min_frames, min(max_frames, natural))
    step = 1.0 / fps if n == natural else duration / n  # clamped: spread n frames over the whole video
    times = [round(i * step, 3) for i in range(n)]
    keys = sorted({round(float(t), 3) for t in key_times if 0.0 <= t < duration})
    merged = sorted(set(times) | set(keys))
    if len(merged) > max_frames:  # keep every key frame, drop the regular frames nearest to a kept one
        regular = [t for t in times if t not in keys]
        keep = max(0, max_frames - len(keys))
        idx = (
            [round(i * (len(regular) - 1) / max(1, keep - 1)) for i in range(keep)]
            if keep > 1
            else [0][:keep]
        )
        merged = sorted(set(keys) | {regular[i] for i in idx})
    return tuple(t for t in merged if t < duration)


def frame_pixels_cap(cfg, num_frames: int) -> int:
    """Most pixels one frame may have: the per-frame budget, the per-image cap and, only when
    `total_pixels` is set, an equal share of that budget over `num_frames` frames."""
    caps = {"max_pixels": cfg.max_pixels, "image_max_pixels": cfg.get("image_max_pixels")}
    total = cfg.get("total_pixels")
    if total is not None:
        caps["total_pixels"] = total // max(1, num_frames)
    for name, value in caps.items():
        if value is not None and int(value) <= 0:
            raise ValueError(f"data.{name} must be positive or null, got {value!r}")
    return max(PATCH_FACTOR**2, min(int(v) for v in caps.values() if v is not None))


def plan_frames(info: VideoInfo, cfg, key_times: Sequence[float] = ()) -> FramePlan:
    """The FramePlan for one video under the `data` config's sampling and pixel budgets."""
    times = sample_times(info.duration, cfg.fps, cfg.min_frames, cfg.max_frames, key_times)
    h, w = smart_resize(info.height, info.width, cfg.min_pixels, frame_pixels_cap(cfg, len(times)))
    return FramePlan(times=times, height=h, width=w, duration=info.duration)


def decode_frames(path: str | Path, plan: FramePlan) -> torch.Tensor:
    """Decode only the planned frames and resize them: uint8 [N, 3, H, W]."""
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(str(path), seek_mode="approximate")
        # A time at the very end may fall past the last frame's pts: clamp inside the stream.
        last = max(0.0, plan.duration - 1e-3)
        frames = decoder.get_frames_played_at(seconds=[min(t, last) for t in plan.times]).data
    except Exception as exc:
        raise VideoDecodeError(f"{path}: cannot decode frames at {list(plan.times)} ({exc})") from exc
    if frames.shape[-2:] != (plan.height, plan.width):
        resized = F.interpolate(
            frames.float(), size=(plan.height, plan.width), mode="bilinear", antialias=True
        )
        frames = resized.round().clamp(0, 255).to(torch.uint8)
    return frames
