"""The policy's log-probs of its completion tokens without a [n, C, V] tensor (issue 23, item 3).

    log pi(y_t) = log softmax(lm_head(h_t) / temperature)[y_t]

The language model's last hidden states h [n, C, H] (the model without its output layer) go through the
output layer one chunk of `chunk_size` valid positions at a time, under activation checkpointing: for
backward a chunk keeps only its hidden states; backward recomputes the chunk's logits and writes their
gradient into one float32 buffer (`PickedLogSoftmax`). At 7B (V = 152,064, C = 768, n = 4) the full-logit
path kept the bf16 [n, C, V] logits (0.94 GB) and float32 rows of them (1.9 GB) until backward; here at
most one chunk's logits exist at a time (256 positions: 78 MB in bf16, 156 MB in float32).

The same pass gives, detached, the policy's entropy and greedy token at each position and, when the
teacher's terms are given, what the credit needs of the student (credit/lean.py): its logits at the
teacher's top-K ids and at y_t, and its logsumexp for sampled_token. Only valid positions (mask != 0)
are computed; padding gets 0 (log-probs, entropy) and -1 (greedy token).

The arithmetic is the full-logit path's (objectives/grpo.py `selective_log_softmax`, the reference): the
logits are upcast to float32, divided by the temperature, and log-softmaxed; its gradient is the same
(one-hot - softmax) / temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from visd_exp.credit.lean import (
    PositionTerms,
    chunk_count,
    chunk_terms,
    output_terms,
    scaled,
    scatter_terms,
    split_chunks,
    valid_positions,
)

# Positions per chunk of the output layer in the policy's pass (log-probs, old log-probs, entropy). The
# old-log-prob recompute and the update use the same chunks, so their log-probs are bitwise equal (ratio
# exactly 1). A chunk's transient is about 10 bytes x chunk x V in backward (bf16 logits, a float32
# gradient and its bf16 copy): 0.4 GB at 256 x 152,064. The teacher's pass uses `credit.chunk_size`.
LOGPROB_CHUNK_SIZE = 256


class PickedLogSoftmax(torch.autograd.Function):
    """log softmax(z.float() / temperature)[y] for one chunk: z [c, V] (any float dtype), y [c] -> [c] float32.

    Saves z and the logsumexp [c]; backward writes grad x (one-hot(y) - softmax) / temperature into one
    float32 buffer, in place, instead of autograd's several [c, V] temporaries."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
        x = z.float()
        if temperature != 1.0:
            x = x / temperature
        lse = torch.logsumexp(x, dim=-1)
        picked = x.gather(-1, y[:, None])[:, 0] - lse
        ctx.save_for_backward(z, y, lse)
        ctx.temperature = temperature
        return picked

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, y, lse = ctx.saved_tensors
        temperature = ctx.temperature
        g = z.to(torch.float32, copy=True)
        if temperature != 1.0:
            g.div_(temperature)
        g.sub_(lse[:, None]).exp_()  # softmax
        g.mul_(-grad[:, None]).scatter_add_(-1, y[:, None], grad[:, None])  # grad x (one-hot - softmax)
        if temperature != 1.0:
            g.div_(temperature)
        return g.to(z.dtype), None, None


def _chunk(head, h, y, temperature: float, support, full_lse: bool):
    """One chunk: its log-probs [c] (with grad) and, detached, its entropy, greedy token and credit terms."""
    z = head(h)  # [c, V]
    logprobs = PickedLogSoftmax.apply(z, y, temperature)
    # Everything below runs without a graph; in backward the checkpoint's recompute stops before it
    with torch.no_grad():
        z = z.detach()
        x = z.float()
        x = x / temperature if temperature != 1.0 else x
        logp = torch.log_softmax(x, dim=-1)
        extras = {"entropy": -logp.exp().mul_(logp).sum(-1), "argmax": z.argmax(-1)}
        del logp
        # the credit's student terms on logits / temperature in the logits' dtype (credit/lean.py)
        zs = x if z.dtype == torch.float32 else scaled(z, temperature)
        del x
        if support is not None or full_lse:
            extras["terms"] = chunk_terms(zs, y, None, support, full_lse)
    return logprobs, extras


@dataclass
class TokenLogProbs:
    """The policy's pass over completion positions: [n, C] float32 unless said (0 at padding)."""

    logprobs: torch.Tensor  # log pi(y_t), with grad when computed with grad
    entropy: torch.Tensor  # detached: the policy's entropy at temperature
    argmax: torch.Tensor  # [n, C] long, detached: the greedy token (-1 at padding)
    terms: PositionTerms | None  # the credit's student terms at the teacher's support (None: not asked)
    hidden: torch.Tensor  # [n, C, H] detached hidden states, for `terms_at` after the pass
    head: torch.nn.Module
    tokens: torch.Tensor
    mask: torch.Tensor
    temperature: float
    chunk_size: int

    def terms_at(self, teacher: PositionTerms) -> PositionTerms:
        """The student's terms at the teacher's support by one more no-grad pass of the output layer over the
        kept hidden states (the teacher's terms came after the student's pass), in the same chunks."""
        return output_terms(
            self.hidden,
            self.head,
            self.tokens,
            self.mask,
            self.temperature,
            support=teacher.support_ids,
            full_lse=teacher.lse is not None,
            chunk_size=self.chunk_size,
        )


def completion_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    *,
    teacher: PositionTerms | None = None,
    chunk_size: int = LOGPROB_CHUNK_SIZE,
) -> TokenLogProbs:
    """log pi(y_t) [n, C] from the last hidden states [n, C, H] at the positions that score the tokens
    [n, C], chunk by chunk through `head` (module docstring). teacher: the teacher's PositionTerms of
    these rows, so that the student's terms at its support come out of the same pass."""
    if tokens.shape != hidden.shape[:2] or mask.shape != tokens.shape:
        raise ValueError(
            f"hidden states {tuple(hidden.shape)} do not match tokens {tuple(tokens.shape)} / mask "
            f"{tuple(mask.shape)}"
        )
    n, c_len = tokens.shape
    positions = valid_positions(mask)
    h = hidden.reshape(n * c_len, -1)[positions]  # [M, H] valid positions only
    y = tokens.reshape(-1)[positions].long()
    support = None
    if teacher is not None and teacher.support_ids is not None:
        support = teacher.support_ids.flatten(0, 1)[positions]
    full_lse = teacher is not None and teacher.lse is not None
    count = chunk_count(positions.numel(), chunk_size, head, hidden.device)
    grad = torch.is_grad_enabled() and h.requires_grad
    chunks = []
    pieces = zip(
        split_chunks(h, chunk_size, count),
        split_chunks(y, chunk_size, count),
        split_chunks(support, chunk_size, count) if support is not None else [None] * count,
    )
    for h_c, y_c, s_c in pieces:
        if grad:  # the output layer draws no random numbers: no RNG state to keep
            out = checkpoint(
                _chunk,
                head,
                h_c,
                y_c,
                temperature,
                s_c,
                full_lse,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        else:
            out = _chunk(head, h_c, y_c, temperature, s_c, full_lse)
        chunks.append(out)
    flat = n * c_len
    logprobs = torch.cat([lp for lp, _ in chunks])
    logprobs = logprobs.new_zeros(flat).scatter(0, positions, logprobs).view(n, c_len)
    entropy = hidden.new_zeros(flat, dtype=torch.float32)
    entropy[positions] = torch.cat([e["entropy"] for _, e in chunks])
    argmax = torch.full((flat,), -1, dtype=torch.long, device=hidden.device)
    argmax[positions] = torch.cat([e["argmax"] for _, e in chunks])
    terms = None
    if support is not None or full_lse:
        terms = scatter_terms([e["terms"] for _, e in chunks], positions, tokens.shape)
    return TokenLogProbs(
        logprobs=logprobs,
        entropy=entropy.view(n, c_len),
        argmax=argmax.view(n, c_len),
        terms=terms,
        hidden=hidden.detach(),
        head=head,
        tokens=tokens,
        mask=mask,
        temperature=temperature,
        chunk_size=chunk_size,
    )
