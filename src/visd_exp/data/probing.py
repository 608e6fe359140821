"""Probing videos before training: the header, plus one decoded frame in the middle (truncated files
fail there), once per distinct path; shared by validation, the readers and the data module. Images
(image records, data/media.py) are read whole."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from visd_exp.data.frames import VideoDecodeError, VideoInfo
from visd_exp.data.media import is_image_path, probe_image

PROGRESS_MIN_VIDEOS = 20  # below this a progress bar is only noise


@dataclass(frozen=True)
class ProbeResult:
    """A probed video: its info, or why it cannot be used."""

    info: VideoInfo | None
    error: str | None


def probe(path: str | Path, image: bool | None = None) -> ProbeResult:
    """Header in approximate seek mode plus ONE decoded frame in the middle (truncated files fail there).
    An image (`image`, or by default an image suffix: media.py) is read whole instead, duration 0."""
    path = Path(path)
    if image or (image is None and is_image_path(path)):
        try:
            return ProbeResult(probe_image(path), None)
        except VideoDecodeError as exc:
            return ProbeResult(None, str(exc))
    from torchcodec.decoders import VideoDecoder

    if not path.is_file():
        return ProbeResult(None, f"video file not found: {path}")
    try:
        decoder = VideoDecoder(str(path), seek_mode="approximate")
        meta = decoder.metadata
        duration = meta.duration_seconds
        if duration is None or not math.isfinite(duration) or duration <= 0:
            return ProbeResult(None, f"video has no usable duration ({duration}): {path}")
        decoder.get_frame_played_at(duration / 2)
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError/IndexError with internals
        return ProbeResult(None, f"cannot decode video {path}: {_short_error(exc)}")
    info = VideoInfo(float(duration), int(meta.width), int(meta.height), float(meta.average_fps or 0.0))
    return ProbeResult(info, None)


def _short_error(exc: Exception) -> str:
    # Drop torchcodec's "Decoder, /path/to/file.cpp:52, " prefix: the C++ location helps nobody here.
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return f"{type(exc).__name__}: {text[:200]}"


def probe_all(paths: Iterable[str], cache: dict[str, ProbeResult], image: bool | None = None) -> None:
    """Probe each path not yet in `cache` (`image`: as probe's); a tqdm bar when there are many."""
    todo = sorted(set(paths) - set(cache))
    if len(todo) > PROGRESS_MIN_VIDEOS:
        from tqdm import tqdm

        todo = tqdm(todo, desc="probing videos", unit="video", file=sys.stderr)
    for path in todo:
        cache[path] = probe(path, image)


def cached_probe(cache: dict[str, ProbeResult]):
    """probe(path) through `cache` (path -> ProbeResult): what the readers call for frame sizes."""

    def get(path: str) -> ProbeResult:
        if path not in cache:
            cache[path] = probe(path)
        return cache[path]

    return get
