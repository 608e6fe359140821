"""The judge interface: items, the protocol the training loop calls, evidence and metrics helpers."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: the keys every judge reports from ``pop_metrics``
METRIC_KEYS = (
    "judge/calls",
    "judge/cache_hits",
    "judge/fallback_rate",
    "judge/latency_p50",
    "judge/latency_p95",
)


class JudgeError(RuntimeError):
    """The judge cannot work as configured; raised to stop the run rather than train without feedback.

    Raised at construction (a required API key variable is unset) or out of ``judge_batch`` (a client
    error that will repeat, or too many fallbacks). Messages name the cause, never a secret.
    """


@dataclass(frozen=True)
class JudgeItem:
    """One student rollout to diagnose, with the hidden reference the judge may see."""

    task: str
    question: str
    standard_answer: str
    # {"segment": [s, e] | None, "key_frames": [{"time": t, "objects": {name: [[x1,y1,x2,y2], ...]}}]} | None
    evidence: Mapping | None
    completion: str
    sample: Mapping | None = None


@runtime_checkable
class Judge(Protocol):
    #: whether the training step should overlap a call with its update (a remote judge's latency); a judge
    #: without the attribute is treated as remote
    overlap: bool

    def judge_batch(self, items: Sequence[JudgeItem]) -> list[str | None]:
        """One feedback string per item; None means the judge fell back for that item."""
        ...

    def pop_metrics(self) -> dict[str, float]:
        """Counters and latency percentiles accumulated since the previous pop."""
        ...

    def close(self) -> None: ...


def box_scale(sample: Mapping) -> tuple[float, float]:
    # Student boxes are in pixels of the resized frame the model saw (frame_size); ground truth is
    # in image_size pixels. The judge compares the two, so the evidence is put in the student's frame.
    image_size, frame_size = sample.get("image_size"), sample.get("frame_size")
    if not image_size or not frame_size:
        return 1.0, 1.0
    try:
        return float(frame_size[0]) / float(image_size[0]), float(frame_size[1]) / float(image_size[1])
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return 1.0, 1.0


def evidence_from_sample(sample: Mapping) -> dict | None:
    """Build ``JudgeItem.evidence`` from a data record (see docs/DATA.md).

    Key frames are sorted by time and carry the boxes of ``key_items[str(idx)]`` (empty when the frame
    has none), scaled to ``frame_size`` when the record has one. None when there is neither a segment
    nor a key frame.
    """
    segment = sample.get("segment")
    if segment is not None:
        segment = [round(float(segment[0]), 3), round(float(segment[1]), 3)]
    sx, sy = box_scale(sample)
    key_items = sample.get("key_items") or {}
    frames = []
    for kf in sample.get("key_frames") or []:
        idx = kf.get("idx")
        objects = key_items.get(str(idx), key_items.get(idx)) or {}
        scaled = {
            str(name): [
                [round(b[0] * sx, 1), round(b[1] * sy, 1), round(b[2] * sx, 1), round(b[3] * sy, 1)]
                for b in boxes
            ]
            for name, boxes in objects.items()
        }
        frames.append({"time": round(float(kf["time"]), 3), "objects": scaled})
    frames.sort(key=lambda f: f["time"])
    if segment is None and not frames:
        return None
    return {"segment": segment, "key_frames": frames}


def _percentile(sorted_values: list[float], q: float) -> float:
    # Nearest-rank percentile: deterministic and needs no numpy.
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class JudgeMetrics:
    """Thread-safe counters behind ``pop_metrics``.

    Definitions (identical for every judge):
      judge/calls         items sent to the backend (cache hits excluded), i.e. judged items
      judge/cache_hits    items answered from the on-disk cache
      judge/fallback_rate fallbacks / all items requested (cache hits included); 0.0 with no items
      judge/latency_p50   median seconds per backend-judged item, retries and backoff included
      judge/latency_p95   95th percentile of the same; 0.0 with no backend-judged items
    Extras: judge/items (all requested items), judge/requests (HTTP attempts), judge/retries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.items = 0
        self.calls = 0
        self.cache_hits = 0
        self.fallbacks = 0
        self.requests = 0
        self.retries = 0
        self.latencies: list[float] = []

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def add_latency(self, seconds: float) -> None:
        with self._lock:
            self.latencies.append(seconds)

    def pop(self, http: bool = False) -> dict[str, float]:
        with self._lock:
            lat = sorted(self.latencies)
            out = {
                "judge/calls": float(self.calls),
                "judge/cache_hits": float(self.cache_hits),
                "judge/fallback_rate": self.fallbacks / self.items if self.items else 0.0,
                "judge/latency_p50": _percentile(lat, 0.50),
                "judge/latency_p95": _percentile(lat, 0.95),
                "judge/items": float(self.items),
            }
            if http:
                out["judge/requests"] = float(self.requests)
                out["judge/retries"] = float(self.retries)
            self._reset()
        return out


class FallbackGuard:
    """Stops a run whose judge keeps falling back (``judge.max_fallback_rate`` over ``judge.fallback_window``).

    Every requested item (cache hits included) is one outcome in a sliding window of the last ``window``
    items. The rate is only checked once the window is full, so a few early failures (one bad first
    batch) cannot stop a run; after that, more than ``max_rate`` fallbacks in the window does.
    ``max_rate`` None disables the guard.
    """

    def __init__(self, max_rate: float | None, window: int) -> None:
        if max_rate is not None and not 0.0 <= float(max_rate) <= 1.0:
            raise ValueError(f"judge.max_fallback_rate must be in [0, 1] or null, got {max_rate!r}")
        if int(window) < 1:
            raise ValueError(f"judge.fallback_window must be >= 1, got {window!r}")
        self.max_rate = None if max_rate is None else float(max_rate)
        self.window = int(window)
        self._outcomes: deque[bool] = deque(maxlen=self.window)
        self._lock = threading.Lock()

    def observe(self, fell_back: Sequence[bool]) -> None:
        with self._lock:
            self._outcomes.extend(bool(f) for f in fell_back)

    def exceeded(self) -> tuple[int, int] | None:
        """(fallbacks, window) when the full window's fallback rate is above the limit, else None."""
        with self._lock:
            if self.max_rate is None or len(self._outcomes) < self.window:
                return None
            fallbacks = sum(self._outcomes)
        return (fallbacks, self.window) if fallbacks > self.max_rate * self.window else None
