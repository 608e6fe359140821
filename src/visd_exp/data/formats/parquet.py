"""Parquet data files (VideoMMMU's tracks; Video-MME publishes parquet too): rows as plain Python values.

is_parquet(path)     # a .parquet file, or a folder holding .parquet files (VideoMMMU's three tracks)
detect(path)         # the format from the column names (COLUMNS), ValueError naming them otherwise
iter_rows(path)      # (row number from 1 within its file, {column: value, "_file": file relative to path})
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: format -> the columns that identify it (all must be present)
COLUMNS: dict[str, frozenset[str]] = {
    "videommmu": frozenset({"id", "question", "options", "answer", "question_type"}),
    "videomme": frozenset({"videoID", "duration", "domain", "task_type", "question", "options", "answer"}),
    "videomme_v2": frozenset({"video_id", "group_type", "group_structure", "question", "options", "answer"}),
    "longvideo_reason": frozenset({"problem", "videos", "answer"}),
}


def files(path: str | Path) -> list[Path]:
    """The parquet files of `path`: itself, or every .parquet under a folder in sorted order."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if p.is_file())
    return [path] if path.suffix.lower() == ".parquet" else []


def is_parquet(path: str | Path) -> bool:
    return bool(files(path))


def columns(path: str | Path) -> set[str]:
    import pyarrow.parquet as pq

    found: set[str] = set()
    for file in files(path):
        found |= set(pq.read_schema(file).names)
    return found


def detect(path: str | Path) -> str:
    names = columns(path)
    for fmt, needed in COLUMNS.items():
        if needed <= names:
            return fmt
    raise ValueError(f"{path}: a parquet file with columns {sorted(names)} fits no known format")


def _plain(value: Any) -> Any:
    """numpy arrays (list columns) -> lists, numpy scalars -> Python, recursively."""
    if hasattr(value, "tolist") and not isinstance(value, bytes | str):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    path = Path(path)
    for file in files(path):
        relative = file.name if file == path else str(file.relative_to(path))
        table = pq.read_table(file)
        for n, row in enumerate(table.to_pylist(), start=1):
            yield n, {**{k: _plain(v) for k, v in row.items()}, "_file": relative, "_path": str(file)}
