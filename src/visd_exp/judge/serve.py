"""A local OpenAI-compatible judge server backed by the rule judge, with fault injection.

    python -m visd_exp.judge.serve --host 127.0.0.1 --port 8008 [--latency 0.2] [--error-rate 0.3]
        [--error-codes 500,429] [--malformed-rate 0.1] [--malformed-kind mixed] [--retry-after 1]
        [--fail-first 0] [--seed 0] [--max-body-bytes 4194304] [--max-concurrency 16]
        [--max-buffered-bytes 8388608] [--max-connections 64] [--request-timeout 10] [--busy-retry-after 1]
        [--api-key-env VAR] [--insecure] [--verbose]

Endpoints: POST /v1/chat/completions, GET /v1/models. The user message may come from any client: it is
read as the paper's Appendix G.2 user prompt (by its field labels, whatever the system prompt; see
protocol.py), else with the paraphrase user template (or ``--user-template``). The rule judge diagnoses
the item and the reply's content is ``{"feedback": "..."}``. A request that cannot be read gets HTTP 400
with an OpenAI-style error naming what is missing; a diagnosis that fails gets 500. Injected faults
(429 replies carry Retry-After) come before the request is read.

Hostile input is refused before any body is read (limits.py): 401 without the key (``--api-key-env``),
400/411/413 for a missing, malformed, chunked or oversized body, 503 + Retry-After past
``--max-concurrency`` requests (or ``--max-buffered-bytes`` of bodies) in flight, 408 for slow senders. A non-loopback ``--host`` needs a key or
``--insecure``. Standard library only (ThreadingHTTPServer), so it runs anywhere the package imports.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from visd_exp.judge.limits import (
    GuardedHandler,
    GuardedServer,
    Limits,
    Refusal,
    api_key_from_env,
    check_exposure,
)
from visd_exp.judge.prompts import load_template
from visd_exp.judge.protocol import ProtocolError, read_request
from visd_exp.judge.rule import RuleJudge

MODEL_ID = "visd-rule-judge"
MALFORMED_KINDS = ("mixed", "prose", "garbage", "empty")
CHAT_ROUTES = ("/v1/chat/completions", "/chat/completions")


@dataclass
class FaultOptions:
    """Injected faults. Errors and malformed replies are drawn from one seeded RNG, in request order."""

    latency: float = 0.0  # seconds slept before every chat reply (faults included)
    error_rate: float = 0.0  # share of chat requests answered with one of error_codes
    error_codes: tuple[int, ...] = (500, 429)
    malformed_rate: float = 0.0  # share of 200 replies whose content is not clean JSON
    malformed_kind: str = "mixed"  # prose (repairable) | garbage (not) | empty feedback | mixed
    retry_after: float = 1.0  # Retry-After seconds on injected 429s
    fail_first: int = 0  # the first N chat requests fail (cycling through error_codes): deterministic tests
    seed: int = 0


class JudgeServer(GuardedServer):
    def __init__(
        self,
        address,
        faults: FaultOptions,
        verbose: bool = False,
        user_template=None,
        limits: Limits | None = None,
        api_key: str | None = None,
    ) -> None:
        if faults.malformed_kind not in MALFORMED_KINDS:
            raise ValueError(f"malformed_kind must be one of {MALFORMED_KINDS}")
        super().__init__(address, _Handler, limits, api_key, verbose)
        self.faults = faults
        self.judge = RuleJudge()
        # Exact templates tried when a message is not G.2: the paraphrase, and the one given, if any.
        self.user_templates = [load_template(None, "user", "paraphrase")]
        if user_template is not None:
            self.user_templates.append(load_template(user_template, "user"))
        # stats: requests, chat, ok, errors, malformed, authorized, and refusals by kind (limits.STAT_NAMES)
        self.last_body: dict | None = None  # the last chat request body (tests check its parameters)
        self._rng = random.Random(faults.seed)

    def draw_faults(self) -> tuple[int | None, str | None]:
        """(error status or None, malformed kind or None) for the next chat request."""
        f = self.faults
        with self._lock:
            n = self.stats["chat"]
            self.stats["chat"] += 1
            error_roll, malformed_roll, kind_roll = self._rng.random(), self._rng.random(), self._rng.random()
            code_roll = self._rng.randrange(len(f.error_codes)) if f.error_codes else 0
            code = None
            if f.error_codes and n < f.fail_first:
                code = f.error_codes[n % len(f.error_codes)]
            elif f.error_codes and error_roll < f.error_rate:
                code = f.error_codes[code_roll]
            malformed = None
            if code is None and malformed_roll < f.malformed_rate:
                malformed = f.malformed_kind
                if malformed == "mixed":
                    malformed = "prose" if kind_roll < 0.5 else "garbage"
            self.stats["errors" if code else "malformed" if malformed else "ok"] += 1
        return code, malformed

    def feedback_for(self, body: object) -> str:
        """Rule-judge feedback for a chat request body; ProtocolError when it cannot be read."""
        return self.judge.diagnose(read_request(body, self.user_templates)).feedback


def _malform(content: str, kind: str) -> str:
    if kind == "prose":
        return f"Sure, here is my assessment:\n```json\n{content}\n```\nLet me know if you need more."
    if kind == "empty":
        return json.dumps({"feedback": "   "})
    return "feedback: the student did fine, I think (no JSON here)"


class _Handler(GuardedHandler):
    server: JudgeServer

    def do_GET(self) -> None:
        self.server.count("requests")
        self.admit(body=False)
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # a GET body is not read, so what follows it is not a request
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "visd-exp"}
            self.reply(200, {"object": "list", "data": [model]})
        elif path in ("/health", "/v1/health"):
            self.reply(200, {"status": "ok"})
        else:
            self.reply(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def do_POST(self) -> None:
        with self.server._lock:
            self.server.stats["requests"] += 1
            # Counted (never stored) so tests can check that a key is sent only when one is configured.
            self.server.stats["authorized"] += bool(self.headers.get("Authorization"))
        length = self.admit(body=True)  # Refusal (401, 400, 411, 413) before any of the body is read
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in CHAT_ROUTES:
            raise Refusal(404, f"no route {path}")
        with self.server.slot(length):  # Refusal(503) when full; bodies are buffered inside a slot only
            self._chat(self.read_body(length))

    def _chat(self, raw: bytearray) -> None:
        faults = self.server.faults
        code, malformed = self.server.draw_faults()
        if faults.latency > 0:
            time.sleep(faults.latency)
        if code is not None:
            headers = {"Retry-After": f"{faults.retry_after:g}"} if code == 429 else None
            error = {"message": f"injected fault {code}", "type": "injected_fault", "code": code}
            self.reply(code, {"error": error}, headers)
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
            error = "the request body is not JSON"
        else:
            error = None
        if isinstance(body, dict):
            with self.server._lock:
                self.server.last_body = body
        try:
            if error is not None:
                raise ProtocolError(error)
            feedback = self.server.feedback_for(body)
        except ProtocolError as exc:
            with self.server._lock:
                self.server.stats["bad_requests"] += 1
            error = {"message": str(exc), "type": "invalid_request_error", "param": "messages", "code": None}
            self.reply(400, {"error": error})
            return
        except Exception as exc:  # a readable request the rule judge could not diagnose: a server bug
            error = {"message": f"the rule judge failed: {type(exc).__name__}: {exc}", "type": "server_error"}
            self.reply(500, {"error": error})
            return
        content = json.dumps({"feedback": feedback})
        if malformed:
            content = _malform(content, malformed)
        model = (
            body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else MODEL_ID
        )
        message = {"role": "assistant", "content": content}
        self.reply(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(content) // 4},
            },
        )


def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    verbose: bool = False,
    user_template=None,
    limits: Limits | None = None,
    api_key: str | None = None,
    insecure: bool = False,
    **fault_options,
):
    """Serve in a daemon thread; returns (server, thread, base_url) with base_url ending in /v1.

    ``fault_options`` are the fields of FaultOptions; ``user_template`` the path of one more exact user
    template to read messages with (after G.2 and the paraphrase template); ``api_key`` the key clients
    must send as a Bearer token. A non-loopback ``host`` without a key raises ValueError unless ``insecure``.
    """
    warning = check_exposure(host, bool(api_key), insecure)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if "error_codes" in fault_options:
        fault_options["error_codes"] = tuple(int(c) for c in fault_options["error_codes"])
    server = JudgeServer(
        (host, port), FaultOptions(**fault_options), verbose, user_template, limits=limits, api_key=api_key
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="visd-judge-server", daemon=True
    )
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    return server, thread, f"http://{bound_host}:{bound_port}/v1"


def stop(server: JudgeServer, thread: threading.Thread | None = None) -> None:
    """Stop serving and release the port."""
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve the rule judge on an OpenAI-compatible API.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8008)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-codes", default="500,429")
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--malformed-kind", choices=MALFORMED_KINDS, default="mixed")
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--user-template",
        default=None,
        help="path of a custom user template clients render with (G.2 and the paraphrase are always read)",
    )
    d = Limits()
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency, help="then 503 + Retry-After")
    p.add_argument("--max-buffered-bytes", type=int, default=d.max_buffered_bytes, help="bodies in flight")
    p.add_argument("--max-connections", type=int, default=d.max_connections, help="open connections")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, help="seconds, then 408")
    p.add_argument("--busy-retry-after", type=float, default=d.busy_retry_after, help="Retry-After on 503")
    p.add_argument("--api-key-env", default=None, help="clients must send 'Authorization: Bearer $VAR'")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a key")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    codes = tuple(int(c) for c in a.error_codes.split(",") if c.strip())
    try:
        limits = Limits(
            max_body_bytes=a.max_body_bytes,
            max_concurrency=a.max_concurrency,
            max_buffered_bytes=a.max_buffered_bytes,
            max_connections=a.max_connections,
            request_timeout=a.request_timeout,
            busy_retry_after=a.busy_retry_after,
        )
        api_key = api_key_from_env(a.api_key_env) if a.api_key_env else None
        server, thread, url = start_server(
            a.host,
            a.port,
            verbose=a.verbose,
            user_template=a.user_template,
            limits=limits,
            api_key=api_key,
            insecure=a.insecure,
            latency=a.latency,
            error_rate=a.error_rate,
            error_codes=codes,
            malformed_rate=a.malformed_rate,
            malformed_kind=a.malformed_kind,
            retry_after=a.retry_after,
            fail_first=a.fail_first,
            seed=a.seed,
        )
    except ValueError as exc:  # refused settings: say why and exit 2, before any port is bound
        p.exit(2, f"{p.prog}: error: {exc}\n")
    key = f"API key required (from ${a.api_key_env})" if api_key else "no API key"
    print(f"visd judge server at {url} (model {MODEL_ID}; {key}; {limits})", flush=True)
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop(server, thread)


if __name__ == "__main__":
    main()
