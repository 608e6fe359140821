"""HTTP judge: an OpenAI-compatible chat-completions client (OpenAI, vLLM, or the local rule server).

``judge_batch`` is synchronous. Inside, the items run concurrently on a private asyncio event loop that
lives in a daemon thread for the judge's lifetime, so the call works from any thread (with or without a
running loop of its own), any number of times, and reuses one ``httpx.AsyncClient`` connection pool.

Failures never propagate: an item whose request still fails after the retries, or whose reply is not a
valid ``{"feedback": "..."}`` object, gets None (a fallback) and is counted.

The API key is read from ``os.environ[api_key_env]`` when a request is built and only ever placed in that
request's Authorization header: it is not stored on the object, in the config, the cache key or files.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import httpx

from visd_exp.judge.base import JudgeItem, JudgeMetrics
from visd_exp.judge.cache import FeedbackCache, cache_key
from visd_exp.judge.prompts import build_messages, load_template

log = logging.getLogger(__name__)

_DECODER = json.JSONDecoder()


def parse_feedback(content: str | None, max_chars: int) -> str | None:
    """The feedback string of a judge reply, or None when the reply is unusable.

    Strict JSON first; one repair attempt decodes the first ``{...}`` object found in the text (models
    like to wrap JSON in prose or code fences). The feedback must be a non-empty string after strip and
    is cut to ``max_chars``.
    """
    if not isinstance(content, str):
        return None
    try:
        obj = json.loads(content)
    except ValueError:
        start = content.find("{")
        if start < 0:
            return None
        try:
            obj, _ = _DECODER.raw_decode(content, start)
        except ValueError:
            return None
    if not isinstance(obj, dict) or not isinstance(obj.get("feedback"), str):
        return None
    feedback = obj["feedback"].strip()
    return feedback[:max_chars].rstrip() or None


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


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
        system_template: str | os.PathLike | None = None,
        user_template: str | os.PathLike | None = None,
        name: str = "http",
    ) -> None:
        if not model:
            raise ValueError("the HTTP judge needs a model name (judge.model)")
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        # "auto": a key is required for remote hosts, not for a judge served on this machine.
        if api_key_required == "auto":
            host = (httpx.URL(base_url).host or "").strip("[]")
            api_key_required = host not in ("127.0.0.1", "localhost", "::1")
        self.api_key_required = bool(api_key_required)
        self.timeout = float(timeout)
        self.max_concurrency = max(1, int(max_concurrency))
        self.retries = max(0, int(retries))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_feedback_chars = int(max_feedback_chars)
        self.cache = FeedbackCache(cache_dir) if cache_dir else None
        self._system = load_template(system_template, "system")
        self._user = load_template(user_template, "user")
        self._body = {"model": model, "temperature": temperature, token_limit_param: max_tokens}
        if json_mode:
            self._body["response_format"] = {"type": "json_object"}
        self._body.update(dict(extra_body or {}))
        self._metrics = JudgeMetrics()
        self._rng = random.Random()
        self._runner: _LoopThread | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        self._warned_key = False

    def __repr__(self) -> str:
        # The key's variable NAME only; its value never lives on this object.
        return (
            f"HttpJudge(name={self.name!r}, url={self.url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency}, "
            f"retries={self.retries}, cache={str(self.cache.root) if self.cache else None!r})"
        )

    # -- Judge protocol ------------------------------------------------------------------------------

    def messages(self, item: JudgeItem) -> list[dict]:
        return build_messages(item, self._system, self._user)

    def judge_batch(self, items: Sequence[JudgeItem]) -> list[str | None]:
        results: list[str | None] = [None] * len(items)
        pending: dict[str, tuple[list[dict], list[int]]] = {}  # key -> (messages, item indices)
        hits = fallbacks = 0
        for i, item in enumerate(items):
            try:
                msgs = self.messages(item)
            except Exception:
                log.warning("judge: could not build the prompt for item %d; falling back", i, exc_info=True)
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
        return results

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
        if self.api_key_required and not self._api_key():
            if not self._warned_key:
                log.warning(
                    "judge: environment variable %s is not set; every item falls back", self.api_key_env
                )
                self._warned_key = True
            return [None] * len(all_messages)
        # Upper bound on one call, so a wedged connection can never hang the training step.
        waves = math.ceil(len(all_messages) / self.max_concurrency)
        per_item = (self.retries + 1) * self.timeout + self.retries * self.backoff_max
        runner = self._ensure_runner()
        try:
            return runner.run(self._gather(all_messages), timeout=waves * per_item + 10.0)
        except Exception:
            log.warning(
                "judge: batch of %d failed as a whole; falling back", len(all_messages), exc_info=True
            )
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
            except Exception:  # anything unexpected is a fallback, never an exception in the training loop
                log.warning("judge: unexpected error; falling back", exc_info=True)
                return None
            finally:
                self._metrics.add_latency(time.perf_counter() - t0)

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
                if resp.status_code == 429 or resp.status_code >= 500:
                    reason = f"HTTP {resp.status_code}"
                    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
                elif resp.status_code >= 400:
                    log.warning("judge: HTTP %d (not retried); falling back", resp.status_code)
                    return None
                else:
                    feedback = parse_feedback(_content(resp), self.max_feedback_chars)
                    if feedback is None:
                        log.warning('judge: reply is not a valid {"feedback": ...} object; falling back')
                    return feedback
            if attempt < self.retries:
                self._metrics.add(retries=1)
                await asyncio.sleep(self._backoff(attempt, retry_after))
        log.warning("judge: giving up after %d attempts (%s); falling back", self.retries + 1, reason)
        return None


def _content(resp: httpx.Response) -> str | None:
    """choices[0].message.content of a chat-completions reply, or None."""
    try:
        return resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
