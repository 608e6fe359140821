"""Read the logged history of an offline wandb run (`<run>/wandb/offline-run-*/run-*.wandb`).

wandb 0.31 has no Python reader for its transaction log any more, but the format is small: a 7-byte
header (b":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of LevelDB-style records, each a 7-byte
header (crc32, little-endian uint16 length, type 1 full / 2 first / 3 middle / 4 last) and a chunk of
one serialized `wandb_internal_pb2.Record`. Checksums are not verified; a truncated tail (a run still
writing) ends the scan.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator[bytes]:
    """The payload of every record in a `.wandb` file, in order."""
    buf = Path(path).read_bytes()
    if buf[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(buf):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", buf[pos : pos + HEADER])
        pos += HEADER
        if kind == 0 or pos + length > len(buf):
            return
        chunk = buf[pos : pos + length]
        pos += length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_history(path: str | Path) -> list[dict]:
    """One dict per `history` record: metric name -> value (nested keys joined with '/')."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for payload in read_records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            try:
                row[key] = json.loads(item.value_json)
            except ValueError:
                continue
        rows.append(row)
    return rows
