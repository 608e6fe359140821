"""Reading a chat-completions reply: the feedback object, Retry-After, and a server's error message."""

from __future__ import annotations

import email.utils
import json
import math
from datetime import UTC, datetime

import httpx

_DECODER = json.JSONDecoder()
MAX_MESSAGE_CHARS = 300


def json_object(content: str | None):
    """The JSON value of a reply's content: strict JSON first, then the first ``{...}`` object found in the
    text (models like to wrap JSON in prose or code fences); None when there is none."""
    if not isinstance(content, str):
        return None
    try:
        return json.loads(content)
    except ValueError:
        start = content.find("{")
        if start < 0:
            return None
        try:
            return _DECODER.raw_decode(content, start)[0]
        except ValueError:
            return None


def parse_feedback(content: str | None, max_chars: int) -> str | None:
    """The feedback string of a judge reply, or None when the reply is unusable.

    Strict JSON first; one repair attempt decodes the first ``{...}`` object found in the text (models
    like to wrap JSON in prose or code fences). The feedback must be a non-empty string after strip and
    is cut to ``max_chars``.
    """
    obj = json_object(content)
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


def reply_content(resp: httpx.Response) -> str | None:
    """choices[0].message.content of a chat-completions reply, or None."""
    try:
        return resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def error_message(resp: httpx.Response, secret: str | None = None) -> str:
    """An error reply's message (OpenAI's error.message, else the body) on one short line.

    ``secret`` (the API key) is masked out, so the message can be logged and raised.
    """
    try:
        payload = resp.json()
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if not isinstance(message, str):
            message = payload.get("detail") or payload.get("message") or resp.text
    except (ValueError, AttributeError):
        message = resp.text
    message = " ".join(str(message).split()) or "(empty body)"
    if secret and len(secret) >= 4:
        message = message.replace(secret, "***")
    return message[:MAX_MESSAGE_CHARS]
