"""On-disk feedback cache: one JSON file per key, two-level fan-out, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def cache_key(model: str, messages: Sequence[dict]) -> str:
    """sha256 of (model, messages); nothing else (no key, no URL) goes into it."""
    payload = json.dumps({"model": model, "messages": list(messages)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class FeedbackCache:
    """Maps a cache key to a feedback string under ``root/ab/cd/<key>.json``.

    Only validated feedback is stored, so a rerun retries earlier fallbacks. Unreadable or corrupt
    files count as misses: a half-written file can never poison a run because writes are atomic.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            with open(self.path(key), encoding="utf-8") as f:
                feedback = json.load(f).get("feedback")
        except (OSError, ValueError, AttributeError):
            return None
        return feedback if isinstance(feedback, str) and feedback.strip() else None

    def put(self, key: str, feedback: str, model: str) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"model": model, "feedback": feedback}, f, ensure_ascii=False)
                os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the new one
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a cache that cannot be written only costs money on the next run; never fail a step
