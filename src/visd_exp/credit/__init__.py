"""VISD token credit: top-K local-support log-ratio (Eq. 3-4, 20-24) and bounded reweighting (Eq. 5-7).

Typical use inside the policy update (teacher replays the student's tokens, both logits shifted so that
``logits[:, t]`` scores ``tokens[:, t]``)::

    delta = topk_support_log_ratio(teacher_logits, student_logits, tokens, k=16)
    m = token_weights(delta, advantages, eps_w=0.2)
    adv_t = token_advantages(advantages, m, lam)  # replaces A in the GRPO surrogate (Eq. 9)
    metrics = credit_stats(delta, m, tokens >= 0, eps_w=0.2)
"""

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
    "credit_stats",
    "log_ratio_for",
    "sampled_token_log_ratio",
    "support_decomposition",
    "teacher_topk_indices",
    "token_advantages",
    "token_weights",
    "topk_support_log_ratio",
]
