"""VISD token credit: top-K local-support log-ratio (Eq. 3-4, 20-24) and bounded reweighting (Eq. 5-7).

Typical use on full logits (the teacher replays the student's tokens, both logits shifted so that
``logits[:, t]`` scores ``tokens[:, t]``)::

    delta = topk_support_log_ratio(teacher_logits, student_logits, tokens, k=16)
    m = token_weights(delta, advantages, eps_w=0.2)
    adv_t = token_advantages(advantages, m, lam)  # replaces A in the GRPO surrogate (Eq. 9)
    metrics = credit_stats(delta, m, tokens >= 0, eps_w=0.2)

Those functions take full [B, T, V] logits and are the reference implementations. The update never makes
such a tensor: it takes each model's terms (top-K ids and logits, the logit at y_t) from its last hidden
states chunk by chunk of positions (credit/lean.py, `output_terms`), and `log_ratio_from_terms` gives the
same Delta from them (tests/test_lean_logprobs.py).
"""

from visd_exp.credit.lean import PositionTerms, log_ratio_from_terms, output_terms
from visd_exp.credit.log_ratio import (
    DEFAULT_CHUNK_SIZE,
    log_ratio_for,
    sampled_token_log_ratio,
    support_decomposition,
    teacher_topk_indices,
    topk_support_log_ratio,
)
from visd_exp.credit.weights import credit_stats, token_advantages, token_weights

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PositionTerms",
    "credit_stats",
    "log_ratio_for",
    "log_ratio_from_terms",
    "output_terms",
    "sampled_token_log_ratio",
    "support_decomposition",
    "teacher_topk_indices",
    "token_advantages",
    "token_weights",
    "topk_support_log_ratio",
]
