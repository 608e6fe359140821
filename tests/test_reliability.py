"""Faults during training: unreadable videos, non-finite steps, bad data, unwritable run directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import PROJECT_ROOT
from test_train_e2e import FAST, compose_train, read_metrics, shared_paths
from visd_exp.data.synthetic import generate
from visd_exp.data.validate import DataValidationError
from visd_exp.train import train


@pytest.fixture
def small_data(tmp_path):
    return generate(tmp_path / "data", num_videos=6, seed=5)


def jsonl_run(cache_dir, tmp_path, train_file, *extra):
    fast = [o for o in FAST if not o.startswith("data.synthetic")]
    return compose_train(
        fast
        + shared_paths(cache_dir, tmp_path)
        + [
            f"paths.output_dir={tmp_path / 'run'}",
            "logger=csv",
            "data=jsonl",
            f"data.train_file={train_file}",
            "data.fps=1.0",
            "+experiment=grpo",
            *extra,
        ]
    )


def test_video_unreadable_after_validation_is_skipped_and_counted(
    cache_dir, tmp_path, small_data, monkeypatch
):
    import visd_exp.data.datamodule as dm

    real = dm.decode_frames
    broken = {"00000.mp4", "00001.mp4", "00002.mp4"}

    def flaky(path, plan):  # the files vanish after the set-up checks, as on a flaky network disk
        if os.path.basename(path) in broken:
            raise dm.VideoDecodeError(f"{path}: cannot decode frames (simulated)")
        return real(path, plan)

    monkeypatch.setattr(dm, "decode_frames", flaky)
    train(jsonl_run(cache_dir, tmp_path, small_data / "train.jsonl", "trainer.max_steps=4"))
    rows = read_metrics(tmp_path / "run")
    assert float(rows[-1]["data/skipped_videos"]) > 0
    assert len([r for r in rows if r.get("loss")]) == 4  # training went on


def test_non_finite_loss_skips_the_step(cache_dir, tmp_path, small_data, monkeypatch):
    import visd_exp.step_forward as module  # the micro-batched update calls the surrogate

    real = module.clipped_surrogate_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(module, "clipped_surrogate_loss", sometimes_nan)
    train(jsonl_run(cache_dir, tmp_path, small_data / "train.jsonl", "trainer.max_steps=3"))
    rows = [r for r in read_metrics(tmp_path / "run") if r.get("loss")]
    assert len(rows) == 4  # 3 optimizer steps took 4 batches: the NaN one was skipped
    assert float(rows[-1]["train/skipped_steps"]) == 1.0
    assert all(torch.isfinite(torch.tensor(float(r["grad_norm"]))) or r["loss"] == "nan" for r in rows)


def test_strict_validation_stops_before_training_listing_every_problem(cache_dir, tmp_path, small_data):
    lines = (small_data / "train.jsonl").read_text().splitlines()
    bad = [json.loads(line) for line in lines[:3]]
    bad[0]["segment"] = [5.0, 2.0]
    bad[1]["video_path"] = "videos/missing.mp4"
    path = small_data / "bad.jsonl"
    path.write_text("\n".join([json.dumps(bad[0]), json.dumps(bad[1]), json.dumps(bad[2]), "{oops"]) + "\n")
    with pytest.raises(DataValidationError) as info:
        train(jsonl_run(cache_dir, tmp_path, path, "trainer.max_steps=1"))
    message = str(info.value)
    assert (
        f"{path}:1: segment" in message
        and f"{path}:2: video_path" in message
        and f"{path}:4: <json>" in message
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_lenient_validation_skips_and_counts(cache_dir, tmp_path, small_data):
    path = small_data / "mixed.jsonl"
    good = (small_data / "train.jsonl").read_text()
    path.write_text(good + "{oops\n")
    cfg = jsonl_run(cache_dir, tmp_path, path, "trainer.max_steps=1", "data.validation=lenient")
    from visd_exp.data.datamodule import VideoQADataModule
    from visd_exp.models import load_model_and_processor

    _, processor = load_model_and_processor(cfg.model, cfg.data)
    dmod = VideoQADataModule(cfg.data, processor)
    dmod.setup("fit")
    assert dmod.stats["data/skipped"] == 1 and dmod.stats["data/train_records"] == len(good.splitlines())


def test_unwritable_run_directory_fails_at_start(cache_dir, tmp_path):
    if os.geteuid() == 0:  # root ignores permissions: use a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "run"
    cmd = [
        sys.executable,
        "-m",
        "visd_exp.train",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        f"paths.output_dir={out}",
        *shared_paths(cache_dir, tmp_path),
    ]
    result = subprocess.run(
        cmd,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
    )
    assert result.returncode != 0
    assert f"cannot write the run directory {out}" in result.stderr + result.stdout
    shutil.rmtree(tmp_path / "hydra", ignore_errors=True)


def test_ckpt_path_last_finds_the_newest_run(tmp_path):
    import time

    from omegaconf import OmegaConf

    from visd_exp.utils.setup import resolve_ckpt_path

    logs = tmp_path / "logs"
    older = logs / "train" / "runs" / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt"
    newer = logs / "train" / "multiruns" / "2026-01-02_00-00-00" / "3" / "checkpoints" / "last.ckpt"
    for path in (older, newer):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        time.sleep(0.02)
    cfg = OmegaConf.create(
        {
            "ckpt_path": "last",
            "task_name": "train",
            "paths": {"output_dir": str(tmp_path / "new_run"), "log_dir": str(logs)},
        }
    )
    assert resolve_ckpt_path(cfg) == str(newer)
    own = tmp_path / "new_run" / "checkpoints" / "last.ckpt"  # this run directory's own last.ckpt wins
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    assert resolve_ckpt_path(cfg) == str(own)
    with pytest.raises(SystemExit, match="no such checkpoint"):
        resolve_ckpt_path(OmegaConf.merge(cfg, {"ckpt_path": str(tmp_path / "nope.ckpt")}))
