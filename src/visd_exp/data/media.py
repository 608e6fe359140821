"""Image records: a still image (`image_path`) in place of a video, shown as one frame.

STGR's spatial-grounding group (`visual QA` on gqa) is images. Such a record carries `image_path`
instead of `video_path` (exactly one of the two); the pipeline treats it as a video of one frame at
time 0 with duration 0, so plans, prompts, processor tensors, rollouts and rewards need no second path:
- probing reads the image (PIL, a declared dependency) fully, so a truncated file fails at set-up;
- the frame is resized, keeping its aspect ratio, to multiples of 28 within
  [data.image_record_min_pixels, min(data.image_record_max_pixels, data.image_max_pixels)]
  (Open-o3-Video's fetch_image: MIN_PIXELS 4 x 28 x 28 and MAX_PIXELS 256 x 28 x 28 for images);
- the prompt shows the image without timestamps (prompts.py);
- boxes of `image_size` pixels (the answer's, a reasoning_process's) are rescaled to the frame the model
  sees, as for video frames (rewards/groundtruth.py, sft.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visd_exp.data.frames import PATCH_FACTOR, FramePlan, VideoDecodeError, VideoInfo, smart_resize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _text(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def is_image_record(record: Mapping) -> bool:
    """A record whose visual input is one image: `image_path` set and no `video_path`."""
    return _text(record.get("image_path")) is not None and _text(record.get("video_path")) is None


def media_field(record: Mapping) -> str:
    """The name of the field holding the record's visual input: image_path or video_path."""
    return "image_path" if is_image_record(record) else "video_path"


def media_path(record: Mapping) -> str:
    """The path of the record's image or video."""
    return record[media_field(record)]


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # the whole file: a truncated image fails here, not mid-run
        return image.convert("RGB")


def probe_image(path: str | Path) -> VideoInfo:
    """The image's size as a zero-length VideoInfo; VideoDecodeError naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: image file not found")
    try:
        width, height = _open_rgb(path).size
    except Exception as exc:  # PIL raises OSError / UnidentifiedImageError / ValueError
        raise VideoDecodeError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    return VideoInfo(duration=0.0, width=int(width), height=int(height), fps=0.0)


def image_pixel_bounds(cfg) -> tuple[int, int]:
    """(min, max) pixels of an image record's frame under the `data` config; a null key falls back to
    the video frames' bound (min_pixels, image_max_pixels)."""
    low = cfg.get("image_record_min_pixels")
    low = int(cfg.min_pixels if low is None else low)
    caps = [cfg.get("image_record_max_pixels"), cfg.get("image_max_pixels"), cfg.get("total_pixels")]
    caps = [int(c) for c in caps if c is not None]
    for name in ("image_record_min_pixels", "image_record_max_pixels"):
        value = cfg.get(name)
        if value is not None and int(value) <= 0:
            raise ValueError(f"data.{name} must be positive or null, got {value!r}")
    high = max(PATCH_FACTOR**2, min(caps)) if caps else max(PATCH_FACTOR**2, int(cfg.max_pixels))
    return low, high


def plan_image(info: VideoInfo, cfg) -> FramePlan:
    """One frame at time 0 of a zero-length 'video', resized within the image pixel bounds."""
    low, high = image_pixel_bounds(cfg)
    h, w = smart_resize(info.height, info.width, low, high)
    return FramePlan(times=(0.0,), height=h, width=w, duration=0.0)


def decode_image(path: str | Path, plan: FramePlan) -> torch.Tensor:
    """The image resized to the plan: uint8 [1, 3, H, W], like decode_frames' output."""
    try:
        image = _open_rgb(Path(path))
    except Exception as exc:
        raise VideoDecodeError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    frame = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0)
    if frame.shape[-2:] != (plan.height, plan.width):
        resized = F.interpolate(
            frame.float(), size=(plan.height, plan.width), mode="bilinear", antialias=True
        )
        frame = resized.round().clamp(0, 255).to(torch.uint8)
    return frame


# ----------------------------------------------------------------------------- still images after a video
# A video record may carry `images`: still images shown after its frames (VideoMMMU's Adaptation image;
# data/formats/videommmu.py), each a path or a `data:image/...;base64,` URI. The plan gets one entry per
# still after the video's frames, at the video's duration (prompts.benchmark_messages shows the last
# prompt["images"] entries as bare images); each still is resized, keeping its aspect ratio, to fit the
# video frames' size and padded with black to it, so the sample's frames stay one [N, 3, H, W] tensor
# with the same vision tokens per frame.


def record_stills(record: Mapping) -> list[str]:
    """The still images a video record shows after its frames ([] for none)."""
    stills = record.get("images") or []
    if not isinstance(stills, list) or not all(_text(s) for s in stills):
        raise ValueError(
            f"{record.get('id')}: images: expected a list of paths or data: URIs, got {stills!r}"
        )
    return list(stills)


def with_stills(plan: FramePlan, record: Mapping) -> FramePlan:
    """The video's plan with one entry per still image appended."""
    stills = record_stills(record)
    if not stills:
        return plan
    return FramePlan(plan.times + (plan.duration,) * len(stills), plan.height, plan.width, plan.duration)


def _open_still(still: str):
    if still.startswith("data:"):
        import base64
        import io

        from PIL import Image

        try:
            data = base64.b64decode(still.split(",", 1)[1], validate=True)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image.convert("RGB")
        except Exception as exc:
            raise VideoDecodeError(f"a data: image cannot be read ({type(exc).__name__}: {exc})") from exc
    try:
        return _open_rgb(Path(still))
    except Exception as exc:
        raise VideoDecodeError(f"{still}: cannot read image ({type(exc).__name__}: {exc})") from exc


def decode_still(still: str, height: int, width: int) -> torch.Tensor:
    """One still image fitted into height x width (aspect kept, black padding): uint8 [1, 3, H, W]."""
    image = _open_still(still)
    frame = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0)
    h, w = frame.shape[-2:]
    scale = min(height / h, width / w)
    nh, nw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    if (nh, nw) != (h, w):
        frame = F.interpolate(frame.float(), size=(nh, nw), mode="bilinear", antialias=True)
        frame = frame.round().clamp(0, 255).to(torch.uint8)
    out = torch.zeros(1, 3, height, width, dtype=torch.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[:, :, top : top + nh, left : left + nw] = frame
    return out


def decode_video_with_stills(record: Mapping, plan: FramePlan, decode_video) -> torch.Tensor:
    """The planned video frames (`decode_video(path, plan)`), then the record's still images."""
    stills = record_stills(record)
    if not stills:
        return decode_video(record["video_path"], plan)
    video_plan = FramePlan(
        plan.times[: len(plan.times) - len(stills)], plan.height, plan.width, plan.duration
    )
    frames = decode_video(record["video_path"], video_plan)
    return torch.cat([frames, *(decode_still(s, plan.height, plan.width) for s in stills)])
