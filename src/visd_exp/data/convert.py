"""Convert a published data file into the project's JSONL schema (docs/DATA.md).

    python -m visd_exp.data.convert STGR-RL.json --out stgr_rl.jsonl --video-root /data/stgr \
        [--format stgr] [--source-root timerft=timerft/videos ...] [--max-problems 50] [--no-probe]

Reads with `visd_exp.data.formats` (format detected unless --format), validates every record exactly
as training does, writes the valid ones (video paths absolute) and prints what it read, wrote and
skipped, and why: one `file:line: field: what` line per problem, the records a reader does not use
(images) by reason, and how many intervals were clipped to their video's duration. Exit 0 when at
least one record was written, 1 when none, 2 for a missing file or an unreadable format. Training,
validation and evaluation read the published files directly too; converting once saves the probing
and conversion at every start and gives a file to inspect.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from visd_exp.data.probing import ProbeResult
from visd_exp.data.validate import add_reading_args, describe_extras, source_root_pairs, validate_file


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m visd_exp.data.convert",
        description="Write a published data file in the project schema.",
    )
    parser.add_argument(
        "input", help="the published file (STGR, Video-R1, V-STaR, Charades-STA, TVGBench, ...)"
    )
    parser.add_argument("--out", required=True, help="the JSONL to write")
    add_reading_args(parser)
    parser.add_argument("--max-problems", type=int, default=50, help="print at most this many problems")
    parser.add_argument(
        "--no-probe", action="store_true", help="skip opening the videos (no duration checks)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    source = Path(args.input)
    if not source.is_file():
        print(f"error: {source}: data file not found", file=sys.stderr)
        return 2
    cache: dict[str, ProbeResult] = {}
    try:
        report = validate_file(
            source,
            probe_videos=not args.no_probe,
            max_problems=max(0, args.max_problems),
            cache=cache,
            fmt=args.format,
            video_root=args.video_root,
            source_roots=source_root_pairs(args.source_root),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in report.records:
            handle.write(
                json.dumps({k: v for k, v in record.items() if k != "_where"}, ensure_ascii=False) + "\n"
            )
    tmp.replace(out)  # never a half-written file under the final name

    unused = sum(report.unused.values())
    print(f"read {source} as {report.format}: {report.read} records -> {report.total} queries")
    for problem in report.problems:
        print(f"skipped: {problem}")
    if report.truncated:
        print(f"skipped: ... and {report.omitted} more")
    for line in describe_extras(report):
        print(line)
    print(
        f"wrote {len(report.records)} records to {out}; skipped {report.skipped} with problems, "
        f"{unused} not used" + (f"; {len(cache)} videos probed" if not args.no_probe else "")
    )
    return 0 if report.records else 1


if __name__ == "__main__":
    sys.exit(main())
