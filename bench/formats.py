"""Benchmark reading a published file at its real size: an STGR-RL-shaped JSON array (STGR-RL holds
tens of thousands of records over far fewer videos) read, converted and validated as training does.

Writes small real mp4s (`--videos`, default 200) and a JSON array of `--n` records (default 30,000)
over them, mixing the five video task strings with image records and normalised key_items, then times
  read      formats.read_file without probing (detection + conversion of every record),
  validate  validate_file as training runs it (probe each distinct video once, convert, check).
Writes bench/results/formats.json.

    .venv/bin/python bench/formats.py [--n 30000] [--videos 200] [--seed 0]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def write_video(path: Path) -> None:
    import torch
    from torchcodec.encoders import VideoEncoder

    frames = torch.zeros(16, 3, 48, 64, dtype=torch.uint8)
    frames[:, 0, 10:26, 20:36] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=4).to_file(str(path), codec="libx264", pixel_format="yuv420p", crf=30)


def record(rng: random.Random, k: int, videos: int) -> dict:
    base = {"id": k, "source": "timerft", "video_path": f"v/{rng.randrange(videos)}.mp4", "question": "Q?"}
    kind = rng.randrange(6)
    if kind == 0:
        return {**base, "task": "temporal QA", "answer": "[0.5, 3.0]"}
    if kind == 1:
        return {
            **base,
            "task": "temporal QA (MCQ)",
            "question": "Q?\nA. a\nB. b\nC. c",
            "answer": "B\n[0.5, 3.0]",
        }
    if kind == 2:
        return {
            **base,
            "source": "STR_plm_rdcap",
            "task": "temporal-spatial free-form QA",
            "answer": "a red square",
            "key_frames": [
                {"idx": 4, "time": 1.0, "path": "kf.jpg"},
                {"idx": 8, "time": 2.0, "path": "kf.jpg"},
            ],
            "key_items": {
                "4": {"red square": [[0.3, 0.2, 0.55, 0.54]]},
                "8": {"red square": [[0.3, 0.2, 0.55, 0.54]]},
            },
        }
    if kind == 3:
        return {**base, "task": "General video QA MCQ", "question": "Q?\nA. left\nB. right", "answer": "A"}
    if kind == 4:
        return {**base, "task": "General video QA Free-form", "answer": "a red square on black"}
    return {"id": k, "source": "gqa", "task": "visual QA", "image_path": "g.jpg", "question": "Q?",
            "answer": "<obj>cup</obj><box>[1,2,3,4]</box>", "image_size": [640, 480]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "formats.json")
    args = ap.parse_args()

    from visd_exp.data.formats import read_file
    from visd_exp.data.validate import validate_file

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for v in range(args.videos):
            write_video(root / "v" / f"{v}.mp4")
        path = root / "STGR-RL.json"
        path.write_text(json.dumps([record(rng, k, args.videos) for k in range(args.n)], indent=2))
        size_mb = path.stat().st_size / 2**20

        start = time.perf_counter()
        loaded = read_file(path)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        report = validate_file(path)
        validate_s = time.perf_counter() - start

    result = {
        "records": args.n,
        "videos": args.videos,
        "file_mib": round(size_mb, 1),
        "format": loaded.format,
        "queries": len(loaded.entries),
        "unused": sum(loaded.skipped.values()),
        "read_s": round(read_s, 2),
        "read_records_per_s": round(args.n / read_s),
        "validate_s (probe + convert + check)": round(validate_s, 2),
        "valid": len(report.records),
        "problems": report.num_problems,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
