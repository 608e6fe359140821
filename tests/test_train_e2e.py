"""End to end: compose the real config with hydra.compose, train a few steps, inspect the run directory."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from conftest import PROJECT_ROOT

# A short warm start keeps the test fast; it is enough for rewards to differ within groups.
FAST = [
    "trainer.max_steps=4",
    "model.warm_start.steps=80",
    "model.warm_start.lr=3e-3",
    "model.warm_start.batch_size=8",
    "model.warm_start.data.num_videos=64",
    "data.synthetic.num_videos=12",
    "algorithm.max_completion_length=96",
    "optim.weight_decay=0.0",  # so 'weights changed' can only come from policy gradients
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.progress_bar=null",
    "callbacks.validation.at_start=false",  # tests that want it turn it on
]


def fast(*drop: str) -> list[str]:
    """FAST without the overrides that start with any of `drop` (the caller sets those itself)."""
    return [o for o in FAST if not o.startswith(drop)] if drop else list(FAST)


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 600):
    """`python -m visd_exp.<module> args...` offline from the project root; asserts that it succeeded."""
    env = {**(os.environ if env is None else env), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", f"visd_exp.{module}", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def shared_paths(cache_dir: Path, run_dir: Path) -> list[str]:
    return [
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir / 'data'}",
        f"paths.log_dir={run_dir / 'logs'}",
    ]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def trained_run(cache_dir, tmp_path_factory):
    from visd_exp.train import train

    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_train(FAST + shared_paths(cache_dir, run_dir) + [f"paths.output_dir={run_dir}"])
    metrics = train(cfg)
    return run_dir, cfg, metrics


def read_all_metrics(run_dir: Path) -> list[dict]:
    """Every row: training steps, validation rows (val/*), the data set-up counts (data/*)."""
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def read_metrics(run_dir: Path) -> list[dict]:
    """The training rows (one per step)."""
    return [row for row in read_all_metrics(run_dir) if row.get("loss")]


def test_metrics_file_has_trl_names_for_every_step(trained_run):
    run_dir, _, _ = trained_run
    all_rows = read_all_metrics(run_dir)
    setup = [r for r in all_rows if r.get("data/train_records")]  # data set-up counts, logged at start
    assert setup and float(setup[0]["data/train_dropped_long_prompts"]) == 0.0
    rows = [r for r in all_rows if r.get("loss")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    for key in [
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "completions/mean_length",
        "completions/clipped_ratio",
        "loss",
        "grad_norm",
        "lr",
        "step_time",
        "entropy",
        "rewards/fmt/mean",
        "timing/rollout",
        "timing/update",
    ]:
        assert all(r[key] != "" for r in rows), key
    assert any(float(r["grad_norm"]) > 0 for r in rows), "no step had a policy gradient"
    # the loader's wait between batches: none before the first batch, then measured
    waits = [float(r["timing/data_wait"]) for r in rows]
    assert math.isnan(waits[0]) and all(0 <= w < 60 for w in waits[1:])
    # the HF engine samples from the trained model: nothing to push, and in fp32 its sampled log-probs are
    # the trainer's forward's (rollout/engine.py)
    assert all(float(r["timing/weight_sync"]) == 0.0 for r in rows)
    assert all(0.0 <= float(r["rollout/logprob_diff_max"]) < 1e-3 for r in rows)


def test_weights_changed_and_checkpoints_written(trained_run):
    run_dir, cfg, _ = trained_run
    from visd_exp.models.loading import resolve_model_path

    start = load_file(Path(resolve_model_path(cfg.model, cfg.data)) / "model.safetensors")
    final = load_file(run_dir / "hf_model" / "model.safetensors")
    changed = [k for k in start if not torch.equal(start[k], final[k])]
    assert len(changed) > len(start) // 2
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and "step_000002.ckpt" in ckpts
    assert (run_dir / "config_resolved.yaml").is_file()


def test_wandb_offline_run_written(trained_run):
    run_dir, _, _ = trained_run
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_experiment_grpo_from_the_command_line(cache_dir, tmp_path, trained_run):
    """Acceptance: `python -m visd_exp.train +experiment=grpo trainer.max_steps=...` works as written."""
    run_module(
        "train",
        "+experiment=grpo",
        "trainer.max_steps=2",
        "logger=csv",
        *fast("trainer.max_steps"),
        *shared_paths(cache_dir, tmp_path),
    )
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    rows = read_metrics(runs[0])
    assert len(rows) == 2
    assert "grpo" in (runs[0] / "config_resolved.yaml").read_text()


def test_multirun_writes_one_directory_per_job(cache_dir, tmp_path, trained_run):
    run_module(
        "train",
        "-m",
        "+experiment=grpo",
        "seed=0,1",
        "trainer.max_steps=1",
        "logger=csv",
        *fast("trainer.max_steps"),
        *shared_paths(cache_dir, tmp_path),
    )
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (sweep / job / "csv" / "version_0" / "metrics.csv").is_file()


def test_validation_at_start_logs_step_zero_and_leaves_training_alone(cache_dir, tmp_path, trained_run):
    """callbacks.validation.at_start: the starting model's val/* numbers at step 0, before any update,
    with the training RNG untouched: the same losses as the run without it."""
    from visd_exp.train import train

    run_dir, _, _ = trained_run
    cfg = compose_train(
        [
            *fast("callbacks.validation"),
            "callbacks.validation.max_samples=2",
            *shared_paths(cache_dir, tmp_path),
        ]
        + [f"paths.output_dir={tmp_path}"]
    )
    train(cfg)
    rows = read_all_metrics(tmp_path)
    val = [r for r in rows if r.get("val/reward/total")]
    assert val and int(val[0]["step"]) == 0
    assert [r["loss"] for r in read_metrics(tmp_path)] == [r["loss"] for r in read_metrics(run_dir)]
