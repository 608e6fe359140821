"""The HTTP judge inside training, over real loopback HTTP: the acceptance command, and the API key
never reaching logs, saved configs, checkpoints, wandb files or the judge cache."""

from __future__ import annotations

import pytest

from test_train_e2e import FAST, compose_train, read_metrics, shared_paths
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
