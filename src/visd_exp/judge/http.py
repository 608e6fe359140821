"""HTTP judge: an OpenAI-compatible chat-completions client (OpenAI, vLLM, or the local rule server).

``judge_batch`` is synchronous. Inside, the items run concurrently on a private asyncio event loop that
lives in a daemon thread for the judge's lifetime, so the call works from any thread (with or without a
running loop of its own), any number of times, and reuses one ``httpx.AsyncClient`` connection pool.

Transient failures (429, 408, 409, 425, 5xx, timeouts, connection errors) are retried with exponential
backoff; an item that still fails, or whose reply is not a valid ``{"feedback": "..."}`` object, gets
None (a fallback) and is counted. Failures that mean the judge cannot work stop the run with a
``JudgeError`` naming the cause:

- a required API key whose variable is unset: at construction (``api_key_required`` auto = required
  unless ``base_url`` is on loopback);
- a client error that will repeat (4xx other than 408/409/425/429): after ``max_client_errors``
  identical answers (same status and message) with no successful reply in between, out of
  ``judge_batch``, quoting the server's message;
- more than ``max_fallback_rate`` fallbacks over the last ``fallback_window`` items (base.FallbackGuard).

The API key is read from ``os.environ[api_key_env]`` when a request is built and only ever placed in that
request's Authorization header: it is not stored on the object, in the config, the cache key or files,
and it is masked out of any server message that is logged or raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence

import httpx

from visd_exp.judge.base import FallbackGuard, JudgeError, JudgeItem, JudgeMetrics
from visd_exp.judge.cache import FeedbackCache, cache_key
from visd_exp.judge.prompts import DEFAULT_TEMPLATE, build_messages, load_template
from visd_exp.judge.replies import error_message, parse_feedback, reply_content, retry_after_seconds

__all__ = ["HttpJudge", "parse_feedback", "retry_after_seconds"]

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_LIMIT_PARAMS = ("max_tokens", "max_completion_tokens")
#: client errors that may pass (timeout, conflict, too early, rate limit): retried like 5xx
TRANSIENT_4XX = frozenset({408, 409, 425, 429})


class _LoopThread:
    """A private event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self.loop.run_forever, name="visd-judge-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class HttpJudge:
    """Judge over an OpenAI-compatible ``POST {base_url}/chat/completions`` (``judge=openai|vllm``)."""

    overlap = True  # network latency: the step overlaps the calls with the update's first student forward

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        api_key_required: bool | str = "auto",
        temperature: float = 0.0,
        max_tokens: int = 256,
        token_limit_param: str = "max_tokens",
        json_mode: bool = True,
        extra_body: Mapping | None = None,
        timeout: float = 30.0,
        max_concurrency: int = 16,
        retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_feedback_chars: int = 1200,
        cache_dir: str | os.PathLike | None = None,
        template: str = DEFAULT_TEMPLATE,
        system_template: str | os.PathLike | None = None,
        user_template: str | os.PathLike | None = None,
        max_client_errors: int | None = 3,
        max_fallback_rate: float | None = 0.2,
        fallback_window: int = 50,
        name: str = "http",
    ) -> None:
        if not model:
            raise ValueError("the HTTP judge needs a model name (judge.model)")
        if token_limit_param not in TOKEN_LIMIT_PARAMS:
            raise ValueError(
                f"judge.token_limit_param must be one of {list(TOKEN_LIMIT_PARAMS)}, got {token_limit_param!r}"
            )
        if max_client_errors is not None and int(max_client_errors) < 1:
            raise ValueError(f"judge.max_client_errors must be >= 1 or null, got {max_client_errors!r}")
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        # "auto": a key is required for remote hosts, not for a judge served on this machine.
        if api_key_required == "auto":
            api_key_required = (httpx.URL(base_url).host or "").strip("[]") not in _LOOPBACK
        self.api_key_required = bool(api_key_required)
        self._check_key()
        self.timeout = float(timeout)
        self.max_concurrency = max(1, int(max_concurrency))
        self.retries = max(0, int(retries))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_feedback_chars = int(max_feedback_chars)
        self.max_client_errors = None if max_client_errors is None else int(max_client_errors)
        self.cache = FeedbackCache(cache_dir) if cache_dir else None
        self._system = load_template(system_template, "system", template)
        self._user = load_template(user_template, "user", template)
        self._body = {"model": model, "temperature": temperature, token_limit_param: max_tokens}
        if json_mode:
            self._body["response_format"] = {"type": "json_object"}
        self._body.update(dict(extra_body or {}))
        self._metrics = JudgeMetrics()
        self._guard = FallbackGuard(max_fallback_rate, fallback_window)
        self._rng = random.Random()
        self._runner: _LoopThread | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        # The last failure's reason, and the current run of identical client errors ((status, message), n).
        self._last_failure = "none"
        self._client_error: tuple[int, str] | None = None
        self._client_error_count = 0

    def __repr__(self) -> str:
        # The key's variable NAME only; its value never lives on this object.
        return (
            f"HttpJudge(name={self.name!r}, url={self.url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency}, "
            f"retries={self.retries}, cache={str(self.cache.root) if self.cache else None!r})"
        )

    def _check_key(self) -> None:
        """Raise JudgeError when a required key is missing: the variable's name, never a value."""
        if not self.api_key_required or self._api_key():
            return
        if not self.api_key_env:
            raise JudgeError(
                f"judge {self.name}: an API key is required for {self.url} but judge.api_key_env names no "
                f"environment variable; set judge.api_key_env, or judge.api_key_required=false for a server "
                f"that needs no key"
            )
        raise JudgeError(
            f"judge {self.name}: the environment variable {self.api_key_env} (judge.api_key_env) is not set, "
            f"and {self.url} needs an API key; export {self.api_key_env}, or set judge.api_key_required=false "
            f"for a server that needs no key"
        )

    # -- Judge protocol ------------------------------------------------------------------------------

    def messages(self, item: JudgeItem) -> list[dict]:
        return build_messages(item, self._system, self._user)

    def judge_batch(self, items: Sequence[JudgeItem]) -> list[str | None]:
        """Feedback per item (None = fallback); raises JudgeError when the judge cannot work (see module doc)."""
        results: list[str | None] = [None] * len(items)
        pending: dict[str, tuple[list[dict], list[int]]] = {}  # key -> (messages, item indices)
        hits = fallbacks = 0
        for i, item in enumerate(items):
            try:
                msgs = self.messages(item)
            except Exception:
                log.warning("judge: could not build the prompt for item %d; falling back", i, exc_info=True)
                self._last_failure = "the prompt could not be built"
                fallbacks += 1
                continue
            key = cache_key(self.model, msgs)
            cached = self.cache.get(key) if self.cache else None
            if cached is not None:
                results[i], hits = cached, hits + 1
            elif key in pending:
                pending[key][1].append(i)  # identical rollouts in one batch cost one request
                hits += 1
            else:
                pending[key] = (msgs, [i])

        outputs = self._request_all([m for m, _ in pending.values()]) if pending else []
        for (key, (_, indices)), feedback in zip(pending.items(), outputs):
            for i in indices:
                results[i] = feedback
            if feedback is None:
                fallbacks += len(indices)
            elif self.cache:
                self.cache.put(key, feedback, self.model)
        self._metrics.add(items=len(items), calls=len(pending), cache_hits=hits, fallbacks=fallbacks)
        self._guard.observe([r is None for r in results])
        self._raise_if_broken()
        return results

    def _raise_if_broken(self) -> None:
        limit = self.max_client_errors
        if limit is not None and self._client_error is not None and self._client_error_count >= limit:
            status, message = self._client_error
            raise JudgeError(
                f"judge {self.name}: {self.url} answered HTTP {status} {self._client_error_count} times in a "
                f"row with the same error, which retrying will not fix: {message!r}. Check judge.model, "
                f"judge.base_url, the key in {self.api_key_env} and judge.extra_body / "
                f"judge.token_limit_param (judge.max_client_errors={limit})"
            )
        exceeded = self._guard.exceeded()
        if exceeded is not None:
            fallbacks, window = exceeded
            raise JudgeError(
                f"judge {self.name}: {fallbacks} of the last {window} items fell back (rate "
                f"{fallbacks / window:.0%} > judge.max_fallback_rate={self._guard.max_rate:g}); last failure: "
                f"{self._last_failure}. The judge at {self.url} is not working; fix it, or raise "
                f"judge.max_fallback_rate (null disables the check)"
            )

    def pop_metrics(self) -> dict[str, float]:
        return self._metrics.pop(http=True)

    def close(self) -> None:
        with self._lock:
            runner, client = self._runner, self._client
            self._runner = self._client = None
        if runner is None:
            return
        if client is not None and runner.pid == os.getpid():
            try:
                runner.run(client.aclose(), timeout=5)
            except Exception:
                pass
        runner.stop()

    def __enter__(self) -> HttpJudge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _ensure_runner(self) -> _LoopThread:
        with self._lock:
            # A forked child (e.g. a data-loader worker) inherits no running thread: start a fresh loop.
            if self._runner is None or self._runner.pid != os.getpid() or not self._runner.thread.is_alive():
                self._runner = _LoopThread()
                self._client = None
            return self._runner

    def _request_all(self, all_messages: list[list[dict]]) -> list[str | None]:
        self._check_key()  # the variable may have been unset since construction
        # Upper bound on one call, so a wedged connection can never hang the training step.
        waves = math.ceil(len(all_messages) / self.max_concurrency)
        per_item = (self.retries + 1) * self.timeout + self.retries * self.backoff_max
        runner = self._ensure_runner()
        try:
            return runner.run(self._gather(all_messages), timeout=waves * per_item + 10.0)
        except Exception as exc:
            log.warning(
                "judge: batch of %d failed as a whole; falling back", len(all_messages), exc_info=True
            )
            self._last_failure = f"the batch failed as a whole ({type(exc).__name__})"
            return [None] * len(all_messages)

    async def _gather(self, all_messages: list[list[dict]]) -> list[str | None]:
        if self._client is None:
            limits = httpx.Limits(
                max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
            )
            self._client = httpx.AsyncClient(limits=limits, timeout=self.timeout)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        return list(await asyncio.gather(*(self._judge_one(m, semaphore) for m in all_messages)))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        # Full jitter: uniform in [0, min(cap, base * 2^attempt)] spreads retries of a burst apart.
        return self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**attempt))

    async def _judge_one(self, messages: list[dict], semaphore: asyncio.Semaphore) -> str | None:
        async with semaphore:
            t0 = time.perf_counter()
            try:
                return await self._attempts(messages)
            except Exception as exc:  # anything unexpected is a fallback, not an exception in training
                log.warning("judge: unexpected error; falling back", exc_info=True)
                self._last_failure = f"unexpected {type(exc).__name__}"
                return None
            finally:
                self._metrics.add_latency(time.perf_counter() - t0)

    def parse_reply(self, content: str | None) -> str | None:
        """The item's result from a reply's content: the judge's `{"feedback": ...}` (None when invalid).
        Clients that reuse this one for other replies (FFR's teacher) override it."""
        return parse_feedback(content, self.max_feedback_chars)

    async def _attempts(self, messages: list[dict]) -> str | None:
        body = {**self._body, "messages": messages}
        reason = "no attempt"
        for attempt in range(self.retries + 1):
            headers = {}
            key = self._api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._metrics.add(requests=1)
            retry_after = None
            try:
                resp = await self._client.post(self.url, json=body, headers=headers, timeout=self.timeout)
            except httpx.TimeoutException:
                reason = "timeout"
            except httpx.TransportError as exc:  # connection refused / reset, protocol errors
                reason = type(exc).__name__
            else:
                status = resp.status_code
                if status in TRANSIENT_4XX or status >= 500:
                    reason = f"HTTP {status}"
                    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
                elif status >= 400:
                    return self._client_failure(status, error_message(resp, self._api_key()))
                else:
                    self._client_error, self._client_error_count = None, 0
                    feedback = self.parse_reply(reply_content(resp))
                    if feedback is None:
                        log.warning('judge: reply is not a valid {"feedback": ...} object; falling back')
                        self._last_failure = 'a reply that is not a valid {"feedback": ...} object'
                    return feedback
            if attempt < self.retries:
                self._metrics.add(retries=1)
                await asyncio.sleep(self._backoff(attempt, retry_after))
        log.warning("judge: giving up after %d attempts (%s); falling back", self.retries + 1, reason)
        self._last_failure = f"{reason} after {self.retries + 1} attempts"
        return None

    def _client_failure(self, status: int, message: str) -> None:
        """A client error that will repeat: not retried, counted towards max_client_errors."""
        log.warning("judge: HTTP %d (not retried): %s; falling back", status, message)
        self._last_failure = f"HTTP {status}: {message}"
        if self._client_error == (status, message):
            self._client_error_count += 1
        else:
            self._client_error, self._client_error_count = (status, message), 1
        return None
