"""Reading records without validation (data.validation=off), with errors that name the file and line.

Any format `visd_exp.data.formats` reads; only the required fields are checked here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from visd_exp.data.formats import read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.data.media import media_field
from visd_exp.data.probing import cached_probe

REQUIRED_FIELDS = ("id", "task", "question", "answer")  # and video_path or image_path (media.py)


class RecordError(ValueError):
    """A malformed record: the message is `file:line: field: what is wrong`."""


def load_records(
    path: str | Path,
    fmt: str | None = None,
    video_root: str | Path | None = None,
    source_roots: Mapping[str, str] | None = None,
    options: Mapping[str, object] | None = None,
) -> list[dict]:
    """Records of a data file; `video_path` / `image_path` resolved (video_root, else the file's directory);
    `_where` = file:line."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():  # a folder: VideoMMMU's parquet tracks (formats/parquet.py)
        raise FileNotFoundError(f"{path}: data file not found")
    loaded = read_file(path, fmt, video_root, source_roots, cached_probe({}), options)
    records = []
    for lineno, record in loaded.entries:
        where = f"{path}:{lineno}"
        if isinstance(record, json.JSONDecodeError):
            raise RecordError(f"{where}: <json>: {record.msg} at column {record.colno}")
        if isinstance(record, FieldError):
            raise RecordError(f"{where}: {record.field}: {record.message}")
        if not isinstance(record, dict):
            raise RecordError(f"{where}: <record>: expected a JSON object, got {type(record).__name__}")
        for field in (*REQUIRED_FIELDS, media_field(record)):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise RecordError(f"{where}: {field}: missing or not a non-empty string")
        records.append({**record, "_where": where})
    return records
