"""HTTP judge against the local rule-judge server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from visd_exp.judge import JudgeItem, RuleJudge
from visd_exp.judge.http import HttpJudge
from visd_exp.judge.serve import start_server, stop

TG_REF = "From <t>2.0</t>s to <t>5.0</t>s"
EVIDENCE = {
    "segment": [2.0, 5.0],
    "key_frames": [{"time": 3.0, "objects": {"red square": [[10, 10, 50, 50]]}}],
}


def item(i: int = 0) -> JudgeItem:
    completion = (
        f"<think>The square {{i}} appears at <t>{2 + i % 3}.5</t>s, ${{x}} cost $5.</think>"
        f"<answer>From <t>2.0</t>s to <t>{4 + i}.0</t>s</answer>"
    )
    return JudgeItem(
        "temporal_grounding", f"When is the red square visible? ({i})", TG_REF, EVIDENCE, completion
    )


@pytest.fixture
def serve():
    """serve(**faults) -> (server, base_url); every server is stopped at teardown."""
    started = []

    def _start(**faults):
        server, thread, url = start_server("127.0.0.1", 0, **faults)
        started.append((server, thread))
        return server, url

    yield _start
    for server, thread in started:
        stop(server, thread)


@pytest.fixture
def make_judge(tmp_path):
    judges = []

    def _make(url, **kw):
        kw = {
            "api_key_env": None,
            "api_key_required": False,
            "retries": 2,
            "backoff_base": 0.01,
            "timeout": 5,
            **kw,
        }
        judge = HttpJudge(url, "visd-rule-judge", **kw)
        judges.append(judge)
        return judge

    yield _make
    for judge in judges:
        judge.close()


def test_success_matches_the_local_rule_judge(serve, make_judge):
    server, url = serve()
    judge = make_judge(url)
    items = [item(i) for i in range(3)]
    out = judge.judge_batch(items)
    # the server read every field back from the rendered prompt: same feedback as judging locally
    assert out == [RuleJudge().diagnose(it).feedback for it in items]
    m = judge.pop_metrics()
    assert m["judge/calls"] == 3 and m["judge/requests"] == 3 and m["judge/fallback_rate"] == 0.0
    assert 0 < m["judge/latency_p50"] <= m["judge/latency_p95"] < 2
    assert judge.judge_batch([]) == []


def test_429_retry_after_is_honoured(serve, make_judge):
    server, url = serve(fail_first=1, error_codes=(429,), retry_after=0.6)
    judge = make_judge(url)
    t0 = time.perf_counter()
    out = judge.judge_batch([item()])
    elapsed = time.perf_counter() - t0
    assert out[0] and 0.6 <= elapsed < 2.0
    m = judge.pop_metrics()
    assert m["judge/requests"] == 2 and m["judge/retries"] == 1 and server.stats["errors"] == 1


def test_retry_after_is_capped_by_backoff_max(serve, make_judge):
    server, url = serve(fail_first=1, error_codes=(429,), retry_after=60)
    judge = make_judge(url, backoff_max=0.2)
    t0 = time.perf_counter()
    assert judge.judge_batch([item()])[0]
    assert time.perf_counter() - t0 < 1.5


def test_500_then_success_after_retries(serve, make_judge):
    server, url = serve(fail_first=2, error_codes=(500, 503))
    judge = make_judge(url, retries=3)
    assert judge.judge_batch([item()])[0]
    m = judge.pop_metrics()
    assert m["judge/requests"] == 3 and m["judge/retries"] == 2 and m["judge/fallback_rate"] == 0.0


def test_persistent_500_falls_back_after_bounded_retries(serve, make_judge):
    server, url = serve(error_rate=1.0, error_codes=(500,))
    judge = make_judge(url, retries=2)
    assert judge.judge_batch([item()]) == [None]
    m = judge.pop_metrics()
    assert m["judge/requests"] == 3 and m["judge/fallback_rate"] == 1.0 and server.stats["chat"] == 3


def test_client_errors_are_not_retried(serve, make_judge):
    server, url = serve(fail_first=1, error_codes=(400,))
    judge = make_judge(url, retries=3)
    assert judge.judge_batch([item()]) == [None]
    assert server.stats["chat"] == 1


def test_timeout_falls_back(serve, make_judge):
    server, url = serve(latency=1.0)
    judge = make_judge(url, timeout=0.2, retries=0)
    t0 = time.perf_counter()
    assert judge.judge_batch([item()]) == [None]
    assert time.perf_counter() - t0 < 0.9
    m = judge.pop_metrics()
    assert m["judge/fallback_rate"] == 1.0 and m["judge/calls"] == 1 and m["judge/requests"] == 1


@pytest.mark.parametrize(("kind", "ok"), [("prose", True), ("garbage", False), ("empty", False)])
def test_malformed_replies(serve, make_judge, kind, ok):
    server, url = serve(malformed_rate=1.0, malformed_kind=kind)
    judge = make_judge(url)
    out = judge.judge_batch([item()])
    assert (out[0] == RuleJudge().diagnose(item()).feedback) if ok else out == [None]
    assert server.stats["chat"] == 1  # a bad reply is not re-requested
    assert judge.pop_metrics()["judge/fallback_rate"] == (0.0 if ok else 1.0)


def test_connection_refused_falls_back_with_counters(make_judge):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = make_judge(f"http://127.0.0.1:{port}/v1", retries=2)
    assert judge.judge_batch([item(0), item(1)]) == [None, None]
    m = judge.pop_metrics()
    assert m["judge/calls"] == 2 and m["judge/requests"] == 6 and m["judge/retries"] == 4
    assert m["judge/fallback_rate"] == 1.0 and m["judge/cache_hits"] == 0


def test_items_run_concurrently_and_bounded(serve, make_judge):
    server, url = serve(latency=0.2)
    judge = make_judge(url, max_concurrency=16)
    judge.judge_batch([item(99)])  # warm the loop and the connection pool
    t0 = time.perf_counter()
    out = judge.judge_batch([item(i) for i in range(16)])
    assert all(out) and time.perf_counter() - t0 < 1.0  # one at a time would take 3.2 s
    narrow = make_judge(url, max_concurrency=4)
    t0 = time.perf_counter()
    assert all(narrow.judge_batch([item(i + 20) for i in range(8)]))
    assert time.perf_counter() - t0 >= 0.4  # two waves of four


def test_cache_makes_reruns_free(serve, make_judge, tmp_path):
    server, url = serve()
    items = [item(i) for i in range(4)]
    first = make_judge(url, cache_dir=tmp_path / "cache").judge_batch(items)
    assert server.stats["chat"] == 4
    judge = make_judge(url, cache_dir=tmp_path / "cache")  # a resumed run
    assert judge.judge_batch(items) == first
    assert server.stats["chat"] == 4
    m = judge.pop_metrics()
    assert m["judge/cache_hits"] == 4 and m["judge/calls"] == 0 and m["judge/requests"] == 0
    files = list((tmp_path / "cache").glob("*/*/*.json"))
    assert len(files) == 4


def test_duplicates_in_a_batch_cost_one_request(serve, make_judge):
    server, url = serve()
    judge = make_judge(url)
    out = judge.judge_batch([item(1), item(1), item(2)])
    assert out[0] == out[1] and server.stats["chat"] == 2


def test_api_key_is_sent_but_never_stored(serve, make_judge, tmp_path, monkeypatch):
    secret = "sk-test-Zq81-do-not-leak"
    monkeypatch.setenv("VISD_JUDGE_TEST_KEY", secret)
    server, url = serve()
    judge = make_judge(
        url, api_key_env="VISD_JUDGE_TEST_KEY", api_key_required=True, cache_dir=tmp_path / "c"
    )
    assert all(judge.judge_batch([item(0), item(1)]))
    assert server.stats["authorized"] == 2
    assert secret not in repr(judge) and secret not in str(vars(judge))
    for path in (tmp_path / "c").rglob("*"):
        assert path.is_dir() or secret not in path.read_text()
        assert secret not in path.name
    # no key in the environment: required -> no request at all; optional -> sent without a header
    monkeypatch.delenv("VISD_JUDGE_TEST_KEY")
    assert judge.judge_batch([item(5)]) == [None] and server.stats["chat"] == 2
    optional = make_judge(url, api_key_env="VISD_JUDGE_TEST_KEY", api_key_required=False)
    assert optional.judge_batch([item(5)])[0] and server.stats["authorized"] == 2


def test_callable_from_threads_and_running_loops_many_times(serve, make_judge):
    server, url = serve()
    judge = make_judge(url)

    async def inside_a_running_loop():
        return judge.judge_batch([item(1)])

    assert asyncio.run(inside_a_running_loop())[0]
    results = []
    worker = threading.Thread(target=lambda: results.append(judge.judge_batch([item(2)])))
    worker.start()
    worker.join(10)
    assert results and results[0][0]
    for i in range(20):
        assert judge.judge_batch([item(i % 3)])[0]
    judge.close()
    assert judge.judge_batch([item(0)])[0]  # usable again after close


def test_server_answers_any_shape_with_json_feedback(serve):
    server, url = serve()
    with httpx.Client(timeout=5) as client:
        for body in (
            {"model": "x", "messages": [{"role": "user", "content": "Is the sky blue?"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            {"messages": []},
            "not an object",
        ):
            r = client.post(f"{url}/chat/completions", json=body)
            assert r.status_code == 200
            feedback = json.loads(r.json()["choices"][0]["message"]["content"])["feedback"]
            assert "could not" in feedback
        r = client.post(f"{url}/chat/completions", content=b"{not json")
        assert r.status_code == 200 and "could not" in r.json()["choices"][0]["message"]["content"]
        models = client.get(f"{url}/models").json()
        assert models["data"][0]["id"] == "visd-rule-judge"
