"""Validate data files before training: every problem, with file, line and field.

    python -m visd_exp.data.validate FILE [FILE ...] [--format F] [--video-root DIR]
        [--source-root SOURCE=DIR ...] [--lenient] [--max-problems 50] [--no-probe]

FILE is any format `visd_exp.data.formats` reads (the project's JSONL, STGR, Video-R1, V-STaR,
Charades-STA, TVGBench), detected from content unless --format names it. Strict (default): one line
per problem `file:line: field: what is wrong`, exit 1 when there is any. Lenient: the same lines as
warnings and "kept K of N records, skipped S", exit 0 (training drops the bad records). A missing
data file: exit 2. Videos are probed (header plus one decoded frame in the middle, to catch truncated
files) once per distinct path. Interval ends and key-frame times a little past the probed duration
are clipped and counted (record_checks.clip_to_duration); records a reader does not use (Video-R1's
images) are counted by reason. Image records (`image_path`, STGR's visual QA) have their image read.

    report = validate_file(path)                  # ValidationReport: .ok, .problems, .records
    records, report = load_valid_records(path)    # the good records (video/image_path resolved, `_where`)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visd_exp.data.formats import FORMATS, read_file
from visd_exp.data.formats.base import FieldError
from visd_exp.data.media import is_image_record, media_field
from visd_exp.data.probing import ProbeResult, cached_probe, probe, probe_all  # noqa: F401 (re-exported)
from visd_exp.data.record_checks import (  # noqa: F401 (option_letters re-exported)
    _resolve,
    check_record,
    clip_to_duration,
    known_duration,
    option_letters,
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass
class ValidationReport:
    """The outcome for one file: `problems` holds at most the cap, `omitted` counts the rest."""

    path: str
    total: int
    valid_lines: list[int]
    problems: list[Problem]
    truncated: bool
    omitted: int = 0
    format: str = "project"
    read: int = 0  # published records read (a V-STaR record gives five queries; images are not used)
    clipped: int = 0  # interval ends / key-frame times clipped to the probed duration
    unused: Counter = field(default_factory=Counter)  # records a reader does not use, by reason
    records: list[dict] = field(default_factory=list, repr=False)  # the valid records (with `_where`)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_problems(self) -> int:
        return len(self.problems) + self.omitted

    @property
    def skipped(self) -> int:
        """Records dropped for a problem (not counting `unused`)."""
        return self.total - len(self.records)


@dataclass
class _Collector:
    """Problems up to a cap (the rest only counted) and the entries that had any."""

    path: str
    cap: int
    problems: list[Problem] = field(default_factory=list)
    omitted: int = 0
    bad: set[int] = field(default_factory=set)

    def add(self, entry: int, line: int, where: str, message: str) -> None:
        self.bad.add(entry)
        if len(self.problems) < self.cap:
            self.problems.append(Problem(self.path, line, where, message))
        else:
            self.omitted += 1


def validate_records(
    entries: Sequence[tuple[int, Any]],
    path: str,
    base_dir: str | Path,
    probe_videos: bool = True,
    max_problems: int = 50,
    cache: dict[str, ProbeResult] | None = None,
) -> ValidationReport:
    """Check (line, record) entries of one file. In place of a record, a JSONDecodeError or a reader's
    FieldError is a problem. Several entries may share a line (a V-STaR record gives five queries)."""
    base_dir = Path(base_dir)
    if probe_videos:
        cache = {} if cache is None else cache
        for image in (False, True):  # videos, then image records' images (media.py)
            paths = []
            for _, r in entries:
                if isinstance(r, dict) and is_image_record(r) == image:
                    value = r.get(media_field(r))
                    if isinstance(value, str) and value.strip():
                        paths.append(_resolve(value, base_dir))
            probe_all(paths, cache, image)
    else:
        cache = None
    out = _Collector(path, max(0, max_problems))
    first_line_of: dict[str, int] = {}
    clipped = 0
    for k, (lineno, record) in enumerate(entries):
        if isinstance(record, json.JSONDecodeError):
            out.add(k, lineno, "<json>", f"{record.msg} at column {record.colno}")
            continue
        if isinstance(record, FieldError):
            out.add(k, lineno, record.field, record.message)
            continue
        if isinstance(record, dict):
            clipped += clip_to_duration(record, known_duration(record, base_dir, cache))
        for where, message in check_record(record, base_dir, cache):
            out.add(k, lineno, where, message)
        record_id = record.get("id") if isinstance(record, dict) else None
        if isinstance(record_id, str) and record_id.strip():
            if record_id in first_line_of:
                out.add(
                    k, lineno, "id", f"duplicate id {record_id!r} (first on line {first_line_of[record_id]})"
                )
            else:
                first_line_of[record_id] = lineno
    records = []
    for k, (lineno, record) in enumerate(entries):
        if k not in out.bad:
            field = media_field(record)
            records.append({**record, field: _resolve(record[field], base_dir), "_where": f"{path}:{lineno}"})
    bad_lines = {entries[k][0] for k in out.bad}
    valid = sorted({lineno for lineno, _ in entries} - bad_lines)
    return ValidationReport(
        path,
        len(entries),
        valid,
        out.problems,
        out.omitted > 0,
        out.omitted,
        clipped=clipped,
        records=records,
    )


def validate_file(
    path: str | Path,
    probe_videos: bool = True,
    max_problems: int = 50,
    cache: dict[str, ProbeResult] | None = None,
    fmt: str | None = None,
    video_root: str | Path | None = None,
    source_roots: Mapping[str, str] | None = None,
    options: Mapping[str, object] | None = None,
) -> ValidationReport:
    """Read one data file in any published format (formats.read_file) and validate its records;
    FileNotFoundError when it is missing. Pass `cache` to share probes."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():  # a folder: VideoMMMU's parquet tracks (formats/parquet.py)
        raise FileNotFoundError(f"{path}: data file not found")
    cache = {} if cache is None else cache
    probing = cached_probe(cache) if probe_videos else None
    loaded = read_file(path, fmt, video_root, source_roots, probing, options)
    report = validate_records(loaded.entries, str(path), path.parent, probe_videos, max_problems, cache)
    report.format, report.unused, report.read = loaded.format, loaded.skipped, loaded.read
    return report


def load_valid_records(
    path: str | Path, report: ValidationReport | None = None, **kwargs
) -> tuple[list[dict], ValidationReport]:
    """The valid records (video_path resolved, `_where` = file:line) and the report."""
    report = report if report is not None else validate_file(path, **kwargs)
    return report.records, report


class DataValidationError(ValueError):
    """Strict validation failed: the message lists every problem (up to the cap), one per line."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [str(p) for p in report.problems]
        if report.truncated:
            lines.append(f"... and {report.omitted} more")
        super().__init__(
            f"{report.path}: {report.num_problems} problem(s) in {report.total} records "
            "(data.validation=lenient skips bad records instead):\n" + "\n".join(lines)
        )


# ----------------------------------------------------------------------------- command line


def source_root_pairs(pairs: Sequence[str] | None) -> dict[str, str] | None:
    """`--source-root SOURCE=DIR` arguments (a bare NAME selects a named layout, e.g. open_o3_video)
    as one mapping; None when there are none. Later arguments override earlier ones."""
    from visd_exp.data.formats.base import source_roots_mapping

    if not pairs:
        return None
    mapping: dict[str, str] = {}
    for pair in pairs:
        source, sep, directory = pair.partition("=")
        if not sep:
            try:
                mapping.update(source_roots_mapping(pair) or {})
            except ValueError as exc:
                raise SystemExit(f"error: --source-root expects SOURCE=DIR or a layout name: {exc}") from None
            continue
        if not source or not directory:
            raise SystemExit(f"error: --source-root expects SOURCE=DIR, got {pair!r}")
        mapping[source] = directory
    return mapping


def add_reading_args(parser: argparse.ArgumentParser) -> None:
    """--format, --video-root, --source-root: shared by validate and convert."""
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="the file's format (default: detected)"
    )
    parser.add_argument(
        "--video-root",
        default=None,
        help="videos' paths are relative to this (default: the file's directory)",
    )
    parser.add_argument(
        "--source-root",
        action="append",
        metavar="SOURCE=DIR",
        help="STGR: the sub-directory of one `source` (repeat)",
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m visd_exp.data.validate", description="Check data files before training."
    )
    parser.add_argument("files", nargs="+", help="data files (any supported format)")
    add_reading_args(parser)
    parser.add_argument("--lenient", action="store_true", help="warn, keep the good records and exit 0")
    parser.add_argument("--max-problems", type=int, default=50, help="print at most this many problems")
    parser.add_argument("--no-probe", action="store_true", help="skip opening and decoding the videos")
    return parser.parse_args(argv)


def _print_problems(reports: Sequence[ValidationReport], cap: int, prefix: str) -> None:
    """At most `cap` problem lines over all files, then "... and N more"."""
    shown = 0
    for report in reports:
        for problem in report.problems:
            if shown < cap:
                print(f"{prefix}{problem}")
                shown += 1
    remaining = sum(r.num_problems for r in reports) - shown
    if remaining > 0:
        print(f"{prefix}... and {remaining} more")


def describe_extras(report: ValidationReport) -> list[str]:
    """The lines about what was read but not kept, or repaired: unused records by reason, clips."""
    lines = [f"{report.path}: not used: {n} {reason}" for reason, n in sorted(report.unused.items())]
    if report.clipped:
        lines.append(
            f"{report.path}: clipped {report.clipped} interval end(s) / key-frame time(s) to the video's duration"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        for f in missing:
            print(f"error: {f}: data file not found", file=sys.stderr)
        return 2
    cache: dict[str, ProbeResult] = {}  # shared: splits often point at the same videos
    cap = max(0, args.max_problems)
    try:
        roots = source_root_pairs(args.source_root)
        reports = [
            validate_file(f, not args.no_probe, cap, cache, args.format, args.video_root, roots)
            for f in args.files
        ]
    except (ValueError, FileNotFoundError) as exc:  # undetectable format, missing video root
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        for line in describe_extras(report):
            print(line)
    total = sum(r.total for r in reports)
    kept = sum(len(r.records) for r in reports)
    problems = sum(r.num_problems for r in reports)
    files = f"{len(reports)} file{'s' if len(reports) != 1 else ''}"
    videos = f", {len(cache)} videos probed" if not args.no_probe else ""
    if problems == 0:
        print(f"OK: {total} records in {files}{videos}")
        return 0
    _print_problems(reports, cap, "warning: " if args.lenient else "")
    if args.lenient:
        print(f"kept {kept} of {total} records, skipped {total - kept} ({problems} problems in {files})")
        return 0
    print(f"FAILED: {problems} problems in {total - kept} of {total} records ({files}{videos})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
