"""Exact resume: kill a run with SIGKILL right after a checkpoint, resume it, and compare with an
uninterrupted run: every later step's logged metrics and the final student and teacher are identical."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import PROJECT_ROOT
from test_train_e2e import fast, run_module, shared_paths

STEPS = 8
TIMING = ("step_time", "timing/", "judge/latency")


def overrides(cache_dir, out_dir, *extra) -> list[str]:
    """One run of `python -m visd_exp.train` into `out_dir`: 8 steps, a checkpoint every 2."""
    return [
        "+experiment=ema_topk",
        f"trainer.max_steps={STEPS}",
        "logger=csv",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.validation.every_n_steps=3",
        "callbacks.validation.max_samples=2",
        "callbacks.validation.sampled.num_generations=2",  # sampled validation resumes exactly too
        "dumps.credit_every_n_steps=0",
        *fast("trainer.max_steps", "callbacks.model_checkpoint"),
        *shared_paths(cache_dir, out_dir),
        f"hydra.run.dir={out_dir}",
        *extra,
    ]


def rows_by_step(run_dir) -> dict[str, dict]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    out = {}
    for row in rows:  # training rows carry 'loss', validation rows val/*; set-up counts (data/*) are skipped
        values = {k: v for k, v in row.items() if v != ""}
        kind = "train" if "loss" in values else "val" if any(k.startswith("val/") for k in values) else None
        if kind:
            out[f"{kind}:{row['step']}"] = {k: v for k, v in values.items() if not k.startswith(TIMING)}
    return out


def loadable(path) -> bool:
    try:
        torch.load(path, weights_only=False)
        return True
    except Exception:
        return False


@pytest.mark.parametrize(
    "accumulate, extra",
    [(1, []), (2, ["optim.accumulate_grad_batches=2", "algorithm.micro_batch_size=3"])],
    ids=["plain", "accumulate2-micro3"],
)
def test_kill_and_resume_is_exact(cache_dir, tmp_path, accumulate, extra):
    """Also with gradient accumulation (checkpoints fall after optimizer steps) and micro-batches. Training
    rows are logged per batch (accumulate batches per optimizer step), validation rows per optimizer step."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    full, killed, resumed = tmp_path / "full", tmp_path / "killed", tmp_path / "resumed"
    run_module("train", *overrides(cache_dir, full, *extra))

    proc = subprocess.Popen(
        [sys.executable, "-m", "visd_exp.train", *overrides(cache_dir, killed, *extra)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = killed / "checkpoints" / "step_000004.ckpt"
    deadline = time.monotonic() + 300
    while not (checkpoint.is_file() and loadable(checkpoint)):
        assert proc.poll() is None and time.monotonic() < deadline, (
            "the run ended before its step-4 checkpoint"
        )
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way through the next step
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (killed / "hf_model").exists()  # it really did not finish

    run_module("train", *overrides(cache_dir, resumed, *extra, f"ckpt_path={checkpoint}"))

    expected, got = rows_by_step(full), rows_by_step(resumed)
    first = {"train": 4 * accumulate, "val": 4}  # the first row after the step-4 checkpoint
    later = [k for k in expected if int(k.split(":")[1]) >= first[k.split(":")[0]]]
    assert later and sorted(later) == sorted(got)
    assert any("val/sampled/reward/total" in expected[k] for k in later)
    for key in later:
        assert got[key] == expected[key], key

    a, b = load_file(full / "hf_model/model.safetensors"), load_file(resumed / "hf_model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ta = torch.load(full / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    tb = torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    teacher = [k for k in ta if k.startswith("teacher.copy.")]
    assert teacher and all(torch.equal(ta[k], tb[k]) for k in teacher)
