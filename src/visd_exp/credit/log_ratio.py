"""Teacher-student log-ratios on the realised token (VISD Eq. 3-4, appendix E.3 Eq. 20-24).

Conventions shared by every function here:

* ``teacher_logits`` / ``student_logits`` are ``[B, T, V]`` and ``logits[:, t]`` scores ``tokens[:, t]``
  (shift the logits before calling). Any float dtype; the maths runs in float32, chunk by chunk.
* ``tokens`` is ``[B, T]`` integer. Positions with a token id < 0 (padding, e.g. -100) are skipped and
  get 0.0 in every output (so m_t = 1 there, Eq. 6). Token ids >= V raise ``ValueError``.
* Outputs are float32 ``[B, T]`` on the logits' device and never carry an autograd graph: Delta is
  stop-gradient (sg in Eq. 4 / 22).
* ``chunk_size`` valid positions are gathered and processed at a time, so at most
  ``chunk_size x V`` logits per model are copied (and, for the full-vocabulary terms, upcast) at once;
  no float32 copy of the whole ``[B, T, V]`` tensor is ever made.

Top-K ties (Eq. 3 / 20): the teacher top-K is taken on the teacher *logits* (softmax is monotone, so it
is the same set as on the probabilities) and ties at the K-th place are broken towards the LOWER token
id. ``torch.topk`` alone leaves that choice unspecified; here it is fixed so that the support, and thus
Delta, is a deterministic function of the logits, identical across dtypes that hold the same values.
Whatever the tie-break, Eq. 24 holds exactly for the chosen support.
"""

from collections.abc import Iterator

import torch

DEFAULT_CHUNK_SIZE = 1024


def _check_inputs(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tokens: torch.Tensor) -> None:
    if teacher_logits.dim() != 3 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits must both be [B, T, V], got {tuple(teacher_logits.shape)} "
            f"and {tuple(student_logits.shape)}"
        )
    if tuple(tokens.shape) != tuple(teacher_logits.shape[:2]):
        raise ValueError(
            f"tokens must be [B, T] = {tuple(teacher_logits.shape[:2])}, got {tuple(tokens.shape)}"
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
    if tokens.numel() > 0 and int(tokens.max()) >= teacher_logits.shape[-1]:
        raise ValueError(f"token id {int(tokens.max())} >= vocabulary size {teacher_logits.shape[-1]}")


def _valid_chunks(tokens: torch.Tensor, chunk_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (b, t) index chunks of at most ``chunk_size`` non-padding positions (token id >= 0)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b_all, t_all = (tokens >= 0).nonzero(as_tuple=True)
    yield from zip(b_all.split(chunk_size), t_all.split(chunk_size))


def teacher_topk_indices(teacher_rows: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [c, min(k, V)] of the K largest teacher logits per row, ties broken towards lower ids."""
    vocab = teacher_rows.shape[-1]
    k = min(k, vocab)
    if k == 0:  # empty top-K: U_t = {y_t} and Delta_t = 0
        return torch.empty(teacher_rows.shape[0], 0, dtype=torch.long, device=teacher_rows.device)
    if k == vocab:  # the whole vocabulary: no choice to make
        return torch.arange(vocab, device=teacher_rows.device).expand(teacher_rows.shape[0], vocab)
    values, indices = teacher_rows.topk(k + 1, dim=-1, sorted=True)  # one extra to detect a boundary tie
    indices = indices[:, :k].clone()
    kth = values[:, k - 1]
    if not (kth == values[:, k]).any():  # no row has a tie at the K-th place: the top-K set is unique
        return indices
    # Otherwise, in every row keep the ids strictly above the K-th value (the first n_gt of the sorted
    # output) and fill the k - n_gt remaining places with the lowest ids whose logit equals the K-th value.
    # (Rows without a boundary tie are rebuilt unchanged.) Extra memory: one [c, V] bool mask.
    n_gt = (values[:, :k] > kth[:, None]).sum(-1)
    eq_row, eq_col = (teacher_rows == kth[:, None]).nonzero(as_tuple=True)  # row-major: ids ascend per row
    counts = torch.bincount(eq_row, minlength=teacher_rows.shape[0])
    first = torch.cumsum(counts, 0) - counts  # offset of each row's first tie in the nonzero list
    rank = torch.arange(eq_row.numel(), device=eq_row.device) - first[eq_row]
    keep = rank < (k - n_gt)[eq_row]
    indices[eq_row[keep], (n_gt[eq_row] + rank)[keep]] = eq_col[keep]
    return indices


def _support_logsumexp(
    teacher_rows: torch.Tensor, student_rows: torch.Tensor, y: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """logsumexp of the raw teacher / student logits over U_t, float32 [c] each (y is [c, 1])."""
    top = teacher_topk_indices(teacher_rows, k)  # TopK_q(K), Eq. 3 / 20
    y_in_top = (top == y).any(-1, keepdim=True)
    support = torch.cat([top, y], dim=-1)  # U_t = TopK u {y_t}; the y column is a duplicate when y in TopK
    in_support = torch.cat([torch.ones_like(top, dtype=torch.bool), ~y_in_top], dim=-1)
    t_sup = teacher_rows.gather(-1, support).float().masked_fill(~in_support, float("-inf"))
    s_sup = student_rows.gather(-1, support).float().masked_fill(~in_support, float("-inf"))
    return torch.logsumexp(t_sup, dim=-1), torch.logsumexp(s_sup, dim=-1)


def _chunk_terms(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    b: torch.Tensor,
    t: torch.Tensor,
    k: int | None,
    full: bool,
) -> dict[str, torch.Tensor]:
    """Float32 [c] pieces for one chunk of positions: raw logits at y_t (``t_y``, ``s_y``), logsumexp over
    U_t (``t_lse_u``, ``s_lse_u``; when k is given) and over the vocabulary (``t_lse``, ``s_lse``; when full).

    The [c, V] row copies live only inside this call, so one chunk is resident at a time.
    """
    teacher_rows, student_rows = teacher_logits[b, t], student_logits[b, t]  # [c, V], native dtype
    y = tokens[b, t].long()[:, None]
    terms = {"t_y": teacher_rows.gather(-1, y).float()[:, 0], "s_y": student_rows.gather(-1, y).float()[:, 0]}
    if k is not None:
        terms["t_lse_u"], terms["s_lse_u"] = _support_logsumexp(teacher_rows, student_rows, y, k)
    if full:  # upcast one chunk at a time, never the whole [B, T, V] tensor
        terms["t_lse"] = torch.logsumexp(teacher_rows.float(), dim=-1)
        terms["s_lse"] = torch.logsumexp(student_rows.float(), dim=-1)
    return terms


@torch.no_grad()
def topk_support_log_ratio(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Delta^K_t = log q~(y_t) - log pi~(y_t) on U_t = TopK_teacher(K) u {y_t} (Eq. 3-4 / 20-22).

    |U_t| = K when y_t is in the teacher top-K, else K + 1; K >= V uses the whole vocabulary (then this
    equals ``sampled_token_log_ratio``); K = 0 gives U_t = {y_t} and Delta = 0. Float32 [B, T], 0.0 at
    padding (token id < 0).
    """
    _check_inputs(teacher_logits, student_logits, tokens)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    delta = torch.zeros(tokens.shape, dtype=torch.float32, device=teacher_logits.device)
    for b, t in _valid_chunks(tokens, chunk_size):
        c = _chunk_terms(teacher_logits, student_logits, tokens, b, t, k, full=False)
        # the full softmax normalisers cancel in Eq. 21: log q~(y) = z_T(y) - logsumexp_{u in U_t} z_T(u)
        log_q_tilde = c["t_y"] - c["t_lse_u"]  # Eq. 21
        log_pi_tilde = c["s_y"] - c["s_lse_u"]  # Eq. 21
        delta[b, t] = log_q_tilde - log_pi_tilde  # Eq. 4 / 22 (sg: computed under no_grad)
    return delta


@torch.no_grad()
def sampled_token_log_ratio(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Delta_t = log q(y_t) - log pi(y_t) on the full vocabulary (the sampled-token variant).

    Float32 [B, T], 0.0 at padding (token id < 0).
    """
    _check_inputs(teacher_logits, student_logits, tokens)
    delta = torch.zeros(tokens.shape, dtype=torch.float32, device=teacher_logits.device)
    for b, t in _valid_chunks(tokens, chunk_size):
        c = _chunk_terms(teacher_logits, student_logits, tokens, b, t, None, full=True)
        delta[b, t] = (c["t_y"] - c["t_lse"]) - (c["s_y"] - c["s_lse"])  # log q(y_t) - log pi(y_t)
    return delta


@torch.no_grad()
def support_decomposition(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of Eq. 24: Delta^K_t = token_evidence_t + calibration_t.

    token_evidence = log q(y_t) - log pi(y_t) (full vocabulary); calibration = log P(U_t) / Q(U_t) with
    Q(U_t), P(U_t) the teacher / student mass on U_t (Eq. 23). Both float32 [B, T], 0.0 at padding.
    """
    _check_inputs(teacher_logits, student_logits, tokens)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    evidence = torch.zeros(tokens.shape, dtype=torch.float32, device=teacher_logits.device)
    calibration = torch.zeros_like(evidence)
    for b, t in _valid_chunks(tokens, chunk_size):
        c = _chunk_terms(teacher_logits, student_logits, tokens, b, t, k, full=True)
        evidence[b, t] = (c["t_y"] - c["t_lse"]) - (c["s_y"] - c["s_lse"])  # token evidence, Eq. 24
        log_q_mass = c["t_lse_u"] - c["t_lse"]  # log Q(U_t), Eq. 23
        log_p_mass = c["s_lse_u"] - c["s_lse"]  # log P(U_t), Eq. 23
        calibration[b, t] = log_p_mass - log_q_mass  # local-support calibration, Eq. 24
    return evidence, calibration


def log_ratio_for(credit_cfg, teacher_logits, student_logits, tokens) -> torch.Tensor:
    """Delta_t as the `credit` config group says: `topk` (Eq. 3-4, K = credit_cfg.k) or `sampled_token`."""
    chunk = credit_cfg.get("chunk_size", DEFAULT_CHUNK_SIZE)
    if credit_cfg.name == "topk":
        return topk_support_log_ratio(teacher_logits, student_logits, tokens, credit_cfg.k, chunk_size=chunk)
    if credit_cfg.name == "sampled_token":
        return sampled_token_log_ratio(teacher_logits, student_logits, tokens, chunk_size=chunk)
    raise ValueError(f"credit.name must be topk or sampled_token, got {credit_cfg.name!r}")
