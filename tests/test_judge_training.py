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


def _judge_run(cache_dir, tmp_path, url: str, *extra: str):
    """Compose a 2-step VISD run against the judge at ``url`` (csv logger, no checkpoints or HF export)."""
    return compose_train(
        FAST
        + shared_paths(cache_dir, tmp_path)
        + [
            f"paths.output_dir={tmp_path / 'run'}",
            "+experiment=ema_topk",
            "judge=openai",
            f"judge.base_url={url}",
            "judge.cache_dir=null",
            "trainer.max_steps=2",
            "logger=csv",
            "callbacks.model_checkpoint=null",
            "save_hf_model=false",
            *extra,
        ]
    )


def test_misconfigured_remote_judge_stops_the_run_with_the_cause(cache_dir, tmp_path, monkeypatch):
    from visd_exp.judge import JudgeError

    # a remote judge whose key variable is unset: stops when the judge is built, before any step
    monkeypatch.delenv("VISD_UNSET_JUDGE_KEY", raising=False)
    cfg = _judge_run(
        cache_dir,
        tmp_path / "a",
        "https://judge.example.invalid/v1",
        "judge.api_key_env=VISD_UNSET_JUDGE_KEY",
    )
    with pytest.raises(JudgeError, match="VISD_UNSET_JUDGE_KEY"):
        train(cfg)
    # a judge that rejects every request (here: 401, as for a revoked key) stops the run at its first step
    server, thread, url = start_server("127.0.0.1", 0, error_rate=1.0, error_codes=(401,))
    monkeypatch.setenv("VISD_TEST_JUDGE_KEY", FAKE_KEY)
    try:
        cfg = _judge_run(
            cache_dir,
            tmp_path / "b",
            url,
            "judge.api_key_env=VISD_TEST_JUDGE_KEY",
            "judge.api_key_required=true",
        )
        with pytest.raises(JudgeError, match="HTTP 401") as err:
            train(cfg)
    finally:
        stop(server, thread)
    assert "injected fault 401" in str(err.value) and FAKE_KEY not in str(err.value)
    assert server.stats["chat"] <= 16  # one step's rollouts at most: no retries, no second step


def test_run_whose_judge_recovers_from_transient_errors_completes(cache_dir, tmp_path):
    server, thread, url = start_server(
        "127.0.0.1", 0, fail_first=6, error_codes=(500, 429, 503), retry_after=0.05
    )
    try:
        train(_judge_run(cache_dir, tmp_path, url, "judge.backoff_base=0.05", "judge.backoff_max=0.2"))
    finally:
        stop(server, thread)
    rows = read_metrics(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert sum(float(r["judge/retries"]) for r in rows) >= 6 and server.stats["errors"] == 6
    assert all(float(r["judge/fallback_rate"]) == 0.0 for r in rows)


def test_judge_overlap_bench_runs(cache_dir, tmp_path):
    """bench/judge.py's overlap measurement at a tiny size, so that it cannot rot (not timed): VISD steps
    against the served judge with a set latency, reading back the wait and the request latency."""
    from conftest import load_bench

    bench = load_bench("judge")
    out = bench.bench_overlap(
        steps=2,
        latency=0.05,
        skip=0,
        overrides=(*fast("callbacks", "trainer.max_steps"), *shared_paths(cache_dir, tmp_path)),
    )
    assert out["steps_timed"] == 2
    assert out["judge/latency_p50"] >= 0.05  # every request waited for the server's latency
    assert out["timing/judge"] >= 0.0 and out["timing/teacher"] > 0.0
    assert out["hidden_s"] == pytest.approx(out["judge/latency_p50"] - out["timing/judge"], abs=1e-3)
