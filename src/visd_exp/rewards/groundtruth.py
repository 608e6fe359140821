"""Read the supervision a verifier needs out of a data record (docs/DATA.md), defensively.

Missing or malformed optional fields become "no supervision" (None / empty), which masks the
components that need them (the paper's K(x), Eq. 10). Ground-truth boxes are rescaled from
`image_size` pixels to `frame_size` pixels (the frame the model saw); without `frame_size` they stay in
`image_size` pixels, and without `image_size` they are used as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class KeyFrame:
    time: float
    objects: tuple[tuple[str, tuple[Box, ...]], ...]  # (object name, its GT boxes in frame_size pixels)


@dataclass(frozen=True)
class GroundTruth:
    task: str
    answer: str | None
    options: tuple[str, ...]
    segment: tuple[float, float] | None  # valid interval, start <= end
    key_times: tuple[float, ...]  # every key-frame time (Eq. 12)
    key_frames: tuple[KeyFrame, ...]  # key frames that have boxes and a known time (Eq. 13, ans_spa)
    duration: float | None


def _finite(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _pair(x: Any) -> tuple[float, float] | None:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__") or len(x) != 2:
        return None
    a, b = _finite(x[0]), _finite(x[1])
    return None if a is None or b is None else (a, b)


def _box(x: Any, sx: float, sy: float) -> Box | None:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__") or len(x) != 4:
        return None
    v = [_finite(c) for c in x]
    if any(c is None for c in v):
        return None
    return (v[0] * sx, v[1] * sy, v[2] * sx, v[3] * sy)  # type: ignore[operator]


def _int(x: Any) -> int | None:
    try:
        return int(str(x).strip())
    except (TypeError, ValueError):
        return None


def _scale(sample: Mapping) -> tuple[float, float]:
    image, frame = _pair(sample.get("image_size")), _pair(sample.get("frame_size"))
    if image is None or frame is None or image[0] <= 0 or image[1] <= 0:
        return 1.0, 1.0
    return frame[0] / image[0], frame[1] / image[1]


def _key_frame_times(sample: Mapping) -> dict[int, float]:
    times: dict[int, float] = {}
    frames = sample.get("key_frames")
    if not isinstance(frames, (list, tuple)):
        return times
    for kf in frames:
        if isinstance(kf, Mapping):
            idx, t = _int(kf.get("idx")), _finite(kf.get("time"))
            if idx is not None and t is not None:
                times[idx] = t
    return times


def _key_frames(sample: Mapping, times: dict[int, float]) -> tuple[KeyFrame, ...]:
    items = sample.get("key_items")
    if not isinstance(items, Mapping):
        return ()
    sx, sy = _scale(sample)
    out = []
    for key, objects in items.items():
        t = times.get(_int(key))  # type: ignore[arg-type]
        if t is None or not isinstance(objects, Mapping):
            continue
        objs = []
        for name, boxes in objects.items():
            if not isinstance(boxes, (list, tuple)):
                continue
            if len(boxes) == 4 and all(_finite(c) is not None for c in boxes):
                boxes = [boxes]  # a single box written without the outer list
            valid = tuple(b for b in (_box(b, sx, sy) for b in boxes) if b is not None)
            if valid:
                objs.append((str(name), valid))
        if objs:
            out.append(KeyFrame(t, tuple(objs)))
    return tuple(sorted(out, key=lambda kf: kf.time))


def ground_truth(sample: Mapping) -> GroundTruth:
    """Everything the reward components need from one record."""
    if not isinstance(sample, Mapping):
        sample = {}
    segment = _pair(sample.get("segment"))
    if segment is not None and segment[1] < segment[0]:
        segment = None
    times = _key_frame_times(sample)
    options = sample.get("options")
    answer = sample.get("answer")
    duration = _finite(sample.get("duration"))
    return GroundTruth(
        task=str(sample.get("task") or ""),
        answer=None if answer is None else str(answer),
        options=tuple(str(o) for o in options) if isinstance(options, (list, tuple)) else (),
        segment=segment,
        key_times=tuple(sorted(times.values())),
        key_frames=_key_frames(sample, times),
        duration=duration if duration is not None and duration > 0 else None,
    )
