"""The forward passes of one update, micro-batch by micro-batch (bounded memory; issue 11, item 3).

`algorithm.micro_batch_size` rollouts go through the network at a time (null: all N at once). For each
micro-batch of n rollouts, `policy_update` runs, in order:

    teacher replay (no grad)  -> its top-K ids and logits, its logit at y_t   (credit/lean.py)
    student forward (grad)    -> log pi(y_t), entropy, its logits at those ids (objectives/chunked_logprobs.py)
                              -> Delta_t        (Eq. 4: top-K support or sampled token, `credit` group)
                              -> m_t            (Eq. 5-6)
                              -> A^_t           (Eq. 7; GRPO: A^_t = A)
    clipped surrogate (Eq. 9) x n / N -> backward

except while a remote judge's feedback is still pending (algorithms/visd.py asks it in a background
thread): then the student's forward goes first, so that the judge's calls overlap it, and the teacher's
inputs, which hold the feedback, are built when the teacher needs them. The teacher goes first otherwise:
on CPU its forward measured about 20% slower while the student's graph was alive (README: 0.19 against 0.16 s).
With `teacher=current` (the teacher is the student) the replay reuses the student forward's image features,
detached, instead of encoding the same frames again (models/shared_vision.py).

Eq. 9 is a mean over the N rollouts of per-rollout token means, so the micro-batch losses scaled by n / N
sum to the full-batch loss and their gradients accumulate to the full-batch gradient.

No [n, C, V] tensor is made (issue 23, item 3): both models stop at their last hidden states [n, C, H]
(models/shared_vision.py `completion_states`) and their output layers run chunk by chunk of positions:
the teacher's in `credit.chunk_size` positions, keeping only [n, C, K] of it (credit/lean.py); the
student's in checkpointed chunks whose logits backward recomputes (objectives/chunked_logprobs.py). When
the student went first its logits at the teacher's support are one more no-grad pass of its output layer.
`recompute_logprobs` is the no-grad forward of `algorithm.old_logprobs=recompute`, with the same
micro-batches and chunks (the first ratio is exactly 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from visd_exp import credit
from visd_exp.credit.lean import PositionTerms, credit_needs, log_ratio_from_terms, output_terms
from visd_exp.models.shared_vision import CompletionStates, detached, vision_features
from visd_exp.objectives import clipped_surrogate_loss
from visd_exp.rollout.generation import RolloutBatch, policy_logprobs, select_rows


def micro_slices(n: int, size: int | None) -> list[slice]:
    """Row slices of at most `size` rollouts (None or >= n: one slice of all n)."""
    size = n if size is None or int(size) >= n else int(size)
    if size < 1:
        raise ValueError(f"algorithm.micro_batch_size must be >= 1 or null, got {size}")
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


@torch.no_grad()
def recompute_logprobs(model, rollouts: RolloutBatch, temperature: float, micro_batch_size) -> torch.Tensor:
    """pi_old(y_t) by a no-grad forward [N, C] float32 (0 at padding), micro-batched like the update.

    Run in the same mode and precision context as the update's forward, so that before the first
    optimizer step the ratio of Eq. 17 is exactly 1.
    """
    out = torch.zeros(
        rollouts.completion_ids.shape, dtype=torch.float32, device=rollouts.completion_ids.device
    )
    for rows in micro_slices(rollouts.num_rollouts, micro_batch_size):
        logprobs, _ = policy_logprobs(model, rollouts.select(rows), temperature)
        out[rows] = logprobs * rollouts.completion_mask[rows]
    return out


@dataclass
class TeacherReplay:
    """What the VISD credit needs: the teacher's inputs for all N rollouts and how to score a micro-batch."""

    # teacher_inputs(...) for every rollout (privileged prompt + the same completion tokens), or a function
    # that builds them when the first micro-batch needs them (VISD: it waits for the judge's feedback)
    inputs: dict | Callable[[], dict]
    # (micro-batch inputs, images per row, image features or None) -> the teacher's last hidden states at
    # the completion positions and its output layer (teacher/replay.py `teacher_states`)
    forward: Callable[[dict, list[int] | None, dict | None], CompletionStates]
    credit: Any  # the `credit` config node (name, k, eps_w, chunk_size)
    lam: float  # lambda of Eq. 7
    # teacher=current: the teacher is the student, so the student forward's image features serve it too
    shares_student_vision: bool = False

    def pending(self) -> bool:
        """Whether the inputs are still to be built (VISD: a remote judge's feedback may be on its way)."""
        return callable(self.inputs)

    def ready_inputs(self) -> dict:
        if callable(self.inputs):
            self.inputs = self.inputs()
        return self.inputs


@dataclass
class UpdateResult:
    loss: torch.Tensor  # the full batch's surrogate (the sum of the micro-batches' scaled losses), detached
    logprobs: torch.Tensor  # [N, C] log pi(y_t) under the policy being updated, detached
    token_advantages: torch.Tensor  # [N, C] A^_t (Eq. 7)
    entropy: float  # mean over valid positions
    delta: torch.Tensor | None = None  # [N, C] Delta_t (Eq. 4), VISD only
    weights: torch.Tensor | None = None  # [N, C] m_t (Eq. 6), VISD only


def teacher_terms(credit_cfg, states: CompletionStates, tokens, mask, temperature: float) -> PositionTerms:
    """What Delta_t needs of the teacher (its top-K ids and logits and its logit at y_t; its logsumexp for
    sampled_token), on logits / temperature, `credit.chunk_size` positions at a time."""
    k, full_lse = credit_needs(credit_cfg)
    chunk = credit_cfg.get("chunk_size", credit.DEFAULT_CHUNK_SIZE)
    return output_terms(
        states.hidden, states.head, tokens, mask, temperature, k=k, full_lse=full_lse, chunk_size=chunk
    )


def log_ratio(
    credit_cfg, t_states: CompletionStates, s_states: CompletionStates, tokens, mask, temperature: float
) -> torch.Tensor:
    """Delta_t [n, C] per the `credit` group between two models' completion states, on the first's support
    (0 at padding). The credit dumps compare the feedback and the answer-only teachers so (Eq. 31)."""
    t = teacher_terms(credit_cfg, t_states, tokens, mask, temperature)
    chunk = credit_cfg.get("chunk_size", credit.DEFAULT_CHUNK_SIZE)
    s = output_terms(
        s_states.hidden,
        s_states.head,
        tokens,
        mask,
        temperature,
        support=t.support_ids,
        full_lse=t.lse is not None,
        chunk_size=chunk,
    )
    return log_ratio_from_terms(t, s, tokens, mask)


def teacher_replay(
    replay: TeacherReplay, rollouts: RolloutBatch, rows: slice, features, timed, temperature: float
) -> PositionTerms:
    """The teacher's PositionTerms of the micro-batch `rows`; features: the student's image features of
    these rows when the teacher shares its weights (teacher=current), else None."""
    inputs = replay.ready_inputs()  # the first time: the judge's feedback is awaited (timing/judge)
    with timed("teacher"):
        images = rollouts.images_per_row[rows] if rollouts.images_per_row else None
        t_features = detached(features) if features is not None else None  # the same frames and weights
        states = replay.forward(select_rows(inputs, rows, rollouts.images_per_row), images, t_features)
        tokens, mask = rollouts.completion_ids[rows], rollouts.completion_mask[rows]
        return teacher_terms(replay.credit, states, tokens, mask, temperature)


def policy_update(
    model,
    rollouts: RolloutBatch,
    advantages: torch.Tensor,
    *,
    temperature: float,
    epsilon: float,
    micro_batch_size: int | None = None,
    replay: TeacherReplay | None = None,
    loss_scale: float = 1.0,
    backward: Callable[[torch.Tensor], None] | None = None,
    watch=None,
    is_weights: torch.Tensor | None = None,
    old_is_current: bool = False,
) -> UpdateResult:
    """Forward and backward over all rollouts, one micro-batch at a time; gradients accumulate in .grad.

    advantages: [N] rollout advantages A (Eq. 14). loss_scale multiplies what is back-propagated (1 / k
    under gradient accumulation over k batches). backward: e.g. LightningModule.manual_backward.
    watch: an optional Stopwatch; the teacher replay is timed as `teacher`, the rest as `update`.
    is_weights: [N, C] truncated importance weights for the rollout engine's mismatch, or None.
    old_is_current: pi_old is this very forward, detached (`algorithm.old_logprobs=current`: the first and only
    update on these rollouts, so rho_t = 1 and no separate old-log-prob forward runs).
    """
    backward = backward or torch.Tensor.backward
    n_total = rollouts.num_rollouts
    mask = rollouts.completion_mask.float()
    logprobs = torch.zeros_like(mask)
    token_adv = advantages[:, None].to(mask).expand_as(mask).clone()  # GRPO: A^_t = A
    delta = torch.zeros_like(mask) if replay is not None else None
    weights = torch.ones_like(mask) if replay is not None else None
    loss_total, entropy_total = torch.zeros(()), 0.0
    timed = watch or (lambda stage: contextlib.nullcontext())
    for rows in micro_slices(n_total, micro_batch_size):
        part = rollouts.select(rows)
        shares = replay is not None and replay.shares_student_vision and part.images_per_row is not None
        with timed("update"):  # teacher=current: the student's image features serve the teacher too
            features = (
                vision_features(model, part.pixel_values, part.image_grid_thw, part.images_per_row)
                if shares
                else None
            )
        # the teacher first, unless a remote judge's feedback is pending (module docstring)
        teacher_first = replay is not None and not replay.pending()
        t_terms = (
            teacher_replay(replay, rollouts, rows, features, timed, temperature) if teacher_first else None
        )
        with timed("update"):  # [n, C] with grad, and (detached) the entropy and the student's terms
            lp, student = policy_logprobs(model, part, temperature, features, teacher=t_terms)
        if replay is not None and not teacher_first:
            t_terms = teacher_replay(
                replay, rollouts, rows, features, timed, temperature
            )  # the judge overlapped it
        with timed("update"):
            if replay is not None:  # VISD: the teacher's credit on this micro-batch's tokens
                a, valid, eps_w = advantages[rows], mask[rows], replay.credit.eps_w
                s_terms = student.terms if teacher_first else student.terms_at(t_terms)
                d = log_ratio_from_terms(t_terms, s_terms, part.completion_ids, valid)
                del t_terms, s_terms
                delta[rows] = d  # Delta_t (Eq. 4)
                weights[rows] = m = credit.token_weights(d, a, eps_w)  # m_t (Eq. 5-6)
                token_adv[rows] = credit.token_advantages(a, m, replay.lam)  # A^_t (Eq. 7)
            entropy_total += float(student.entropy.sum())
            del student
            # Eq. 9 on this micro-batch: its mean over n rollouts, x n / N = its share of the mean over N
            w = is_weights[rows] if is_weights is not None else None
            old = lp.detach() if old_is_current else part.old_logprobs  # rho_t = 1 exactly when current
            loss = clipped_surrogate_loss(lp, old, token_adv[rows], mask[rows], epsilon, w)
            loss = loss * ((rows.stop - rows.start) / n_total)
            backward(loss * loss_scale)
            loss_total = loss_total + loss.detach().float().cpu()
            logprobs[rows] = lp.detach()
    return UpdateResult(
        loss=loss_total,
        logprobs=logprobs,
        token_advantages=token_adv,
        entropy=entropy_total / max(mask.sum().item(), 1.0),
        delta=delta,
        weights=weights,
    )
