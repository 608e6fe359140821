"""Benchmark video decoding as training does it: 16 frames from a 60 s 640x360 30 fps h264 file.

    seek        visd_exp.data.frames.decode_frames: seek to each planned time, decode from the keyframe
                before it (what every dataset item does)
    decode_all  decode every frame in order, then keep the 16 planned ones (what a reader without
                seeking pays)

The file is written once (torchcodec's encoder, libx264, a keyframe every 2 s as camera footage has;
its content changes every frame so no frame is free to code) into --cache. The 16 times are the
project's plan: uniform over the video (data.fps 16/60, min 4, max 16 frames). Each method runs
--repeats times in one process (after one warm-up), alternating; medians and the ratio go to
bench/results/decode.json.

    .venv/bin/python bench/decode.py [--seconds 60] [--size 640x360] [--fps 30] [--repeats 5]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_video(path: Path, seconds: float, width: int, height: int, fps: int, gop: int) -> None:
    """A moving gradient with a square on it, chunk by chunk (60 s of 640x360 is 1.2 GB raw)."""
    import torch
    from torchcodec.encoders import VideoEncoder

    n = round(seconds * fps)
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, width).view(1, width)
    frames = torch.empty(n, 3, height, width, dtype=torch.uint8)
    for i in range(n):
        phase = i / fps
        frames[i, 0] = ((x + 0.1 * phase) % 1.0 * 255).to(torch.uint8)
        frames[i, 1] = ((y + 0.05 * phase) % 1.0 * 255).to(torch.uint8)
        frames[i, 2] = (((x + y) / 2 + 0.02 * i) % 1.0 * 255).to(torch.uint8)
        side = max(4, height // 6)
        left = int((width - side) * (0.5 + 0.5 * torch.sin(torch.tensor(phase)).item()))
        frames[i, :, height // 3 : height // 3 + side, left : left + side] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=fps).to_file(
        str(path), codec="libx264", pixel_format="yuv420p", crf=23, extra_options={"g": gop}
    )


def plan(path: Path, num_frames: int):
    """The project's sampling (data.fps = frames / duration, clamped to [4, frames]) at the native size:
    the benchmark times decoding, not resizing."""
    from visd_exp.data.frames import FramePlan, probe_video, sample_times

    info = probe_video(path)
    times = sample_times(info.duration, num_frames / info.duration, 4, num_frames, ())
    return FramePlan(times=times, height=info.height, width=info.width, duration=info.duration)


def seek(path: Path, frame_plan):
    from visd_exp.data.frames import decode_frames

    return decode_frames(path, frame_plan)


def decode_all(path: Path, frame_plan):
    """Every frame in presentation order, then the ones played at the planned times."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), seek_mode="exact")
    batch = decoder.get_frames_in_range(0, len(decoder))
    pts = batch.pts_seconds
    last = float(pts[-1])
    picked = [int((pts <= min(t, last) + 1e-6).nonzero().max()) for t in frame_plan.times]
    return batch.data[picked]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--gop", type=int, default=60, help="frames between keyframes (default: 2 s at 30 fps)"
    )
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decode.json")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    path = args.cache / f"decode-{args.seconds:g}s-{width}x{height}-{args.fps}fps-g{args.gop}.mp4"
    if not path.is_file():
        start = time.perf_counter()
        write_video(path, args.seconds, width, height, args.fps, args.gop)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    frame_plan = plan(path, args.frames)
    a, b = seek(path, frame_plan), decode_all(path, frame_plan)  # warm-up, and the same frames?
    if a.shape != b.shape:
        raise SystemExit(f"seek gave {tuple(a.shape)}, decode_all {tuple(b.shape)}")
    max_diff = int((a.int() - b.int()).abs().max())

    times: dict[str, list[float]] = {"seek": [], "decode_all": []}
    for _ in range(args.repeats):  # alternating, so drift on a shared machine hits both
        for name, fn in (("seek", seek), ("decode_all", decode_all)):
            start = time.perf_counter()
            fn(path, frame_plan)
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "video": {
            "seconds": args.seconds,
            "width": width,
            "height": height,
            "fps": args.fps,
            "gop": args.gop,
        },
        "frames": len(frame_plan.times),
        "times_planned": list(frame_plan.times),
        "max_pixel_difference_seek_vs_decode_all": max_diff,
        "seconds": times,
        "median_s": medians,
        "speedup_seek_over_decode_all": medians["decode_all"] / medians["seek"],
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": "bench/decode.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k not in ("cache", "out")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"16 frames of {args.seconds:g} s {width}x{height} {args.fps} fps: seek {medians['seek'] * 1e3:.1f} ms, "
        f"decode everything {medians['decode_all'] * 1e3:.1f} ms: {result['speedup_seek_over_decode_all']:.1f}x "
        f"(same frames: max pixel difference {max_diff}) -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
