"""The credit's terms taken from a model's last hidden states, chunk by chunk of positions (issue 23, item 3).

Delta_t (Eq. 3-4 / 20-22, or the sampled-token variant) needs, per completion position, a handful of
numbers, not the [n, C, V] logits they come from:

* the teacher's top-K ids (Eq. 3: ``teacher_topk_indices``, ties towards the lower id) and its logits
  there, its logit at the realised token y_t, and (sampled_token only) its full-vocabulary logsumexp;
* the student's logits at the same ids and at y_t (and its logsumexp for sampled_token).

``output_terms`` computes them from the hidden states through the output layer (lm_head), one chunk of
``chunk_size`` valid positions at a time, so the largest tensor is one chunk's [chunk, V] logits; only
[n, C] and [n, C, K] tensors leave it. ``log_ratio_from_terms`` is then Eq. 4 on those numbers, the same
arithmetic as ``credit.log_ratio`` on full logits (its reference implementation, tested against it).

Arithmetic kept from the full-logit path so that Delta is the same: the logits are divided by the
temperature in their own dtype (bf16 under autocast) before anything else, the top-K is taken on those
values, and gathered entries are upcast to float32 after the gather. K >= V (the support is the whole
vocabulary) gives the sampled-token Delta, as ``topk_support_log_ratio`` does (Eq. 24, calibration 0).

Under DeepSpeed ZeRO-3 the output layer gathers its partitioned weight collectively at every call, so all
ranks must call it equally often: the number of chunks is agreed across ranks (the largest), and a rank
with fewer valid positions runs empty chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from visd_exp.credit.log_ratio import teacher_topk_indices
from visd_exp.distributed.zero import is_partitioned, world_size


@dataclass
class PositionTerms:
    """Per completion position, float32 logits / temperature (0 at padding); what Delta_t needs of a model."""

    logit_y: torch.Tensor  # [n, C] at the realised token y_t
    support_ids: torch.Tensor | None = None  # [n, C, K] long: the teacher's top-K ids (Eq. 3)
    support_logits: torch.Tensor | None = None  # [n, C, K] at support_ids
    lse: torch.Tensor | None = None  # [n, C] logsumexp over the vocabulary (sampled_token; topk with K >= V)

    def rows(self, rows: slice) -> PositionTerms:
        """The terms of rows[start:stop]."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return PositionTerms(
            self.logit_y[rows], pick(self.support_ids), pick(self.support_logits), pick(self.lse)
        )


def credit_needs(credit_cfg) -> tuple[int | None, bool]:
    """(K of the teacher's top-K or None, whether the full logsumexp is needed) for the `credit` group."""
    if credit_cfg.name == "topk":
        k = int(credit_cfg.k)
        if k < 0:
            raise ValueError(f"credit.k must be >= 0, got {k}")
        return k, False
    if credit_cfg.name == "sampled_token":
        return None, True
    raise ValueError(f"credit.name must be topk or sampled_token, got {credit_cfg.name!r}")


def chunk_count(positions: int, chunk_size: int, head: torch.nn.Module, device) -> int:
    """How many chunks of `chunk_size` positions to run: at least one (the output layer is always called,
    so a micro-batch without valid tokens still joins the graph); under ZeRO-3 the largest over ranks."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    count = max(1, math.ceil(positions / chunk_size))
    if world_size() > 1 and is_partitioned(head):
        import torch.distributed as dist

        agreed = torch.tensor([count], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        count = int(agreed.item())
    return count


def valid_positions(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices into [n * C] of the valid (mask != 0) completion positions, in row-major order."""
    return mask.reshape(-1).nonzero()[:, 0]


def split_chunks(x: torch.Tensor, chunk_size: int, count: int) -> list[torch.Tensor]:
    """`x` split along dim 0 into `count` pieces of at most `chunk_size` (empty pieces at the end)."""
    pieces = [x[i : i + chunk_size] for i in range(0, x.shape[0], chunk_size)]
    if len(pieces) > count:
        raise ValueError(f"{x.shape[0]} positions do not fit {count} chunks of {chunk_size}")
    return pieces + [x[:0]] * (count - len(pieces))


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature in the logits' own dtype (the full-logit path's `log_ratio` does this)."""
    return logits if temperature == 1.0 else logits / temperature


def chunk_terms(
    z: torch.Tensor, y: torch.Tensor, k: int | None, support: torch.Tensor | None, full_lse: bool
) -> dict[str, torch.Tensor]:
    """The terms of one chunk from its scaled logits z [c, V] (native dtype) and tokens y [c]: float32
    ``logit_y`` [c]; with k, the top-K ``support_ids`` and ``support_logits`` [c, K]; with support [c, K],
    ``support_logits`` there; with full_lse (or k >= V), ``lse`` [c]."""
    out = {"logit_y": z.gather(-1, y[:, None]).float()[:, 0]}
    if k is not None and k >= z.shape[-1]:  # the whole vocabulary: the sampled-token Delta (Eq. 24)
        k, full_lse = None, True
        support = z.new_zeros(z.shape[0], 0, dtype=torch.long)
    if k is not None:
        support = teacher_topk_indices(z, k)  # TopK_q(K), Eq. 3 / 20, ties to the lower id
    if support is not None:
        out["support_ids"] = support
        out["support_logits"] = z.gather(-1, support).float()
    if full_lse:
        out["lse"] = torch.logsumexp(z.float(), dim=-1)
    return out


def scatter_terms(chunks: list[dict], positions: torch.Tensor, shape) -> PositionTerms:
    """[n, C] (and [n, C, K]) PositionTerms from per-chunk terms of the flat valid `positions`."""
    n_flat = shape[0] * shape[1]
    fields = {}
    for name in ("logit_y", "support_ids", "support_logits", "lse"):
        parts = [c[name] for c in chunks if name in c]
        if not parts:
            continue
        values = torch.cat(parts)
        flat = values.new_zeros((n_flat, *values.shape[1:]))
        flat[positions] = values
        fields[name] = flat.view(*shape, *values.shape[1:])
    return PositionTerms(**fields)  # chunk_count >= 1: there is always a logit_y


@torch.no_grad()
def output_terms(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    *,
    k: int | None = None,
    support: torch.Tensor | None = None,
    full_lse: bool = False,
    chunk_size: int,
) -> PositionTerms:
    """A model's PositionTerms from its last hidden states [n, C, H] at the completion positions (no grad).

    k: take the top-K support here (the teacher); support [n, C, K]: gather at these ids instead (the
    student, or the answer-only teacher of the credit dumps). Only valid positions (mask != 0) are
    computed, `chunk_size` at a time; padding gets 0."""
    if tokens.shape != hidden.shape[:2] or mask.shape != tokens.shape:
        raise ValueError(
            f"hidden states {tuple(hidden.shape)} do not match tokens {tuple(tokens.shape)} / mask "
            f"{tuple(mask.shape)}"
        )
    positions = valid_positions(mask)
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    count = chunk_count(positions.numel(), chunk_size, head, hidden.device)
    flat_y = tokens.reshape(-1).long()
    flat_support = None if support is None else support.flatten(0, 1)
    chunks = []
    for pos in split_chunks(positions, chunk_size, count):
        z = scaled(head(flat_h[pos]), temperature)  # [c, V]: one chunk's logits, never more
        chunks.append(
            chunk_terms(z, flat_y[pos], k, None if flat_support is None else flat_support[pos], full_lse)
        )
        del z
    return scatter_terms(chunks, positions, tokens.shape)


@torch.no_grad()
def log_ratio_from_terms(
    teacher: PositionTerms, student: PositionTerms, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Delta_t [n, C] float32 (0 at padding) from the two models' terms on the tokens y_t [n, C] (no grad).

    With the teacher's logsumexp (sampled_token, or K >= V): log q(y_t) - log pi(y_t). Otherwise the top-K
    support U_t = TopK u {y_t} (Eq. 3), |U_t| = K or K + 1, both distributions renormalised on it
    (Eq. 21): Delta = log q~(y_t) - log pi~(y_t) (Eq. 4 / 22)."""
    valid = mask.bool()
    if teacher.lse is not None:
        if student.lse is None:
            raise ValueError("the teacher's terms have a logsumexp (sampled_token) but the student's do not")
        delta = (teacher.logit_y - teacher.lse) - (student.logit_y - student.lse)
        return torch.where(valid, delta, torch.zeros_like(delta))
    if teacher.support_ids is None or student.support_logits is None:
        raise ValueError("top-K credit needs the teacher's support ids and the student's logits there")
    if student.support_logits.shape != teacher.support_logits.shape:
        raise ValueError(
            f"student terms on {tuple(student.support_logits.shape)} ids, the teacher's top-K is "
            f"{tuple(teacher.support_logits.shape)}"
        )
    # U_t = TopK u {y_t}: the y column is a duplicate, masked out, when y_t is already in the top-K
    in_top = (teacher.support_ids == tokens[..., None]).any(-1, keepdim=True)
    drop = torch.cat([torch.zeros_like(teacher.support_logits, dtype=torch.bool), in_top], dim=-1)
    t_sup = torch.cat([teacher.support_logits, teacher.logit_y[..., None]], -1).masked_fill(drop, -math.inf)
    s_sup = torch.cat([student.support_logits, student.logit_y[..., None]], -1).masked_fill(drop, -math.inf)
    log_q_tilde = teacher.logit_y - torch.logsumexp(t_sup, dim=-1)  # Eq. 21
    log_pi_tilde = student.logit_y - torch.logsumexp(s_sup, dim=-1)  # Eq. 21
    delta = log_q_tilde - log_pi_tilde  # Eq. 4 / 22 (sg: computed without a graph)
    return torch.where(valid, delta, torch.zeros_like(delta))
