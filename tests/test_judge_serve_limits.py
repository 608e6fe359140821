"""The served judge under hostile input (issue 27): a body cap, bad headers refused, bounded concurrency, a key.

Loopback only, and every loop is bounded in count and time. The RSS, log and start-up checks run
`python -m visd_exp.judge.serve` as a subprocess, so the memory and output measured are the server's own;
the rest serve in-process (start_server) to read the server's counters.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from visd_exp.judge import JudgeItem
from visd_exp.judge.http import HttpJudge
from visd_exp.judge.limits import MIB, Limits, check_exposure
from visd_exp.judge.prompts import build_messages
from visd_exp.judge.serve import start_server, stop

CHAT = "/v1/chat/completions"
KEY_VAR = "VISD_TEST_JUDGE_KEY"
KEY = "sk-test-9f3c1e7a-only-in-this-test"


def item(i: int = 0) -> JudgeItem:
    completion = f"<think>The square appears at <t>{2 + i % 3}.5</t>s.</think><answer>From <t>2.0</t>s to <t>{4 + i}.0</t>s</answer>"
    evidence = {
        "segment": [2.0, 5.0],
        "key_frames": [{"time": 3.0, "objects": {"red square": [[10, 10, 50, 50]]}}],
    }
    return JudgeItem(
        "temporal_grounding",
        f"When is the red square visible? ({i})",
        "From <t>2.0</t>s to <t>5.0</t>s",
        evidence,
        completion,
    )


def chat_body(i: int = 0) -> bytes:
    return json.dumps({"model": "visd-rule-judge", "messages": build_messages(item(i))}).encode()


def request(
    method: str, path: str, body: bytes = b"", headers: dict | None = None, length: bool = True
) -> bytes:
    """Raw request bytes; ``length=False`` leaves Content-Length out (headers may set their own)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: dict
    sent: int = 0  # bytes the client got onto the wire before the reply
    interim: tuple[int, ...] = ()  # 1xx replies before it (100 Continue)


def _parse(buf: bytes) -> Reply | None:
    interim = ()
    while b"\r\n\r\n" in buf:
        head, rest = buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        if status < 200:  # 100 Continue: the final reply follows
            buf, interim = rest, (*interim, status)
            continue
        n = int(headers.get("content-length", "0"))
        if len(rest) < n:
            return None
        return Reply(status, headers, json.loads(rest[:n]) if n else {}, interim=interim)
    return None


def exchange(port: int, data: bytes, stream: int = 0, drip: float | None = None, timeout: float = 10.0):
    """Send ``data`` (one byte per ``drip`` seconds when set), then up to ``stream`` more body bytes while
    waiting for the server's reply, which is returned parsed (None: the connection closed without one)."""
    pending, left, sent, buf = memoryview(data), stream, 0, b""
    chunk, next_send = b"x" * 65536, 0.0
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setblocking(False)
        while (now := time.monotonic()) < deadline:
            writing = (len(pending) > 0 or left > 0) and now >= next_send
            readable, writable, _ = select.select([sock], [sock] if writing else [], [], 0.02)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                buf += data
                if (reply := _parse(buf)) is not None:
                    reply.sent = sent
                    return reply
            if writable:
                try:
                    if pending:
                        n = sock.send(pending[:1] if drip else pending)
                        pending, next_send = pending[n:], (now + drip if drip else 0.0)
                    else:
                        n = sock.send(chunk[: min(left, len(chunk))])
                        left -= n
                    sent += n
                except BlockingIOError:
                    pass
                except OSError:  # the server closed its side: read what it said
                    pending, left = memoryview(b""), 0
    return _parse(buf)


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (/proc/<pid>/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class RssPeak:
    """The peak VmRSS of a process, sampled every 5 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.peak = vm_rss(pid)
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, vm_rss(self.pid))

    def __enter__(self) -> RssPeak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, vm_rss(self.pid))

    @property
    def rise(self) -> int:
        return self.peak - self.baseline


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


@pytest.fixture
def spawn(tmp_path):
    """spawn(*args, env=...) -> Served: `python -m visd_exp.judge.serve` on a free loopback port, its
    stdout and stderr in one file; stopped at teardown."""
    procs = []

    def _spawn(*args: str, env: dict | None = None, wait: bool = True) -> Served:
        port = free_port()
        log_path = str(tmp_path / f"serve-{port}.log")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "wb") as log:
            cmd = [sys.executable, "-m", "visd_exp.judge.serve", "--port", str(port), *args]
            proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        served = Served(proc, port, log_path)
        deadline = time.monotonic() + 30
        while wait:
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"server did not start: {served.log()}"
            )
            try:
                reply = exchange(port, request("GET", "/health"), timeout=1.0)
                if reply is not None and reply.status == 200:
                    break
            except OSError:  # not listening yet
                pass
            time.sleep(0.05)
        return served

    yield _spawn
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def serve():
    """serve(limits=..., api_key=..., **faults) -> (server, port), in-process; stopped at teardown."""
    started = []

    def _start(**kw):
        server, thread, _ = start_server("127.0.0.1", 0, **kw)
        started.append((server, thread))
        return server, server.server_address[1]

    yield _start
    for server, thread in started:
        stop(server, thread)


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def assert_serves(port: int, headers: dict | None = None) -> None:
    reply = exchange(port, request("POST", CHAT, chat_body(), headers))
    assert reply is not None and reply.status == 200, reply
    assert json.loads(reply.body["choices"][0]["message"]["content"])["feedback"]


# -- the body cap ---------------------------------------------------------------------------------------------


def test_a_200_mb_post_gets_413_and_the_server_rss_stays_flat(spawn):
    served = spawn()  # the default cap, 4 MiB
    assert_serves(served.port)  # warm: the judge's code paths are loaded before the baseline
    head = request("POST", CHAT, headers={"Content-Length": str(200 * MIB)}, length=False)
    # Declared 200 MB; 1 MiB goes with the head and up to 16 MiB more while the client waits.
    with RssPeak(served.proc.pid) as rss:
        reply = exchange(served.port, head + b"x" * MIB, stream=16 * MIB)
    assert reply is not None and reply.status == 413, reply
    assert "4194304" in reply.body["error"]["message"] and reply.headers["connection"] == "close"
    print(f"200 MB POST: server RSS {rss.baseline / MIB:.1f} -> peak {rss.peak / MIB:.1f} MiB")
    assert rss.rise < 4 * MIB + 3 * MIB  # the acceptance bound: the cap plus a few MiB
    assert rss.rise < MIB  # in fact none of the body is buffered: refused on its declared size
    assert_serves(served.port)


def test_a_client_that_sends_its_whole_oversized_body_still_reads_the_413(serve):
    """http.client gives up on a write error without reading the reply: the server drains (up to 4x the
    cap, 1 s) before closing, so the client sees 413 rather than a reset. 3x the default cap here."""
    _, port = serve()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", CHAT, body=b"x" * (12 * MIB))
        reply = conn.getresponse()
        assert reply.status == 413 and b"4194304" in reply.read()
    finally:
        conn.close()
    assert_serves(port)


@pytest.mark.parametrize("value", ["abc", "-5", "", "+5", "1_0", "5, 6", "\u00b2"])
def test_a_malformed_content_length_gets_400_naming_the_header(serve, value):
    server, port = serve()
    reply = exchange(port, request("POST", CHAT, headers={"Content-Length": value}, length=False) + b"{}")
    assert reply is not None and reply.status == 400, reply
    assert "Content-Length" in reply.body["error"]["message"]
    assert server.stats["bad_requests"] == 1 and server.stats["chat"] == 0
    assert_serves(port)


@pytest.mark.parametrize(
    "headers, status, says",
    [
        ({}, 400, "Content-Length header is required"),
        ({"Content-Length": "5\r\nContent-Length: 6"}, 400, "given twice"),
        ({"Transfer-Encoding": "chunked"}, 411, "Transfer-Encoding"),
        ({"Content-Length": "5", "Transfer-Encoding": "chunked"}, 411, "Transfer-Encoding"),
        ({"Content-Length": "1048577"}, 413, "1048576"),
        ({"Content-Length": "9" * 40}, 413, "1048576"),  # no int of 40 digits is ever built
        ({"Content-Length": "1048577", "Expect": "100-continue"}, 413, "1048576"),  # before 100 Continue
    ],
)
def test_bodies_the_server_will_not_read_are_refused_first(serve, headers, status, says):
    server, port = serve(limits=Limits(max_body_bytes=MIB))
    reply = exchange(port, request("POST", CHAT, headers=headers, length=False) + b"5\r\nhello\r\n0\r\n\r\n")
    assert reply is not None and reply.status == status and says in reply.body["error"]["message"], reply
    assert not reply.interim  # with Expect: 100-continue, refused instead of inviting the body
    assert server.stats["chat"] == 0  # refused before a body was read or a fault drawn
    assert_serves(port)


def test_a_body_at_the_cap_is_read_and_one_byte_over_is_not(serve):
    server, port = serve(limits=Limits(max_body_bytes=len(chat_body())))
    assert_serves(port)
    over = request("POST", CHAT, chat_body() + b" ")
    assert exchange(port, over).status == 413 and server.stats["too_large"] == 1


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"POST /v1/chat/completions HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(101)), 431),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 9000) for i in range(9)),
            431,
        ),
        (b"DELETE /v1/models HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501),
        (b"POST /v1/elsewhere HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 404),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
    ],
)
def test_malformed_requests_get_a_json_error_not_a_dropped_connection(serve, raw, status):
    _, port = serve()
    reply = exchange(port, raw)
    assert reply is not None and reply.status == status, reply
    assert reply.body["error"]["code"] == status and reply.body["error"]["message"]
    assert_serves(port)


# -- deadlines and bounded concurrency ------------------------------------------------------------------------


def test_slow_senders_get_408_and_give_their_thread_and_slot_back(serve):
    server, port = serve(limits=Limits(request_timeout=0.5))
    t0 = time.monotonic()
    reply = exchange(port, request("POST", CHAT, chat_body()), drip=0.05)  # the head a byte at a time
    assert reply is not None and reply.status == 408 and 0.45 < time.monotonic() - t0 < 3.0, reply
    head = request("POST", CHAT, headers={"Content-Length": "1000"}, length=False)
    reply = exchange(port, head + b"{" * 10)  # the rest of the body never comes
    assert reply is not None and reply.status == 408 and server.stats["timeouts"] == 2
    wait_for(lambda: server.connections == 0 and server.in_flight == 0)
    assert_serves(port)


def test_past_max_concurrency_the_next_request_gets_503_with_retry_after(serve):
    server, port = serve(limits=Limits(max_concurrency=2, busy_retry_after=0.5), latency=0.5)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(exchange, port, request("POST", CHAT, chat_body(i))) for i in range(2)]
        wait_for(lambda: server.in_flight == 2)
        reply = exchange(port, request("POST", CHAT, chat_body(3)))
        assert reply is not None and reply.status == 503, reply
        assert reply.headers["retry-after"] == "0.5" and "busy" in reply.body["error"]["message"]
        assert [f.result(timeout=10).status for f in held] == [200, 200]
    assert server.stats["busy"] == 1 and server.stats["chat"] == 2  # the refused one never reached the judge
    assert_serves(port)


def test_bodies_in_flight_share_one_byte_budget(serve):
    """A body buffered or being judged holds its declared size against max_buffered_bytes until it is done."""
    limits = Limits(max_body_bytes=MIB, max_buffered_bytes=MIB + 64 * 1024, request_timeout=1.0)
    server, port = serve(limits=limits)
    at_cap = request("POST", CHAT, headers={"Content-Length": str(MIB)}, length=False)
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(exchange, port, at_cap + b"{")  # admitted, then its body never comes
        wait_for(lambda: server.buffered == MIB)
        reply = exchange(port, at_cap + b"x" * MIB)
        assert reply.status == 503 and "bytes of bodies" in reply.body["error"]["message"], reply
        assert "retry-after" in reply.headers and server.in_flight == 1  # not the request count: the bytes
        assert_serves(port)  # a G.2 prompt (a few KiB) still fits beside it
        assert holder.result(timeout=10).status == 408
    assert server.buffered == 0 and server.in_flight == 0
    assert exchange(port, at_cap + b"x" * MIB).status == 400  # admitted now: read, and it is not JSON


def test_past_max_connections_a_new_connection_gets_503(serve):
    server, port = serve(limits=Limits(max_concurrency=2, max_connections=2, busy_retry_after=0.2))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        wait_for(lambda: server.connections == 2)
        reply = exchange(port, request("POST", CHAT, chat_body()))
        assert reply is not None and reply.status == 503 and reply.headers["retry-after"] == "0.2", reply
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: server.connections == 0)
    assert_serves(port)


def test_the_http_judge_waits_out_503_retry_after(serve):
    """http.py retries 503 (any 5xx) after the server's Retry-After, capped by backoff_max."""
    server, port = serve(limits=Limits(max_concurrency=1, busy_retry_after=0.3), latency=0.2)
    judge = HttpJudge(
        f"http://127.0.0.1:{port}/v1", "visd-rule-judge", api_key_env=None, api_key_required=False,
        max_concurrency=3, retries=6, backoff_base=0.001, backoff_max=5.0, timeout=5,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        out = judge.judge_batch([item(i) for i in range(3)])
        wall = time.monotonic() - t0
        metrics = judge.pop_metrics()
    finally:
        judge.close()
    assert all(out) and server.stats["busy"] >= 2 and metrics["judge/retries"] >= 2
    # Jittered backoff alone (base 1 ms) would have spent the 6 retries in well under 0.1 s and fallen back.
    assert wall >= 0.6


# -- the API key ----------------------------------------------------------------------------------------------


def test_with_a_key_requests_without_it_get_401(serve, monkeypatch):
    server, port = serve(api_key=KEY)
    for auth in (None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer"):
        headers = {"Authorization": auth} if auth else {}
        reply = exchange(port, request("POST", CHAT, chat_body(), headers))
        assert reply is not None and reply.status == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert KEY not in json.dumps(reply.body)
    assert exchange(port, request("GET", "/v1/models")).status == 401
    assert exchange(port, request("GET", "/health")).status == 200  # liveness needs no key
    assert server.stats["unauthorized"] == 6 and server.stats["chat"] == 0
    assert_serves(port, {"Authorization": f"Bearer {KEY}"})
    monkeypatch.setenv(KEY_VAR, KEY)
    with HttpJudge(f"http://127.0.0.1:{port}/v1", "visd-rule-judge", api_key_env=KEY_VAR, timeout=5) as judge:
        assert all(judge.judge_batch([item(1), item(2)]))


def test_the_key_never_reaches_the_server_log(spawn):
    served = spawn("--api-key-env", KEY_VAR, "--verbose", env={KEY_VAR: KEY})
    assert_serves(served.port, {"Authorization": f"Bearer {KEY}"})
    for raw in (
        request("POST", CHAT, chat_body(), {"Authorization": f"Bearer {KEY}x"}),
        request("GET", f"/v1/models?key={KEY}"),  # a client that put it in the URL
        f"{KEY} garbage\r\n\r\n".encode(),  # and in a request line the parser rejects
    ):
        assert exchange(served.port, raw) is not None
    time.sleep(0.2)
    log = served.log()
    assert f"${KEY_VAR}" in log and '"GET /v1/models?key=***' in log and " 401 " in log and " 200 " in log
    assert KEY not in log


def test_an_exposed_host_without_a_key_refuses_to_start(spawn):
    served = spawn("--host", "0.0.0.0", wait=False)  # refused before any port is bound
    assert served.proc.wait(timeout=30) == 2
    assert "--api-key-env" in served.log() and "--insecure" in served.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
    unset = spawn("--api-key-env", "VISD_TEST_UNSET_VAR", wait=False, env={"VISD_TEST_UNSET_VAR": ""})
    assert unset.proc.wait(timeout=30) == 2 and "VISD_TEST_UNSET_VAR" in unset.log()


def test_exposure_rules():
    assert (
        check_exposure("127.0.0.1", False, False) is None
        and check_exposure("localhost", False, False) is None
    )
    assert check_exposure("::1", False, False) is None and check_exposure("0.0.0.0", True, False) is None
    assert "WARNING" in check_exposure("0.0.0.0", False, True)
    for host in ("0.0.0.0", "", "192.168.1.5", "judge.example.org"):
        with pytest.raises(ValueError, match="--insecure"):
            check_exposure(host, False, False)


# -- everything at once ---------------------------------------------------------------------------------------


def test_load_and_faults_mixed_over_loopback(spawn, monkeypatch):
    """Oversized, within-cap garbage, malformed, chunked, slow and unauthenticated requests alongside a
    training run's judge: every valid request answered, every bad one refused with its code, RSS bounded."""
    cap, budget = MIB, 2 * MIB
    served = spawn(
        "--max-body-bytes", str(cap), "--max-buffered-bytes", str(budget), "--max-concurrency", "4",
        "--max-connections", "48",
        "--request-timeout", "1", "--busy-retry-after", "0.2", "--api-key-env", KEY_VAR, env={KEY_VAR: KEY},
    )  # fmt: skip
    port, auth = served.port, {"Authorization": f"Bearer {KEY}"}
    monkeypatch.setenv(KEY_VAR, KEY)
    judge = HttpJudge(
        f"http://127.0.0.1:{port}/v1", "visd-rule-judge", api_key_env=KEY_VAR, max_concurrency=4,
        retries=8, backoff_max=1.0, timeout=5, max_fallback_rate=None,
    )  # fmt: skip
    slow_body = request("POST", CHAT, headers={**auth, "Content-Length": str(cap)}, length=False) + b"{"
    oversized = request("POST", CHAT, headers={**auth, "Content-Length": str(200 * MIB)}, length=False)
    bad = [  # (request bytes, how exchange sends it, the codes it may get)
        *[(oversized + b"x" * 65536, {"stream": 4 * MIB}, {413})] * 8,
        *[(request("POST", CHAT, b"\xff" * cap, auth), {}, {400, 503})] * 6,  # admitted and read, or busy
        *[(slow_body, {}, {408, 503})] * 4,  # hold a slot until the deadline, if they get one
        *[(request("POST", CHAT, headers={**auth, "Content-Length": v}, length=False), {}, {400})
          for v in ("abc", "-1", "0x10")] * 2,
        *[(request("POST", CHAT, headers={**auth, "Transfer-Encoding": "chunked"}, length=False), {}, {411})] * 3,
        *[(request("POST", CHAT, chat_body(), auth), {"drip": 0.1}, {408})] * 4,
        *[(request("POST", CHAT, chat_body()), {}, {401})] * 4,
        *[(b"\x16\x03\x01 not http\r\n\r\n", {}, {400})] * 2,
    ]  # fmt: skip
    try:
        with RssPeak(served.proc.pid) as rss, ThreadPoolExecutor(len(bad) + 1) as pool:
            t0 = time.monotonic()
            valid = pool.submit(judge.judge_batch, [item(i) for i in range(24)])
            futures = [pool.submit(exchange, port, raw, **how) for raw, how, _ in bad]
            replies = [f.result(timeout=30) for f in futures]
            feedback = valid.result(timeout=60)
            wall = time.monotonic() - t0
        metrics = judge.pop_metrics()
    finally:
        judge.close()
    got = [(r.status if r else None) for r in replies]
    busy = got.count(503)
    assert all(code in codes for code, (_, _, codes) in zip(got, bad)), got
    assert all("retry-after" in r.headers for r in replies if r.status == 503)
    assert all(feedback) and metrics["judge/fallback_rate"] == 0.0  # every valid request answered
    assert busy + metrics["judge/retries"] > 0  # the slots were full at times: the bound was exercised
    # Bodies are buffered only inside a slot, within the byte budget; these cost a few times their size
    # (the bytes and a failed decode: none is judged), so the peak stays within a small multiple of it.
    print(
        f"load: {len(bad)} bad + 24 valid in {wall:.2f} s; codes {sorted(set(got))} ({busy} x 503); judge retries "
        f"{metrics['judge/retries']:.0f}; server RSS {rss.baseline / MIB:.1f} -> peak {rss.peak / MIB:.1f} MiB (+{rss.rise / MIB:.1f})"
    )
    assert rss.rise < 4 * budget + 8 * MIB
    assert wall < 15
    assert_serves(port, auth)  # still serving afterwards
    assert exchange(port, request("GET", "/health")).status == 200
