"""Lean log-probs (issue 23, item 3): no [n, C, V] tensor in the update, and the same results as the
full-logit path.

References: the credit functions on full logits (credit/log_ratio.py), `selective_log_softmax` and the
step as it was before (bench/memory.py `reference_step`: the teacher's whole logits, then top-K; the
student's logits kept for backward). Compared on the tiny model and on bench/memory.py's random-weight
Qwen2.5-VL, for credit=topk and sampled_token, temperature 0.7, micro-batches, padding, teacher=current
(shared image features) and a separate teacher copy, with the teacher first and the student first.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from conftest import load_bench
from test_logprob_consistency import ALGO, make_batch
from visd_exp.credit import log_ratio_for
from visd_exp.credit.lean import log_ratio_from_terms, output_terms
from visd_exp.judge import evidence_from_sample
from visd_exp.models import vision_token_ids
from visd_exp.objectives import selective_log_softmax
from visd_exp.objectives.chunked_logprobs import completion_logprobs
from visd_exp.rollout.generation import generate_rollouts, policy_logprobs
from visd_exp.step_forward import TeacherReplay, policy_update, recompute_logprobs, teacher_terms
from visd_exp.teacher import privileged_block, teacher_inputs, teacher_states

BENCH = load_bench("memory")
TOPK = OmegaConf.create({"name": "topk", "k": 4, "eps_w": 0.2, "chunk_size": 5})
SAMPLED = OmegaConf.create({"name": "sampled_token", "eps_w": 0.2, "chunk_size": 7})
T = 0.7
COMPARED = ("delta", "weights", "token_advantages")


class Head(torch.nn.Module):
    """An output layer that returns its input: hidden states ARE the logits (chunked vs full, exactly)."""

    def forward(self, x):
        return x


def random_logits(seed: int, n=3, c=9, v=40, dtype=torch.float32, ties=False):
    g = torch.Generator().manual_seed(seed)
    teacher = (
        torch.randint(-3, 4, (n, c, v), generator=g).float()
        if ties
        else torch.randn(n, c, v, generator=g) * 2
    )
    student = torch.randn(n, c, v, generator=g) * 2
    tokens = torch.randint(0, v, (n, c), generator=g)
    mask = torch.ones(n, c, dtype=torch.long)
    mask[0, -3:] = 0  # padding
    mask[2, 5:] = 0
    return teacher.to(dtype), student.to(dtype), tokens, mask


# ---------------------------------------------------------------- the pieces against the full-logit functions
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(
    "cfg", [TOPK, SAMPLED, OmegaConf.merge(TOPK, {"k": 0})], ids=["topk", "sampled", "k0"]
)
def test_chunked_terms_give_the_full_logit_delta_exactly(cfg, ties, dtype):
    """Teacher terms (top-K with the lower-id tie-break, integer logits: ties at the K-th place), the
    student's at its support, Delta: equal to credit.log_ratio_for on the whole [n, C, V] logits / T."""
    teacher, student, tokens, mask = random_logits(1, dtype=dtype, ties=ties)
    want = log_ratio_for(cfg, teacher / T, student / T, tokens.masked_fill(mask == 0, -100))
    assert want.abs().max() > 1e-2 or cfg.get("k") == 0
    t_terms = teacher_terms(cfg, teacher_like(teacher), tokens, mask, T)
    for chunk in (1, 4, 1000):  # the student's pass in other chunks than the teacher's
        student_pass = completion_logprobs(
            student, Head(), tokens, mask, T, teacher=t_terms, chunk_size=chunk
        )
        got = log_ratio_from_terms(t_terms, student_pass.terms, tokens, mask)
        assert torch.equal(got, want), (got - want).abs().max()
        again = output_terms(
            student, Head(), tokens, mask, T, support=t_terms.support_ids, full_lse=t_terms.lse is not None,
            chunk_size=chunk,
        )  # fmt: skip
        assert torch.equal(log_ratio_from_terms(t_terms, again, tokens, mask), want)


def teacher_like(logits):
    """CompletionStates whose hidden states are the logits (Head)."""
    from visd_exp.models.shared_vision import CompletionStates

    return CompletionStates(logits, Head())


@pytest.mark.parametrize("k", [40, 45])
def test_k_at_least_vocabulary_is_the_sampled_token_delta(k):
    teacher, student, tokens, mask = random_logits(2)
    want = log_ratio_for(
        OmegaConf.merge(TOPK, {"k": k}), teacher, student, tokens.masked_fill(mask == 0, -100)
    )
    t_terms = teacher_terms(OmegaConf.merge(TOPK, {"k": k}), teacher_like(teacher), tokens, mask, 1.0)
    assert t_terms.lse is not None and t_terms.support_ids.shape[-1] == 0  # no [n, C, V] of ids
    s_pass = completion_logprobs(student, Head(), tokens, mask, 1.0, teacher=t_terms)
    torch.testing.assert_close(
        log_ratio_from_terms(t_terms, s_pass.terms, tokens, mask), want, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_student_logprobs_gradient_entropy_and_argmax_equal_the_full_logits(temperature):
    """Through a real linear output layer: log-probs, their gradient (hidden states and weight), the
    entropy and the greedy token, against selective_log_softmax and log_softmax on the whole logits."""
    torch.manual_seed(0)
    n, c, h, v = 3, 11, 16, 64
    head = torch.nn.Linear(h, v)
    hidden = torch.randn(n, c, h, requires_grad=True)
    tokens = torch.randint(0, v, (n, c))
    mask = torch.ones(n, c, dtype=torch.long)
    mask[1, 4:] = 0
    weight = torch.randn(n, c)  # any downstream loss

    def grads(logprobs):
        head.zero_grad(set_to_none=True)
        hidden.grad = None
        (logprobs * mask * weight).sum().backward()
        return hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()

    full = head(hidden)
    want = selective_log_softmax(full, tokens, temperature) * mask
    want_grads = grads(want)
    out = completion_logprobs(hidden, head, tokens, mask, temperature, chunk_size=4)
    assert out.logprobs.requires_grad
    torch.testing.assert_close(out.logprobs, want, atol=1e-6, rtol=0)
    for got, ref in zip(grads(out.logprobs), want_grads):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    logp = torch.log_softmax(full.detach() / temperature, -1)
    torch.testing.assert_close(out.entropy, -(logp.exp() * logp).sum(-1) * mask, atol=1e-6, rtol=0)
    assert torch.equal(out.argmax[mask.bool()], full.argmax(-1)[mask.bool()])
    assert (out.argmax[~mask.bool()] == -1).all() and (out.logprobs[~mask.bool()] == 0).all()


def test_no_vocabulary_sized_tensor_is_kept_for_backward_nor_made(tiny, case):
    """The policy's pass keeps no [*, V] tensor for backward (the full-logit path keeps [n, C + 1, V]), and
    the output layers (student and teacher) only ever see one chunk of positions, in backward too."""
    model, _ = tiny
    _, rollouts, inputs, _ = case
    V = model.get_output_embeddings().out_features
    n, C = rollouts.completion_ids.shape
    valid = int(rollouts.completion_mask.sum())
    saved, calls = {"lean": [], "reference": []}, []

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(path, t):  # activations only: a saved weight (lm_head's [V, H], or its transpose) is no logit
        if t.untyped_storage().data_ptr() not in weights:
            saved[path].append(tuple(t.shape))
        return t

    def keep(path):
        return torch.autograd.graph.saved_tensors_hooks(lambda t: pack(path, t), lambda t: t)

    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: calls.append(out.shape))
    try:
        with keep("lean"):
            lp, _ = policy_logprobs(model, rollouts, T, chunk_size=8)
        student_calls = calls[:]
        calls.clear()
        states = teacher_states(model, inputs, C, rollouts.images_per_row)
        teacher_terms(TOPK, states, rollouts.completion_ids, rollouts.completion_mask, T)
        teacher_calls = calls[:]
        calls.clear()
        lp.sum().backward()  # the backward recomputes each chunk's logits
        recomputed = calls[:]
        with keep("reference"):
            logits = BENCH.full_logits(model, rollouts.model_inputs(), C, rollouts.images_per_row)
            selective_log_softmax(logits, rollouts.completion_ids, T)  # the old path's log-probs
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    kept = [s for s in saved["reference"] if s[-1] == V]  # the check sees the old path's fp32 rows
    assert sum(torch.Size(s).numel() for s in kept) >= n * C * V
    assert saved["lean"] and not [s for s in saved["lean"] if s[-1] == V]
    for seen, chunk in ((student_calls, 8), (teacher_calls, TOPK.chunk_size), (recomputed, 8)):
        assert len(seen) == -(-valid // chunk)  # ceil: one call per chunk of valid positions
        assert all(len(s) == 2 and s[0] <= chunk and s[1] == V for s in seen)


# ---------------------------------------------------------------- the whole update against the reference step
@pytest.fixture(scope="module")
def case(tiny, tmp_path_factory):
    """The tiny model: 2 prompts (8 and 5 frames) x G = 3, completions of different lengths (padding), a
    perturbed teacher copy with a privileged block per rollout."""
    from conftest import write_square_video

    model, processor = tiny
    batch = make_batch(processor, write_square_video(tmp_path_factory.mktemp("v") / "v.mp4"))
    for sample, times in zip(batch["samples"], ([i * 1.0 for i in range(8)], [i * 1.6 for i in range(5)])):
        sample.update({"frame_times": times, "video_duration": 8.0, "answer": "B", "segment": [2.0, 5.0]})
    torch.manual_seed(0)
    rollouts = generate_rollouts(model, processor, batch, ALGO, vision_token_ids(processor.tokenizer))
    C = rollouts.completion_ids.shape[1]
    for i, length in enumerate(
        (C, C - 3, 5, C, 1, C - 7)
    ):  # ended early: right padding, as after an end token
        rollouts.completion_mask[i, length:] = 0
    rollouts.completion_ids = rollouts.completion_ids.masked_fill(rollouts.completion_mask == 0, 0)
    G = ALGO.num_generations
    samples = [s for s in batch["samples"] for _ in range(G)]
    grids = [g for g in batch["image_grid_thw"] for _ in range(G)]
    blocks = [privileged_block("B", evidence_from_sample(s), f"note {i}") for i, s in enumerate(samples)]
    inputs = teacher_inputs(processor, rollouts, samples, blocks, grids)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return teacher, rollouts, inputs, torch.tensor([1.0, -0.5, -0.5, 0.8, 0.0, -0.8])


@pytest.fixture(scope="module")
def qwen_case():
    """bench/memory.py's random-weight Qwen2.5-VL (hidden 32, 1 layer) with a vocabulary of 4,096:
    N = 4 rollouts of 32 tokens, right-padded to different lengths, a teacher copy 1e-2 away."""
    return BENCH.build_step({**BENCH.SIZES["tiny"], "vocab": 4096})


def lean_and_reference(
    model, teacher, rollouts, inputs, advantages, credit, micro, pending=False, bf16=False
):
    """(lean, reference) results and gradients of one step each (old-log-prob recompute + update)."""
    results = []
    for path in ("lean", "reference"):
        batch = copy.copy(rollouts)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if path == "lean":
                batch.old_logprobs = recompute_logprobs(model, batch, T, micro)
                C = batch.completion_ids.shape[1]

                def forward(x, images, features=None, C=C):
                    return teacher_states(teacher, x, C, images, features)

                replay = TeacherReplay(
                    (lambda: inputs) if pending else inputs, forward, credit, BENCH.LAM,
                    shares_student_vision=teacher is model,
                )  # fmt: skip
                out = policy_update(
                    model,
                    batch,
                    advantages,
                    temperature=T,
                    epsilon=0.2,
                    micro_batch_size=micro,
                    replay=replay,
                )
                out.logprobs = out.logprobs * batch.completion_mask
            else:
                out = BENCH.reference_step(model, teacher, batch, inputs, advantages, micro, credit, T)
        out.old_logprobs = batch.old_logprobs
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        results.append((out, grads))
    return results


def named(name: str):
    return lambda message: f"{name}: {message}"


def assert_same(lean, reference, atol: float):
    (out, grads), (ref, ref_grads) = lean, reference
    assert ref.delta.abs().max() > 1e-3 and abs(ref.loss.item()) > 1e-4  # a real teacher signal and loss
    assert abs(out.loss.item() - ref.loss.item()) < atol
    for name in (*COMPARED, "logprobs", "old_logprobs"):
        # rtol 1e-5: a few float32 ulps of log-probs of magnitude ~7 (the output layer's GEMM over a chunk of
        # positions may round an entry differently from the GEMM over all of them)
        torch.testing.assert_close(
            getattr(out, name), getattr(ref, name), atol=atol, rtol=1e-5, msg=named(name)
        )
    assert abs(out.entropy - ref.entropy) < atol * max(1.0, ref.entropy)
    assert grads.keys() == ref_grads.keys() and any(".visual." in k for k in grads)
    scale = max(g.abs().max().item() for g in ref_grads.values())
    worst = max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads)
    assert worst < atol * max(1.0, scale), (worst, scale)


@pytest.mark.parametrize("micro", [None, 4])
@pytest.mark.parametrize("credit", [TOPK, SAMPLED], ids=["topk", "sampled"])
@pytest.mark.parametrize("teacher_kind", ["copy", "current"])
def test_update_equals_the_full_logit_step_on_the_tiny_model(tiny, case, teacher_kind, credit, micro):
    model, _ = tiny
    teacher, rollouts, inputs, advantages = case
    teacher = model if teacher_kind == "current" else teacher
    model.train()
    try:
        lean, reference = lean_and_reference(model, teacher, rollouts, inputs, advantages, credit, micro)
    finally:
        model.eval()
    assert_same(lean, reference, atol=1e-6)


@pytest.mark.parametrize("credit", [TOPK, SAMPLED], ids=["topk", "sampled"])
@pytest.mark.parametrize("teacher_kind", ["copy", "current"])
def test_update_equals_the_full_logit_step_on_the_qwen_class(qwen_case, teacher_kind, credit):
    model, teacher, rollouts, inputs, advantages = qwen_case
    teacher = model if teacher_kind == "current" else teacher
    lean, reference = lean_and_reference(model, teacher, rollouts, inputs, advantages, credit, 2)
    assert_same(lean, reference, atol=1e-6)


def test_student_first_takes_its_support_logits_after_the_teacher(qwen_case):
    """While the judge's feedback is pending the student goes first; its logits at the teacher's support
    come from a later no-grad pass over its kept hidden states: the same results."""
    model, teacher, rollouts, inputs, advantages = qwen_case
    lean, reference = lean_and_reference(model, teacher, rollouts, inputs, advantages, TOPK, 2, pending=True)
    assert_same(lean, reference, atol=1e-6)


@pytest.mark.parametrize("credit", [TOPK, SAMPLED], ids=["topk", "sampled"])
def test_update_under_bf16_autocast_is_within_the_bf16_tolerance(qwen_case, credit):
    """bf16 autocast, teacher=current, micro-batches of 2: within the tolerance the bf16 tests of the
    full-logit path use (tests/test_shared_vision.py: 0.05 absolute on logits, 0.1 of the gradient's scale)."""
    model, _, rollouts, inputs, advantages = qwen_case
    (out, grads), (ref, ref_grads) = lean_and_reference(
        model, model, rollouts, inputs, advantages, credit, 2, bf16=True
    )
    assert ref.delta.abs().max() > 1e-2  # the teacher's privileged block moves Delta
    for name in (*COMPARED, "logprobs", "old_logprobs"):
        torch.testing.assert_close(
            getattr(out, name), getattr(ref, name), atol=0.05, rtol=0.02, msg=named(name)
        )
    assert abs(out.loss.item() - ref.loss.item()) < 0.05 * max(abs(ref.loss.item()), 1e-3)
    assert abs(out.entropy - ref.entropy) < 0.02 * ref.entropy
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp(min=1e-6)
        assert (grads[name] - ref_grads[name]).abs().max() / scale < 0.1, name


@pytest.mark.slow
def test_zero3_ranks_with_different_numbers_of_positions_call_the_output_layer_equally(tmp_path):
    """Two ZeRO-3 ranks (tests/lean_zero3_worker.py): 3 and 13 valid positions in chunks of 2. Without an
    agreed number of chunks the partitioned output layer's gathers would not line up (a hang, killed at
    the timeout); with it both ranks finish the teacher's and the student's passes and the backward, with
    the values of the gathered weight."""
    import json
    import os
    import socket
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    from conftest import PROJECT_ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1"}
        env.update({"MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)})
        log = open(tmp_path / f"rank{rank}.log", "wb")
        worker = [sys.executable, str(PROJECT_ROOT / "tests" / "lean_zero3_worker.py"), str(tmp_path)]
        procs.append(subprocess.Popen(worker, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for proc in procs:
            proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "".join((tmp_path / f"rank{r}.log").read_text(errors="replace")[-2000:] for r in range(2))
    files = [tmp_path / f"rank_{r}.json" for r in range(2)]
    assert all(f.exists() for f in files), f"a rank did not finish (hang or error):\n{logs}"
    for f in files:
        result = json.loads(f.read_text())
        assert result["logprob_diff"] < 1e-5 and result["topk_diff"] < 1e-5 and result["hidden_grad"], result
