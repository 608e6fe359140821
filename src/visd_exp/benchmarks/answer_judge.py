"""V-STaR's answer judge: a 0-3 rating of a candidate answer against the ground-truth answer.

The rule (V-STaR-Bench/V-STaR ``eval.py``: ``qwen2_5_evaluation`` and ``print_stats``): an LLM (there
Qwen2.5-72B-Instruct) is given the question, the ground-truth answer and the candidate answer, and replies
with one integer 0-3 rating their semantic similarity (0 none, 1 low / largely incorrect, 2 high / largely
correct, 3 complete). A reply that is not such an integer counts 0 in the average rating and as not correct;
an answer is correct iff its rating >= 2; accuracy = correct / number of records.

Two graders, chosen by ``answer_judge.kind`` in conf/evaluate.yaml:

- ``openai``: ``OpenAIAnswerJudge``, any OpenAI-compatible ``POST {base_url}/chat/completions`` (OpenAI, vLLM,
  a local server) over httpx, with V-STaR's rating instructions (restated) as the system prompt. The API key
  is read from ``os.environ[api_key_env]`` when a request is built and only placed in its Authorization
  header: never stored on the object, logged, or written (a server message quoting it is masked). This is
  the benchmark's protocol (with the model the config names; the paper's judge was Qwen2.5-72B-Instruct).
- ``rule``: ``RuleAnswerJudge``, offline and deterministic, for runs without a judge model. NOT the official
  judge: reports label an accuracy from it "rule", and it is not comparable with published numbers.

Rule grader (this project's design): both texts are lower-cased into alphanumeric tokens; articles and a few
function words are dropped (all tokens are kept when nothing else is left). With R = the share of the
ground truth's tokens found in the candidate and F1 the token F1 (multiset overlap):
  3  the token sequences are equal, or R = 1 and F1 >= 0.8 (the answer with little around it);
  2  R >= 0.75 and the candidate is at most 3 x the ground truth's length + 2 tokens (a short answer
     inside a sentence; not a list of guesses);
  1  some token shared;
  0  nothing shared, or an empty candidate.
Caps at 1: a number in the ground truth that the candidate lacks ("3 people" vs "2 people"), and a
negation (no, not, never, none, nothing) on one side only ("a cup" vs "not a cup").

A request that still fails after the retries (timeouts, connection errors, 429/5xx) gives no rating (None,
counted as 0 like an unparseable reply) and is counted in ``stats["failed"]``; a client error that will
repeat (401, 403, 404, 400...) stops with ``AnswerJudgeError`` quoting the server's (masked) message.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import httpx

log = logging.getLogger(__name__)

RATINGS = (0, 1, 2, 3)
CORRECT_AT = 2  # eval.py: `if score >= 2: correct_num += 1`

SYSTEM_PROMPT = (
    "You are evaluating a candidate answer to a question about a video against the correct (groundtruth) "
    "answer. You are given the question, the groundtruth answer and the candidate answer. Rate, from 0 to 3, "
    "only how similar in meaning the candidate is to the groundtruth, ignoring grammar and wording.\n"
    "0: no similarity; the candidate is entirely incorrect.\n"
    "1: low similarity; the candidate is largely incorrect.\n"
    "2: high similarity; the candidate is largely correct.\n"
    "3: complete similarity; the candidate is entirely correct.\n"
    "Reply with a single integer: 0, 1, 2 or 3."
)
USER_TEMPLATE = (
    "Question: {question}\nGroundtruth answer: {groundtruth}\nCandidate answer: {candidate}\nYour response: "
)

_TRANSIENT = frozenset({408, 409, 425, 429})
_WORDS = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_STOPWORDS = frozenset(
    "a an the is are was were be been of in on at to and or it its this that these those with by for as "
    "his her their there he she they".split()
)
_NEGATIONS = frozenset({"no", "not", "never", "none", "nothing"})


class AnswerJudgeError(RuntimeError):
    """The answer judge cannot work as configured (messages name variables, never a key)."""


class AnswerItem(NamedTuple):
    question: str
    groundtruth: str
    candidate: str


def parse_rating(reply: str | None) -> int | None:
    """The rating in a judge reply: the whole reply must be one integer 0-3 (eval.py: ``int(response)``;
    any other reply, and here also an integer outside 0-3, is unparseable -> None)."""
    if not isinstance(reply, str):
        return None
    try:
        value = int(reply.strip())
    except ValueError:
        return None
    return value if value in RATINGS else None


# ----------------------------------------------------------------------------- rule grader


def _tokens(text: str) -> list[str]:
    words = _WORDS.findall((text or "").lower())
    content = [w for w in words if w not in _STOPWORDS]
    return content or words


def rule_rating(groundtruth: str, candidate: str) -> int:
    """The offline rule rating 0-3 (module docstring)."""
    gt, cand = _tokens(groundtruth), _tokens(candidate)
    if not cand or not gt:
        return 0
    if gt == cand:
        return 3
    overlap = sum((Counter(gt) & Counter(cand)).values())
    recall = overlap / len(gt)
    f1 = 2 * overlap / (len(gt) + len(cand))
    if recall == 1.0 and f1 >= 0.8:
        rating = 3
    elif recall >= 0.75 and len(cand) <= 3 * len(gt) + 2:
        rating = 2
    else:
        rating = 1 if overlap else 0
    numbers = {w for w in gt if any(c.isdigit() for c in w)}
    if not numbers <= set(cand) or bool(_NEGATIONS & set(gt)) != bool(_NEGATIONS & set(cand)):
        rating = min(rating, 1)
    return rating


class RuleAnswerJudge:
    """Offline token-overlap grader (kind=rule); not V-STaR's LLM judge."""

    kind = "rule"

    def __init__(self) -> None:
        self.stats = {"requests": 0, "failed": 0}

    @property
    def description(self) -> str:
        return "rule (offline token-overlap grader; not the official LLM judge)"

    def rate(self, items: Sequence[AnswerItem]) -> list[int | None]:
        return [rule_rating(it.groundtruth, it.candidate) for it in items]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- OpenAI-compatible grader


class OpenAIAnswerJudge:
    """0-3 ratings from an OpenAI-compatible chat-completions server (kind=openai)."""

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str,
        timeout_s: float = 60.0,
        max_concurrency: int = 8,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_tokens: int = 16,
    ) -> None:
        if not base_url or not model:
            raise AnswerJudgeError(
                "answer_judge.kind=openai needs answer_judge.base_url and answer_judge.model"
            )
        if not api_key_env:
            raise AnswerJudgeError(
                "answer_judge.kind=openai needs answer_judge.api_key_env: the NAME of the environment "
                "variable that holds the API key"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self._key()  # fail now (before any model loads) when the variable is unset
        self.timeout_s = float(timeout_s)
        self.max_concurrency = max(1, int(max_concurrency))
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.max_tokens = int(max_tokens)
        self.stats = {"requests": 0, "failed": 0}
        self._lock = threading.Lock()  # stats are counted from the pool's threads
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:  # the variable's NAME only
        return f"OpenAIAnswerJudge(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def description(self) -> str:
        return f"openai ({self.model} at {self.url})"

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env, "")
        if not key.strip():
            raise AnswerJudgeError(
                f"answer_judge.kind=openai: the environment variable {self.api_key_env} "
                f"(answer_judge.api_key_env) is not set; export it, or use answer_judge.kind=rule"
            )
        return key

    def messages(self, item: AnswerItem) -> list[dict]:
        user = USER_TEMPLATE.format(
            question=item.question, groundtruth=item.groundtruth, candidate=item.candidate
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def rate(self, items: Sequence[AnswerItem]) -> list[int | None]:
        if not items:
            return []
        key = self._key()
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            replies = list(pool.map(lambda it: self._request(it, key), items))
        return [parse_rating(reply) for reply in replies]

    def _request(self, item: AnswerItem, key: str) -> str | None:
        body = {
            "model": self.model,
            "messages": self.messages(item),
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Authorization": f"Bearer {key}"}
        reason = "no attempt"
        for attempt in range(self.retries + 1):
            with self._lock:
                self.stats["requests"] += 1
            try:
                resp = self._client.post(self.url, json=body, headers=headers)
            except httpx.TransportError as exc:  # timeouts, refused or reset connections
                reason = type(exc).__name__
            else:
                status = resp.status_code
                if status < 400:
                    try:
                        return resp.json()["choices"][0]["message"]["content"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        return None  # a reply without a rating: unparseable, counted 0
                if status not in _TRANSIENT and status < 500:
                    raise AnswerJudgeError(
                        f"answer judge: HTTP {status} from {self.url}: {_message(resp, key)}"
                    )
                reason = f"HTTP {status}"
            if attempt < self.retries:
                time.sleep(random.uniform(0.0, min(30.0, self.backoff_s * 2**attempt)))
        log.warning(
            "answer judge: no rating after %d attempts (%s); the item counts 0", self.retries + 1, reason
        )
        with self._lock:
            self.stats["failed"] += 1
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _message(resp: httpx.Response, key: str) -> str:
    """An error reply's message on one short line, the key masked."""
    try:
        payload = resp.json()
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else (error or resp.text)
    except (ValueError, AttributeError):
        message = resp.text
    message = " ".join(str(message).split()) or "(empty body)"
    return (message.replace(key, "***") if len(key) >= 4 else message)[:300]


def build_answer_judge(cfg: Mapping | None):
    """The grader answer_judge names: {kind: rule|openai, base_url, model, api_key_env, timeout_s, ...}.
    Raises AnswerJudgeError for an unknown kind or an openai judge without its key (call it before loading
    a model)."""
    cfg = dict(cfg or {})
    kind = cfg.get("kind") or "rule"
    if kind == "rule":
        return RuleAnswerJudge()
    if kind == "openai":
        return OpenAIAnswerJudge(
            base_url=cfg.get("base_url"),
            model=cfg.get("model"),
            api_key_env=cfg.get("api_key_env"),
            timeout_s=float(cfg.get("timeout_s") or 60),
            max_concurrency=int(cfg.get("max_concurrency") or 8),
            retries=int(cfg["retries"]) if cfg.get("retries") is not None else 3,
        )
    raise AnswerJudgeError(f"answer_judge.kind={kind!r}: expected 'rule' or 'openai'")
