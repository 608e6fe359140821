"""Drawing and encoding for the synthetic data set: moving shapes as frames, frames as h264 mp4.

Kept apart from `synthetic.py` (which decides WHAT a video shows and writes the records) so that the
pixels are produced in one place and a test can reproduce a video's expected colours from a `Track`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# Named colours (RGB). Saturated and far apart so that they survive yuv420p chroma subsampling and
# can be told apart after compression; the names are what questions and answers use.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "cyan": (40, 205, 215),
    "magenta": (215, 50, 205),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
}
BACKGROUND: tuple[int, int, int] = (32, 32, 32)

# The encoder settings are part of the data format: x264 output depends on its thread count (its
# default is "auto" = per machine), so one thread keeps the bytes identical on every machine.
# "veryfast" encodes noisy backgrounds ~3x faster than x264's default at the same crf (quality).
ENCODER = {"codec": "libx264", "pixel_format": "yuv420p", "crf": 18, "preset": "veryfast", "threads": 1}

_EPS = 1e-6


@dataclass(frozen=True)
class Track:
    """One shape: visible on the frames whose time t satisfies start <= t <= end, moving linearly
    from top-left corner `xy0` (at `start`) to `xy1` (at `end`)."""

    colour: str
    shape: str
    size: int
    start: float
    end: float
    xy0: tuple[int, int]
    xy1: tuple[int, int]
    direction: str | None = None  # "left"/"right"/"up"/"down", None when static

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def visible(self, t: float) -> bool:
        return self.start - _EPS <= t <= self.end + _EPS

    def box(self, t: float) -> list[int]:
        """[x1, y1, x2, y2] in pixels at time t (x2, y2 exclusive, so x2 - x1 == size)."""
        frac = (
            0.0 if self.end <= self.start else min(1.0, max(0.0, (t - self.start) / (self.end - self.start)))
        )
        # floor(v + 0.5) rather than round(): Python's round() rounds halves to even, which would
        # make the path step unevenly.
        x = int(math.floor(self.xy0[0] + (self.xy1[0] - self.xy0[0]) * frac + 0.5))
        y = int(math.floor(self.xy0[1] + (self.xy1[1] - self.xy0[1]) * frac + 0.5))
        return [x, y, x + self.size, y + self.size]


@lru_cache(maxsize=64)
def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape filling its box."""
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        c = (np.arange(size) + 0.5) - size / 2
        return (c[:, None] ** 2 + c[None, :] ** 2) <= (size / 2) ** 2
    raise ValueError(f"unknown shape {shape!r}; known: square, circle")


def render_frames(
    tracks: Sequence[Track],
    frame_size: tuple[int, int],
    num_frames: int,
    fps: float,
    visibility: float,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Frames as uint8 (N, 3, H, W). Later tracks are drawn on top of earlier ones."""
    width, height = frame_size
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    frames[:] = BACKGROUND
    if noise > 0:  # grey per-pixel noise, fresh each frame, under the shapes
        grey = rng.standard_normal(size=(num_frames, height, width, 1), dtype=np.float32)
        grey *= noise
        frames += grey
    for track in tracks:
        colour = np.asarray(COLOURS[track.colour], dtype=np.float32)
        mask = _shape_mask(track.shape, track.size)
        for i in range(num_frames):
            t = i / fps
            if track.visible(t):
                _blend(frames[i], track.box(t), mask, colour, visibility)
    return np.clip(np.floor(frames + 0.5), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


def _blend(frame: np.ndarray, box: list[int], mask: np.ndarray, colour: np.ndarray, alpha: float) -> None:
    """Alpha-blend `colour` into `frame` (H, W, 3) where `mask` is set, clipped to the frame."""
    x1, y1, x2, y2 = box
    height, width = frame.shape[:2]
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx1 >= cx2 or cy1 >= cy2:
        return
    region = frame[cy1:cy2, cx1:cx2]
    m = mask[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]
    region[m] = (1.0 - alpha) * region[m] + alpha * colour


def encode_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    """Write uint8 (N, 3, H, W) frames as an h264/yuv420p mp4 with the fixed ENCODER settings."""
    import torch
    from torchcodec.encoders import VideoEncoder

    settings = dict(ENCODER)
    threads = settings.pop("threads")
    VideoEncoder(torch.from_numpy(np.ascontiguousarray(frames)), frame_rate=fps).to_file(
        str(path), **settings, extra_options={"threads": threads}
    )
