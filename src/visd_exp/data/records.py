"""Reading JSONL records (docs/DATA.md) with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

REQUIRED_FIELDS = ("id", "task", "video_path", "question", "answer")


class RecordError(ValueError):
    """A malformed record: the message is `file:line: field: what is wrong`."""


def load_records(path: str | Path) -> list[dict]:
    """Records of a JSONL file; `video_path` resolved against the file's directory; `_where` = file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{where}: <json>: {exc.msg} at column {exc.colno}") from None
            if not isinstance(record, dict):
                raise RecordError(f"{where}: <record>: expected a JSON object, got {type(record).__name__}")
            for field in REQUIRED_FIELDS:
                if not isinstance(record.get(field), str) or not record[field].strip():
                    raise RecordError(f"{where}: {field}: missing or not a non-empty string")
            video = Path(record["video_path"])
            record["video_path"] = str(video if video.is_absolute() else (path.parent / video))
            record["_where"] = where
            records.append(record)
    return records
