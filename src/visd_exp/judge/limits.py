"""The served judge's defences against hostile input: caps, deadlines, bounded concurrency, a key.

``GuardedServer`` / ``GuardedHandler`` are a ThreadingHTTPServer and a request handler that serve.py builds
its judge on. What they refuse, and with which status, before any of a request's body is read:

- 401 without ``Authorization: Bearer <key>`` when the server has a key (every route but /health);
- 400 for a POST whose Content-Length is missing, negative, not a number or given twice with two values;
  411 for any Transfer-Encoding (chunked bodies are not read at all); 413 for a declared body above
  ``max_body_bytes``; 431 for a request head above MAX_HEAD_BYTES;
- 503 + Retry-After past ``max_concurrency`` chat requests in flight (body being read or judged) or past
  ``max_buffered_bytes`` of their declared bodies, and for a new connection past ``max_connections`` open
  ones (each holds a thread);
- 408 when a request is not in within ``request_timeout`` of its first byte (slow senders).

Every refusal closes the connection (its framing is no longer trusted) after a bounded linger that drops
what the client is still sending, so the client reads the reply instead of a reset. The key is compared in
constant time and masked out of every log line.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIB = 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; an OpenAI client sends well under 1 KiB
LINGER_S = 1.0  # a refused connection's leftover body is drained this long before the socket closes
DRAIN_CAPS = 4  # and at most this many times max_body_bytes (dropped as read: it costs no memory)
ERROR_TYPES = {401: "authentication_error", 404: "not_found", 408: "timeout", 503: "server_busy"}
STAT_NAMES = {400: "bad_requests", 401: "unauthorized", 408: "timeouts", 411: "length_required"}
STAT_NAMES |= {413: "too_large", 431: "too_large", 503: "busy"}


@dataclass(frozen=True)
class Limits:
    """What one server accepts. The defaults suit the rule judge on two cores behind one training run."""

    max_body_bytes: int = 4 * MIB  # a G.2 prompt is a few KiB
    # Chat requests admitted at once (each may buffer a body). A diagnosis takes ~0.2 ms under the GIL,
    # so more would not add throughput; 16 is judge.max_concurrency's default: one run never sees 503.
    max_concurrency: int = 16
    # Declared bodies of the requests in flight, together: two at the cap, or one and plenty of small ones.
    # A body costs up to ~17x its size while judged (measured on timestamp-dense text: the bytes, their
    # text, the rule judge's parse), so this, not max_concurrency x max_body_bytes, bounds the RSS.
    max_buffered_bytes: int = 8 * MIB
    max_connections: int = 64  # open connections (threads), idle keep-alive ones included
    request_timeout: float = 10.0  # seconds from a request's first byte to the end of its body
    idle_timeout: float = 30.0  # a keep-alive connection with no request for this long is closed
    busy_retry_after: float = 1.0  # Retry-After on 503

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_concurrency", "max_connections"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                "max_buffered_bytes must be >= max_body_bytes (else a body at the cap never fits)"
            )
        if self.max_connections < self.max_concurrency:
            raise ValueError("max_connections must be >= max_concurrency (each request needs a connection)")
        if min(self.request_timeout, self.idle_timeout) <= 0 or self.busy_retry_after < 0:
            raise ValueError("timeouts must be > 0 and busy_retry_after >= 0")


class Refusal(Exception):
    """A request answered with an error status instead of being served."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = int(status), message, dict(headers or {})


def content_length(headers, max_body_bytes: int) -> int:
    """The declared body size of a POST; Refusal (400, 411, 413) when it cannot or must not be read."""
    if headers.get("Transfer-Encoding") is not None:
        raise Refusal(411, "Transfer-Encoding bodies are not accepted: send the body with a Content-Length")
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if not values:
        raise Refusal(400, "the Content-Length header is required on POST")
    if len(values) > 1:
        raise Refusal(400, "the Content-Length header is given twice with different values")
    value = values.pop()
    if value.startswith("-") and value[1:].isascii() and value[1:].isdigit():
        raise Refusal(400, f"the Content-Length header is negative ({value[:20]})")
    if not (value.isascii() and value.isdigit()):  # int() would also take "+5", "1_0", " 5" and "٥"
        raise Refusal(400, f"the Content-Length header is not a number: {value[:40]!r}")
    if len(value) > 18 or int(value) > max_body_bytes:
        raise Refusal(
            413, f"the body ({value[:20]} bytes) is over this server's limit of {max_body_bytes} bytes"
        )
    return int(value)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name (or "" = every interface): assume it is reachable from outside
        return False


def check_exposure(host: str, has_key: bool, insecure: bool) -> str | None:
    """A warning when serving ``host`` is exposed; ValueError when it must not start at all."""
    if is_loopback(host) or has_key:
        return None
    if not insecure:
        raise ValueError(
            f"refusing to serve on {host or 'every interface'!r} without an API key: anyone who can reach "
            f"it could use the judge. Export a key and pass --api-key-env VAR (clients then send "
            f"'Authorization: Bearer <key>'), bind 127.0.0.1, or pass --insecure to serve it unauthenticated"
        )
    return (
        f"WARNING: serving on {host or 'every interface'!r} with no API key (--insecure): anyone can call it"
    )


def api_key_from_env(var: str) -> str:
    """The key clients must send, from the environment variable named by --api-key-env."""
    key = os.environ.get(var, "").strip()
    if not key:
        raise ValueError(f"--api-key-env {var}: the environment variable {var} is not set or empty")
    return key


def _bearer_matches(header: str | None, key: str) -> bool:
    scheme, _, token = (header or "").strip().partition(" ")
    # compare_digest: the time taken does not tell a guesser how many leading characters were right.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _drain(sock: socket.socket, seconds: float, max_bytes: int) -> None:
    """Half-close, then read and drop up to ``max_bytes`` for ``seconds`` into one small buffer: closing a
    socket with unread input sends a reset, which can destroy the reply before the client reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        buf, got, deadline = bytearray(64 * 1024), 0, time.monotonic() + seconds
        while got < max_bytes and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
    except OSError:
        pass


class DeadlineReader(io.RawIOBase):
    """A connection's reads: idle_timeout until a request's first byte, then one deadline for the whole
    request (head and body), so a client sending a byte at a time cannot hold its thread; the head is
    capped at MAX_HEAD_BYTES (the standard parser alone would take 100 lines of 64 KiB)."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self.sock, self.limits = sock, limits
        self.start_request()

    def readable(self) -> bool:
        return True

    def start_request(self) -> None:
        self.deadline: float | None = None
        self.head_bytes: int | None = 0  # None once the head is parsed

    @property
    def started(self) -> bool:
        return self.deadline is not None

    def readinto(self, buf) -> int:
        if self.deadline is None:
            timeout = self.limits.idle_timeout
        elif (timeout := self.deadline - time.monotonic()) <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(timeout)
        n = self.sock.recv_into(buf)
        if n and self.deadline is None:
            self.deadline = time.monotonic() + self.limits.request_timeout
        if self.head_bytes is not None:
            self.head_bytes += n
            if self.head_bytes > MAX_HEAD_BYTES + io.DEFAULT_BUFFER_SIZE:  # the buffer reads ahead
                raise Refusal(431, f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
        return n


class GuardedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap, an in-flight cap, stats and an optional key."""

    daemon_threads = True
    request_queue_size = 128  # a burst of concurrent clients must not overflow the listen backlog

    def __init__(self, address, handler, limits: Limits | None, api_key: str | None, verbose: bool) -> None:
        self.limits = limits or Limits()
        self.api_key = api_key or None
        self.verbose = verbose
        self.stats: Counter = Counter()  # request and refusal counts (tests read them)
        self.connections = self.in_flight = self.buffered = 0
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    @contextmanager
    def slot(self, length: int):
        """Admission of one chat request with a ``length``-byte body; Refusal(503) while max_concurrency
        requests are in flight or their bodies and this one would pass max_buffered_bytes."""
        lim = self.limits
        with self._lock:
            crowded = self.in_flight >= lim.max_concurrency
            heavy = self.buffered + length > lim.max_buffered_bytes
            if not (crowded or heavy):
                self.in_flight, self.buffered = self.in_flight + 1, self.buffered + length
        if crowded or heavy:
            why = (
                f"{lim.max_concurrency} requests" if crowded else f"{lim.max_buffered_bytes} bytes of bodies"
            )
            raise Refusal(
                503,
                f"the judge server is busy ({why} in flight); retry later",
                {"Retry-After": f"{lim.busy_retry_after:g}"},
            )
        try:
            yield
        finally:
            with self._lock:
                self.in_flight, self.buffered = self.in_flight - 1, self.buffered - length

    def process_request(self, request, client_address) -> None:
        with self._lock:
            full = self.connections >= self.limits.max_connections
            self.connections += not full
        if not full:
            try:
                super().process_request(request, client_address)  # a thread per connection, now bounded
            except BaseException:
                with self._lock:
                    self.connections -= 1
                raise
            return
        self.count("busy")
        body = json.dumps({"error": {"message": "too many open connections", "type": "server_busy"}})
        reply = (
            f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
            f"{len(body)}\r\nRetry-After: {self.limits.busy_retry_after:g}\r\nConnection: close\r\n\r\n{body}"
        )
        try:  # on the accept thread, so nothing here may block: what was sent is read, the reply fits
            request.setblocking(False)
            try:
                request.recv(MAX_HEAD_BYTES)
            except BlockingIOError:
                pass
            request.send(reply.encode())
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            request.close()

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.connections -= 1

    def handle_error(self, request, client_address) -> None:
        # Clients that time out close their socket mid-reply; that is expected, not worth a traceback.
        if self.verbose:
            super().handle_error(request, client_address)


class GuardedHandler(BaseHTTPRequestHandler):
    """Reads a request only within the server's Limits; every error reply is an OpenAI-style JSON error."""

    protocol_version = "HTTP/1.1"  # keep-alive, so a client pool reuses connections
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms each.
    disable_nagle_algorithm = True
    server: GuardedServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file; reads go through the deadline reader instead
        self.reader = DeadlineReader(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self.reader)

    def log_message(self, format, *args) -> None:
        if self.server.verbose:
            line = f"{self.address_string()} - - [{self.log_date_time_string()}] {format % args}"
            key = self.server.api_key
            sys.stderr.write((line.replace(key, "***") if key else line) + "\n")

    def handle_one_request(self) -> None:
        # The standard loop, plus: a deadline per request, and Refusal / timeouts answered, not dropped.
        self.reader.start_request()
        self.requestline, self.request_version, self.command = "", "HTTP/1.1", None
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                raise Refusal(414, "the request line is over 65536 bytes")
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.reader.head_bytes = None
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                raise Refusal(501, f"unsupported method {self.command[:20]!r}")
            method()
        except Refusal as refusal:
            self.refuse(refusal)
        except TimeoutError:
            if self.reader.started:  # a request began and did not arrive in time; else an idle connection
                self.refuse(
                    Refusal(
                        408, f"the request was not received within {self.reader.limits.request_timeout:g} s"
                    )
                )
            self.close_connection = True
        except ConnectionError:
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        # Refuse before the client sends the body it is holding back, not after (curl waits for this).
        try:
            self.admit(body=self.command == "POST")
        except Refusal as refusal:
            self.refuse(refusal)
            return False
        return super().handle_expect_100()

    def admit(self, body: bool) -> int:
        """The checks on a request's head, before its body: the key, then (``body``) the body's size."""
        key, path = self.server.api_key, self.path.split("?", 1)[0].rstrip("/")
        if (
            key
            and path not in ("/health", "/v1/health")
            and not _bearer_matches(self.headers.get("Authorization"), key)
        ):
            raise Refusal(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
        return content_length(self.headers, self.server.limits.max_body_bytes) if body else 0

    def read_body(self, length: int) -> bytearray:
        """Exactly ``length`` bytes (at most max_body_bytes, checked by admit), within the request deadline;
        read into one buffer of that size (json.loads takes it as is: no second copy)."""
        buf, got = bytearray(length), 0
        view = memoryview(buf)
        while got < length:
            n = self.rfile.readinto(view[got:])
            if not n:
                raise ConnectionError("the client closed the connection before its body was complete")
            got += n
        return buf

    def reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        if self.request_version == "HTTP/0.9":  # a garbage request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        try:
            self.connection.settimeout(self.server.limits.request_timeout)  # a client that never reads
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # broken pipe, reset, or a write timeout
            self.close_connection = True

    def refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal``, then close: what is left of the request is drained (bounded), not parsed."""
        self.server.count(STAT_NAMES.get(refusal.status, "refused"))
        message, key = refusal.message, self.server.api_key
        message = message.replace(key, "***") if key else message  # the parser quotes request lines back
        error = {"message": message, "type": ERROR_TYPES.get(refusal.status, "invalid_request_error")}
        self.close_connection = True
        self.reply(
            refusal.status,
            {"error": {**error, "code": refusal.status}},
            {**refusal.headers, "Connection": "close"},
        )
        limits = self.server.limits
        _drain(self.connection, min(LINGER_S, limits.request_timeout), DRAIN_CAPS * limits.max_body_bytes)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard parser's errors (bad request line, too many headers, HTTP/2): JSON, like the rest.
        phrase = message or HTTPStatus(code).phrase
        self.refuse(Refusal(code, f"{phrase}: {explain}" if explain else phrase))
