"""Shared fixtures: offline environment, a session-wide tiny model, and small real mp4 files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One model/data cache per test session (the tiny model is built once, ~2 s)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny(cache_dir):
    """(model, processor) of the default tiny model, fp32, eval mode."""
    from omegaconf import OmegaConf

    from visd_exp.models import load_model_and_processor

    cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny.yaml")
    cfg.cache_dir = str(cache_dir / "models")
    cfg.warm_start = None
    model, processor = load_model_and_processor(cfg)
    model.eval()
    return model, processor


def write_square_video(
    path: Path, seconds: int = 8, fps: int = 4, size: int = 56, visible=(2.0, 5.0)
) -> Path:
    """A real h264 mp4: a red 24 px square visible during `visible` (inclusive), black elsewhere."""
    import torch
    from torchcodec.encoders import VideoEncoder

    frames = torch.zeros(seconds * fps, 3, size, size, dtype=torch.uint8)
    for i in range(seconds * fps):
        if visible[0] <= i / fps <= visible[1]:
            frames[i, 0, 8:32, 8:32] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=fps).to_file(str(path), codec="libx264", pixel_format="yuv420p", crf=18)
    return path


@pytest.fixture
def square_video(tmp_path) -> Path:
    return write_square_video(tmp_path / "videos" / "square.mp4")


def load_bench(name: str):
    """bench/<name>.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", PROJECT_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
