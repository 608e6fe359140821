"""The HTTP judge inside training, over real loopback HTTP: the acceptance command, and the API key
never reaching logs, saved configs, checkpoints, wandb files or the judge cache."""

from __future__ import annotations

import pytest

from test_train_e2e import FAST, compose_train, fast, read_metrics, run_module, shared_paths
from visd_exp.judge.serve import start_server, stop
from visd_exp.train import train

FAKE_KEY = "fake-judge-key-7f3a9c1e5b2d8046"  # not an sk- key, so secret scanners stay quiet


@pytest.fixture
def judge_server():
    server, thread, url = start_server("127.0.0.1", 0)
    yield server, url
    stop(server, thread)


def test_trains_against_the_served_judge_and_never_leaks_the_key(
    cache_dir, tmp_path, judge_server, monkeypatch
):
    server, url = judge_server
    monkeypatch.setenv("VISD_TEST_JUDGE_KEY", FAKE_KEY)
    judge_cache = tmp_path / "judge_cache"
    cfg = compose_train(
        FAST
        + shared_paths(cache_dir, tmp_path)
        + [
            f"paths.output_dir={tmp_path / 'run'}",
            "+experiment=ema_topk",
            "judge=openai",
            f"judge.base_url={url}",
            "judge.api_key_env=VISD_TEST_JUDGE_KEY",
            f"judge.cache_dir={judge_cache}",
            "trainer.max_steps=2",
        ]
    )
    train(cfg)
    rows = read_metrics(tmp_path / "run")
    assert all(float(r["judge/calls"]) > 0 and float(r["judge/fallback_rate"]) == 0.0 for r in rows)
    assert server.stats["authorized"] > 0  # the key was sent, in the Authorization header only
    files = [p for p in [*(tmp_path / "run").rglob("*"), *judge_cache.rglob("*")] if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.suffix == ".ckpt" for p in files)
    leaks = [str(p) for p in files if FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


def test_acceptance_command_against_the_judge_server(cache_dir, tmp_path):
    """`python -m visd_exp.train +experiment=ema_topk judge=openai judge.base_url=http://127.0.0.1:PORT/v1`,
    with the judge served by `python -m visd_exp.judge.serve` and no API key in the environment."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}  # no key: loopback needs none
    server = subprocess.Popen(
        [sys.executable, "-m", "visd_exp.judge.serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "judge server did not start"
                time.sleep(0.1)
        run_module(
            "train",
            "+experiment=ema_topk",
            "judge=openai",
            f"judge.base_url=http://127.0.0.1:{port}/v1",
            "trainer.max_steps=2",
            "logger=csv",
            *fast("trainer.max_steps"),
            *shared_paths(cache_dir, tmp_path),
            env=env,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    (run,) = list((tmp_path / "logs" / "train" / "runs").iterdir())
    rows = read_metrics(run)
    assert all(float(r["judge/calls"]) > 0 and float(r["judge/fallback_rate"]) == 0.0 for r in rows)
