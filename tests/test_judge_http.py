"""HTTP judge against the local rule-judge server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

from visd_exp.judge import JudgeError, JudgeItem, RuleJudge
from visd_exp.judge.base import FallbackGuard
from visd_exp.judge.http import HttpJudge
from visd_exp.judge.replies import error_message
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
    # the key disappears: required -> an error naming the variable, no request; optional -> no header
    monkeypatch.delenv("VISD_JUDGE_TEST_KEY")
    with pytest.raises(JudgeError, match="VISD_JUDGE_TEST_KEY") as err:
        judge.judge_batch([item(5)])
    assert server.stats["chat"] == 2 and secret not in str(err.value)
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


def test_server_reports_models(serve):
    server, url = serve()
    with httpx.Client(timeout=5) as client:
        models = client.get(f"{url}/models").json()
        assert models["data"][0]["id"] == "visd-rule-judge"


# -- loud failures ---------------------------------------------------------------------------------------------


def test_missing_key_for_a_remote_judge_fails_at_construction(monkeypatch):
    monkeypatch.delenv("VISD_ABSENT_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match="VISD_ABSENT_JUDGE_KEY"):
        HttpJudge("https://judge.example.com/v1", "m", api_key_env="VISD_ABSENT_JUDGE_KEY")
    with pytest.raises(JudgeError, match="VISD_ABSENT_JUDGE_KEY"):  # required explicitly, even on loopback
        HttpJudge("http://127.0.0.1:9/v1", "m", api_key_env="VISD_ABSENT_JUDGE_KEY", api_key_required=True)
    with pytest.raises(JudgeError, match="api_key_env"):
        HttpJudge("https://judge.example.com/v1", "m", api_key_env=None)
    HttpJudge("http://127.0.0.1:9/v1", "m", api_key_env="VISD_ABSENT_JUDGE_KEY").close()  # auto: loopback
    HttpJudge("https://judge.example.com/v1", "m", api_key_env=None, api_key_required=False).close()
    monkeypatch.setenv("VISD_ABSENT_JUDGE_KEY", "fake-value")
    HttpJudge("https://judge.example.com/v1", "m", api_key_env="VISD_ABSENT_JUDGE_KEY").close()


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_repeated_client_errors_stop_with_the_server_message(serve, make_judge, code):
    server, url = serve(error_rate=1.0, error_codes=(code,))
    judge = make_judge(url, retries=3, max_client_errors=3)
    assert judge.judge_batch([item(0)]) == [None]
    assert judge.judge_batch([item(1)]) == [None]  # two identical failures: still running
    with pytest.raises(JudgeError, match=f"HTTP {code} 3 times") as err:
        judge.judge_batch([item(2)])
    assert f"injected fault {code}" in str(err.value)  # the server's own message
    assert server.stats["chat"] == 3  # never retried
    wide = make_judge(url, max_client_errors=3)
    with pytest.raises(JudgeError, match=f"injected fault {code}"):  # one batch of 4 is enough
        wide.judge_batch([item(i) for i in range(4)])


def test_transient_client_errors_are_retried_not_counted(serve, make_judge):
    server, url = serve(fail_first=4, error_codes=(408, 409, 429), retry_after=0.01)
    judge = make_judge(url, retries=4, max_client_errors=1)
    assert judge.judge_batch([item()])[0]
    m = judge.pop_metrics()
    assert m["judge/requests"] == 5 and m["judge/retries"] == 4 and m["judge/fallback_rate"] == 0.0


def test_server_messages_are_masked_of_the_key():
    secret = "fake-judge-secret-4411"
    resp = httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {secret}."}})
    message = error_message(resp, secret)
    assert secret not in message and message == "Incorrect API key provided: ***."
    assert error_message(httpx.Response(404, text="no such\n model\n")) == "no such model"
    assert error_message(httpx.Response(400, json={"detail": "bad"})) == "bad"


def test_fallback_rate_guard_waits_for_a_full_window_then_stops(serve, make_judge):
    server, url = serve(error_rate=1.0, error_codes=(500,))
    judge = make_judge(url, retries=0, max_fallback_rate=0.2, fallback_window=10)
    assert judge.judge_batch([item(i) for i in range(9)]) == [None] * 9  # window not full yet
    with pytest.raises(JudgeError, match="max_fallback_rate") as err:
        judge.judge_batch([item(9)])
    assert "10 of the last 10 items fell back" in str(err.value) and "HTTP 500" in str(err.value)
    # a few failures among successes stay under the limit
    ok_server, ok_url = serve(fail_first=2, error_codes=(500,))
    healthy = make_judge(ok_url, retries=0, max_fallback_rate=0.2, fallback_window=10)
    out = healthy.judge_batch([item(i) for i in range(2)]) + healthy.judge_batch(
        [item(i) for i in range(2, 12)]
    )
    assert out.count(None) == 2


def test_fallback_guard_counts_over_a_sliding_window():
    guard = FallbackGuard(0.2, 50)
    guard.observe([True] * 10 + [False] * 39)
    assert guard.exceeded() is None  # 49 items: the window is not full yet
    guard.observe([False])
    assert guard.exceeded() is None  # 10 of 50 = 0.2 is not above 0.2
    guard.observe([True])  # the oldest item (a fallback) leaves the window: still 10 of 50
    assert guard.exceeded() is None
    guard = FallbackGuard(0.2, 50)
    guard.observe([False] * 40 + [True] * 10)
    guard.observe([True])  # a success leaves, a fallback enters: 11 of 50
    assert guard.exceeded() == (11, 50)
    assert FallbackGuard(None, 5).exceeded() is None
    with pytest.raises(ValueError, match="max_fallback_rate"):
        FallbackGuard(1.5, 5)


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_token_limit_param_is_what_the_server_receives(serve, make_judge, param):
    server, url = serve()
    judge = make_judge(url, token_limit_param=param, max_tokens=77)
    assert judge.judge_batch([item()])[0]
    other = ({"max_tokens", "max_completion_tokens"} - {param}).pop()
    assert server.last_body[param] == 77 and other not in server.last_body
    with pytest.raises(ValueError, match="token_limit_param"):
        make_judge(url, token_limit_param="max_output_tokens")


def test_transient_5xx_and_429_then_success_completes(serve, make_judge):
    server, url = serve(fail_first=3, error_codes=(500, 429, 503), retry_after=0.01)
    judge = make_judge(url, retries=3, max_fallback_rate=0.0, fallback_window=1)
    out = judge.judge_batch([item()])
    assert out == [RuleJudge().diagnose(item()).feedback]
    m = judge.pop_metrics()
    assert m["judge/requests"] == 4 and m["judge/retries"] == 3 and m["judge/fallback_rate"] == 0.0
    assert server.stats["errors"] == 3
