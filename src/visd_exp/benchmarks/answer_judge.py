"""V-STaR's answer judge: a 0-3 rating of a candidate answer against the ground-truth answer.

The rule (V-STaR-Bench/V-STaR ``eval.py`` at 1894682b: ``qwen2_5_evaluation`` and ``print_stats``; the same
prompt in Open-o3-Video's ``eval/test/eval_vstar.py`` at 1eb6ecae, which decodes greedily): an LLM (the
paper's judge: Qwen2.5-72B-Instruct) gets the official system prompt (``SYSTEM_PROMPT``, its text kept word
for word, line breaks included, since the ratings depend on it) and ``Question: ...\nGroundtruth answer:
...\nCandidate answer: ...\nYour response: ``, and replies with one integer. The reply is read with Python's
int() (surrounding whitespace allowed); a reply that int() refuses becomes -1, and -1 counts 0 in the average
rating and is left out of the valid ratings; any other integer counts as it is; correct iff rating >= 2;
accuracy = correct / number of records.

Two graders, chosen by ``answer_judge.kind`` in conf/evaluate.yaml:

- ``openai``: ``OpenAIAnswerJudge``, any OpenAI-compatible ``POST {base_url}/chat/completions`` (OpenAI, vLLM,
  a local server) over httpx, with V-STaR's rating prompt as the system prompt, temperature 0. The API key
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
counted as 0 like an unparseable reply), is counted in ``stats["failed"]`` and logged with the count; a
client error that will repeat (401, 403, 404, 400...) stops with ``AnswerJudgeError`` quoting the server's
(masked) message. The HTTP client is the training judge's (judge/http.py), not a second one.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from visd_exp.judge.base import JudgeError, JudgeItem

log = logging.getLogger(__name__)

CORRECT_AT = 2  # eval.py: `if score >= 2: correct_num += 1`

# eval.py's system_prompt: a triple-quoted string opening and closing with a newline, two of whose lines
# end in a backslash continuation (joined with the next line, nothing between).
SYSTEM_PROMPT = (
    "\n"
    "As an AI assistant, your task is to evaluate a candidate answer in comparison to a given correct answer.\n"
    "The question itself, the correct 'groundtruth' answer, and the candidate answer will be provided to you.\n"
    "Your assessment should range from 0 to 3, "
    "based solely on the semantic similarity between the groundtruth and the candidate answer, "
    "disregarding any grammatical differences.\n"
    "A rating of 0 suggests no similarity, implying the candidate answer is entirely incorrect.\n"
    "A rating of 1 suggests low similarity, meaning the candidate answer is largely incorrect.\n"
    "A rating of 2 suggests high similarity, meaning the candidate answer is largely correct.\n"
    "Lastly, a rating of 3 indicates complete similarity, which means the candidate answer is entirely correct.\n"
    "Your response should be a single integer from 0, 1, 2, or 3.\n"
)
USER_TEMPLATE = (
    "Question: {question}\nGroundtruth answer: {groundtruth}\nCandidate answer: {candidate}\nYour response: "
)

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
    """The rating in a judge reply as eval.py reads it: ``int(reply)``, with -1 (also what a reply int()
    refuses becomes) as unparseable -> None; any other integer is the rating."""
    if not isinstance(reply, str):
        return None
    try:
        value = int(reply)
    except ValueError:
        return None
    return None if value == -1 else value


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
    """0-3 ratings from an OpenAI-compatible chat-completions server (kind=openai), over the training
    judge's HTTP client (judge/http.py: connection pool, retries with backoff, the key read from the
    environment per request and masked in every message), with V-STaR's rating prompt."""

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str,
        timeout_s: float = 60.0,
        max_concurrency: int = 8,
        retries: int = 3,
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
        self.model, self.api_key_env = model, api_key_env
        self._key()  # fail now (before any model loads) when the variable is unset
        self._client = _rating_client_class()(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            api_key_required=True,
            max_tokens=max_tokens,
            json_mode=False,  # the reply is one integer
            timeout=float(timeout_s),
            max_concurrency=max(1, int(max_concurrency)),
            retries=max(0, int(retries)),
            max_client_errors=1,  # a 401/403/404 will repeat: stop at once
            max_fallback_rate=None,  # a failed request is a 0, counted in stats["failed"]
            name="answer judge",
        )
        self.url = self._client.url
        self.stats = {"requests": 0, "failed": 0}

    def __repr__(self) -> str:  # the variable's NAME only
        return f"OpenAIAnswerJudge(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def description(self) -> str:
        return f"openai ({self.model} at {self.url})"

    def _key(self) -> None:
        if not os.environ.get(self.api_key_env, "").strip():
            raise AnswerJudgeError(
                f"answer_judge.kind=openai: the environment variable {self.api_key_env} "
                f"(answer_judge.api_key_env) is not set; export it, or use answer_judge.kind=rule"
            )

    def rate(self, items: Sequence[AnswerItem]) -> list[int | None]:
        if not items:
            return []
        self._key()
        judged = [
            JudgeItem(task="vstar_what", question=it.question, standard_answer=it.groundtruth, evidence=None,
                      completion=it.candidate)
            for it in items
        ]  # fmt: skip
        try:
            replies = self._client.judge_batch(judged)
        except JudgeError as exc:
            raise AnswerJudgeError(str(exc)) from None
        metrics = self._client.pop_metrics()
        self.stats["requests"] += int(metrics.get("judge/requests", 0))
        failed = sum(reply is None for reply in replies)
        if failed:
            log.warning("answer judge: %d of %d items got no rating (counted 0)", failed, len(items))
        self.stats["failed"] += failed
        return [parse_rating(reply) for reply in replies]

    def close(self) -> None:
        self._client.close()


def _rating_client_class():
    from visd_exp.judge.http import HttpJudge

    class RatingClient(HttpJudge):
        """The judge's HTTP client with V-STaR's rating messages; the reply content comes back verbatim."""

        def messages(self, item: JudgeItem) -> list[dict]:
            user = USER_TEMPLATE.format(
                question=item.question, groundtruth=item.standard_answer, candidate=item.completion
            )
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

        def parse_reply(self, content: str | None) -> str | None:
            return content if isinstance(content, str) else None

    return RatingClient


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
