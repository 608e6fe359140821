"""Tests for visd_exp.credit against a naive float64 reference of VISD Eq. 3-7 and Eq. 24."""

import math

import pytest
import torch

from visd_exp.credit import (
    credit_stats,
    sampled_token_log_ratio,
    support_decomposition,
    teacher_topk_indices,
    token_advantages,
    token_weights,
    topk_support_log_ratio,
)

B, T, V = 3, 7, 50
EPS_W, LAM = 0.2, 0.5


# ---------------------------------------------------------------- naive reference (float64, python loops)
def _softmax64(row: torch.Tensor) -> list[float]:
    return torch.softmax(row.double(), dim=-1).tolist()


def ref_support(q: list[float], y: int, k: int) -> set[int]:
    """U_t = TopK_q(K) u {y_t} (Eq. 3); ties at the K-th place go to the lower token id."""
    order = sorted(range(len(q)), key=lambda v: (-q[v], v))
    return set(order[:k]) | {y}


def ref_terms(teacher, student, tokens, k):
    """Per position: (Delta^K, log q(y) - log pi(y), log P(U)/Q(U), |U|), zeros at padding."""
    out = {name: torch.zeros(tokens.shape, dtype=torch.float64) for name in ("delta", "evidence", "calib")}
    sizes = torch.zeros(tokens.shape, dtype=torch.long)
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            y = int(tokens[b, t])
            if y < 0:
                continue
            q, p = _softmax64(teacher[b, t]), _softmax64(student[b, t])
            support = ref_support(q, y, k)
            q_u, p_u = sum(q[u] for u in support), sum(p[u] for u in support)
            out["delta"][b, t] = math.log(q[y] / q_u) - math.log(p[y] / p_u)  # Eq. 21-22
            out["evidence"][b, t] = math.log(q[y]) - math.log(p[y])
            out["calib"][b, t] = math.log(p_u / q_u)
            sizes[b, t] = len(support)
    return out, sizes


def ref_credit(delta, adv, eps_w, lam):
    """m_t and A^_t element by element (Eq. 5-7)."""
    m = torch.zeros(delta.shape, dtype=torch.float64)
    a_hat = torch.zeros(delta.shape, dtype=torch.float64)
    for b in range(delta.shape[0]):
        a = float(adv[b])
        sign = (a > 0) - (a < 0)
        for t in range(delta.shape[1]):
            w = math.exp(sign * float(delta[b, t]))
            m[b, t] = min(max(w, 1 - eps_w), 1 + eps_w)
            a_hat[b, t] = a * ((1 - lam) + lam * m[b, t])
    return m, a_hat


def make_inputs(seed, b=B, t=T, v=V, pad=True, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, t, v, generator=gen) * scale
    student = torch.randn(b, t, v, generator=gen) * scale
    tokens = torch.randint(0, v, (b, t), generator=gen)
    if pad:
        tokens[0, -2:] = -100
    return teacher, student, tokens


# ---------------------------------------------------------------- Eq. 3-7 against the reference
@pytest.mark.parametrize("k", [16, 4])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_naive_reference(seed, k):
    teacher, student, tokens = make_inputs(seed)
    adv = torch.tensor([1.3, -0.7, 0.0])
    ref, _ = ref_terms(teacher, student, tokens, k)
    ref_m, ref_a_hat = ref_credit(ref["delta"], adv, EPS_W, LAM)

    delta = topk_support_log_ratio(teacher, student, tokens, k)
    m = token_weights(delta, adv, EPS_W)
    a_hat = token_advantages(adv, m, LAM)
    for got, want in ((delta, ref["delta"]), (m, ref_m), (a_hat, ref_a_hat)):
        assert got.dtype == torch.float32 and got.shape == (B, T)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    assert (delta[0, -2:] == 0).all() and (m[0, -2:] == 1).all()  # padding -> Delta 0, m 1
    assert (m[2] == 1).all() and (a_hat[2] == 0).all()  # A = 0 -> sign 0 -> m 1, A^ 0


def test_sampled_token_matches_reference():
    teacher, student, tokens = make_inputs(5)
    ref, _ = ref_terms(teacher, student, tokens, k=4)
    got = sampled_token_log_ratio(teacher, student, tokens)
    torch.testing.assert_close(got.double(), ref["evidence"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the support always covers y_t
def test_realised_token_outside_topk_uses_k_plus_one_support():
    k = 4
    teacher, student, tokens = make_inputs(7, pad=False)
    tokens = teacher.argmin(-1)  # the teacher's least likely token: never in its top-K
    ref, sizes = ref_terms(teacher, student, tokens, k)
    assert (sizes == k + 1).all()
    delta = topk_support_log_ratio(teacher, student, tokens, k)
    torch.testing.assert_close(delta.double(), ref["delta"], atol=1e-5, rtol=0)

    # by hand for one position: logsumexp over the K top ids plus y
    zt, zs, y = teacher[1, 3], student[1, 3], int(tokens[1, 3])
    u = torch.cat([zt.topk(k).indices, torch.tensor([y])])
    hand = (zt[y] - zt[u].logsumexp(0)) - (zs[y] - zs[u].logsumexp(0))
    torch.testing.assert_close(delta[1, 3], hand, atol=1e-5, rtol=0)
    top_only = (zt[y] - zt[u[:k]].logsumexp(0)) - (zs[y] - zs[u[:k]].logsumexp(0))
    assert not torch.isclose(delta[1, 3], top_only, atol=1e-3)  # y's own mass is in the normaliser


def test_realised_token_inside_topk_uses_k_support():
    k = 4
    teacher, student, tokens = make_inputs(8, pad=False)
    tokens = teacher.argmax(-1)
    ref, sizes = ref_terms(teacher, student, tokens, k)
    assert (sizes == k).all()
    torch.testing.assert_close(
        topk_support_log_ratio(teacher, student, tokens, k).double(), ref["delta"], atol=1e-5, rtol=0
    )


def test_ties_lowest_id_wins_and_match_reference():
    assert sorted(teacher_topk_indices(torch.zeros(2, 10), 3)[0].tolist()) == [0, 1, 2]
    row = torch.tensor([[0.0, 5.0, 1.0, 5.0, 1.0, 1.0, 1.0, -2.0]])  # 5, 5 then four tied 1's for 2 places
    assert sorted(teacher_topk_indices(row, 4)[0].tolist()) == [1, 2, 3, 4]
    # integer-valued logits: ties at the K-th place in most positions
    gen = torch.Generator().manual_seed(11)
    teacher = torch.randint(-3, 4, (B, T, V), generator=gen).float()
    student = torch.randn(B, T, V, generator=gen)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    for k in (4, 16):
        ref, _ = ref_terms(teacher, student, tokens, k)
        delta = topk_support_log_ratio(teacher, student, tokens, k)
        torch.testing.assert_close(delta.double(), ref["delta"], atol=1e-5, rtol=0)
        evidence, calib = support_decomposition(teacher, student, tokens, k)
        torch.testing.assert_close((evidence + calib).double(), ref["delta"], atol=1e-5, rtol=0)
        # the same values in bf16 (exact for small integers) pick the same support
        assert torch.equal(topk_support_log_ratio(teacher.bfloat16(), student, tokens, k), delta)


# ---------------------------------------------------------------- Eq. 5-7 / 15 by hand, Eq. 27-28
def test_weights_and_token_advantages_by_hand():
    """m_t and A^_t written out from Eq. 5-7 (eps_w = 0.2, lambda = 0.5), one column per case."""
    delta = torch.tensor([[0.1, -0.1, 0.5, -0.5, 0.0]] * 3)
    adv = torch.tensor([2.0, -2.0, 0.0])
    e_p, e_m = 1.1051709180756477, 0.9048374180359595  # exp(0.1), exp(-0.1)
    # A = +2: w = exp(+Delta); 0.5 and -0.5 fall outside [0.8, 1.2] and are clipped to its ends
    # A = -2: w = exp(-Delta): the same Delta now weighs the other way
    # A = 0: sign 0, w = 1 for every Delta
    want_m = torch.tensor(
        [[e_p, e_m, 1.2, 0.8, 1.0], [e_m, e_p, 0.8, 1.2, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64
    )
    # A^ = A ((1 - 0.5) + 0.5 m) = A (0.5 + 0.5 m)
    want_a_hat = torch.tensor(
        [
            [2.0 * (0.5 + 0.5 * e_p), 2.0 * (0.5 + 0.5 * e_m), 2.2, 1.8, 2.0],
            [-2.0 * (0.5 + 0.5 * e_m), -2.0 * (0.5 + 0.5 * e_p), -1.8, -2.2, -2.0],
            [0.0] * 5,
        ],
        dtype=torch.float64,
    )
    m = token_weights(delta, adv, eps_w=0.2)
    torch.testing.assert_close(m.double(), want_m, atol=1e-6, rtol=0)
    torch.testing.assert_close(token_advantages(adv, m, lam=0.5).double(), want_a_hat, atol=1e-6, rtol=0)
    # lambda = 1: A^ = A m; lambda = 0.25: A^ = A (0.75 + 0.25 m)
    torch.testing.assert_close(token_advantages(adv, m, lam=1.0)[0, :4].double(), 2 * want_m[0, :4])
    assert token_advantages(adv, m, lam=0.25)[1, 2].item() == pytest.approx(-2.0 * (0.75 + 0.25 * 0.8))


def test_clip_band_is_on_w_not_on_delta():
    """The band [1 - eps_w, 1 + eps_w] bounds w = exp(sign(A) Delta) (Eq. 6), so in Delta it is the
    asymmetric [log 0.8, log 1.2] = [-0.223, 0.182]: just inside, m = exp(sign(A) Delta) exactly; just
    outside, m is the bound, and larger |Delta| changes nothing."""
    delta = torch.tensor([[0.18, 0.19, 5.0, -0.22, -0.23, -5.0]])
    m = token_weights(delta, torch.tensor([1.0]), eps_w=0.2)[0].tolist()
    assert m[0] == pytest.approx(1.1972173631218102, abs=1e-6)  # exp(0.18) < 1.2: inside
    assert m[1] == pytest.approx(1.2, abs=1e-7) and m[2] == pytest.approx(1.2, abs=1e-7)  # exp(0.19) = 1.209
    assert m[3] == pytest.approx(0.8025187979624785, abs=1e-6)  # exp(-0.22) > 0.8: inside
    assert m[4] == pytest.approx(0.8, abs=1e-7) and m[5] == pytest.approx(0.8, abs=1e-7)  # exp(-0.23) = 0.795
    # a negative advantage mirrors the band: Delta = -0.19 is now the clipped upper side
    m_neg = token_weights(-delta, torch.tensor([-1.0]), eps_w=0.2)[0]
    torch.testing.assert_close(m_neg, torch.tensor(m))
    # a clip of Delta to [-eps_w, eps_w] before exp would give exp(0.19) = 1.209 and exp(-0.2) = 0.819 here


@pytest.mark.parametrize("eps_w", [0.2, 0.99])
def test_direction_preserved_and_magnitude_bounded(eps_w):
    gen = torch.Generator().manual_seed(3)
    delta = torch.randn(64, 32, generator=gen) * 3
    delta[:, :4] = torch.tensor([1e4, -1e4, 80.0, -80.0])  # exp under- / overflows: only the clip keeps m > 0
    adv = torch.randn(64, generator=gen)
    adv[adv.abs() < 1e-3] = 0.5
    sign = torch.sign(adv)[:, None]
    # where sign(A) Delta lies against the band decides m (Eq. 6), computed here from Delta, not from m
    s_delta = sign * delta
    inside = (s_delta > math.log(1 - eps_w)) & (s_delta < math.log(1 + eps_w))
    for lam in (0.0, 0.3, 0.5, 1.0):
        m = token_weights(delta, adv, eps_w)
        a_hat = token_advantages(adv, m, lam)
        torch.testing.assert_close(m[inside], torch.exp(s_delta[inside]))  # Eq. 5, unclipped
        assert torch.equal(m[~inside & (s_delta > 0)], torch.full_like(m[~inside & (s_delta > 0)], 1 + eps_w))
        assert torch.equal(m[~inside & (s_delta < 0)], torch.full_like(m[~inside & (s_delta < 0)], 1 - eps_w))
        assert torch.equal(torch.sign(a_hat), sign.expand_as(a_hat))  # Eq. 27, A != 0, even at lambda = 1
        assert ((a_hat / adv[:, None] - 1).abs() <= lam * eps_w + 1e-6).all()  # Eq. 28
    assert inside.any() and (~inside).any()
    zero = torch.zeros(64)
    assert (token_advantages(zero, token_weights(delta, zero, eps_w), LAM) == 0).all()
    assert (token_weights(delta, zero, eps_w) == 1).all()


def test_lambda_zero_is_plain_grpo():
    gen = torch.Generator().manual_seed(4)
    adv = torch.randn(5, generator=gen)
    m = token_weights(torch.randn(5, 9, generator=gen) * 5, adv, EPS_W)
    assert torch.equal(token_advantages(adv, m, 0.0), adv[:, None].expand(5, 9))


def test_weight_sign_follows_advantage():
    delta = torch.tensor([[0.1, -0.1, 5.0, -5.0]] * 2)
    m = token_weights(delta, torch.tensor([2.0, -2.0]), EPS_W)
    torch.testing.assert_close(m[0], torch.tensor([math.exp(0.1), math.exp(-0.1), 1.2, 0.8]))
    torch.testing.assert_close(m[1], torch.tensor([math.exp(-0.1), math.exp(0.1), 0.8, 1.2]))


# ---------------------------------------------------------------- Eq. 24
@pytest.mark.parametrize("k", [1, 4, 16])
def test_support_decomposition_eq24(k):
    teacher, student, tokens = make_inputs(21)
    ref, _ = ref_terms(teacher, student, tokens, k)
    delta = topk_support_log_ratio(teacher, student, tokens, k)
    evidence, calib = support_decomposition(teacher, student, tokens, k)
    torch.testing.assert_close(evidence + calib, delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(evidence, sampled_token_log_ratio(teacher, student, tokens), atol=1e-5, rtol=0)
    torch.testing.assert_close(calib.double(), ref["calib"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- dtypes, autograd, chunking, edge cases
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    teacher, student, tokens = make_inputs(9)
    teacher, student = teacher.to(dtype), student.to(dtype)
    for fn in (
        lambda t, s: topk_support_log_ratio(t, s, tokens, 4),
        lambda t, s: sampled_token_log_ratio(t, s, tokens),
        lambda t, s: support_decomposition(t, s, tokens, 4)[1],
    ):
        got, want = fn(teacher, student), fn(teacher.float(), student.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_outputs_carry_no_grad():
    teacher, student, tokens = make_inputs(10)
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    adv = torch.randn(B, requires_grad=True)
    delta = topk_support_log_ratio(teacher, student, tokens, 4)
    m = token_weights(delta, adv, EPS_W)
    outs = [delta, sampled_token_log_ratio(teacher, student, tokens), m, token_advantages(adv, m, LAM)]
    outs += list(support_decomposition(teacher, student, tokens, 4))
    for out in outs:
        assert not out.requires_grad and out.grad_fn is None


def test_chunk_size_does_not_change_results():
    teacher, student, tokens = make_inputs(12, b=4, t=9)
    tokens[2, 3] = -1
    for fn in (
        lambda cs: topk_support_log_ratio(teacher, student, tokens, 4, chunk_size=cs),
        lambda cs: sampled_token_log_ratio(teacher, student, tokens, chunk_size=cs),
        lambda cs: torch.stack(support_decomposition(teacher, student, tokens, 4, chunk_size=cs)),
    ):
        base = fn(10_000)
        for cs in (1, 3):
            assert torch.equal(fn(cs), base)


def test_k_at_least_vocab_equals_sampled_token_ratio():
    teacher, student, tokens = make_inputs(13)
    sampled = sampled_token_log_ratio(teacher, student, tokens)
    for k in (V, V + 7):
        torch.testing.assert_close(
            topk_support_log_ratio(teacher, student, tokens, k), sampled, atol=1e-5, rtol=0
        )
        assert teacher_topk_indices(teacher[0], k).shape == (T, V)


def test_non_contiguous_inputs_and_padding():
    teacher, student, tokens = make_inputs(14, t=T + 1)
    t_view, s_view = teacher[:, :-1], student[:, :-1]  # shifted logits are views, not contiguous
    assert not t_view.is_contiguous()
    got = topk_support_log_ratio(t_view, s_view, tokens[:, 1:], 4)
    want = topk_support_log_ratio(t_view.contiguous(), s_view.contiguous(), tokens[:, 1:], 4)
    assert torch.equal(got, want)
    all_pad = torch.full((B, T), -100)
    assert (topk_support_log_ratio(teacher[:, :T], student[:, :T], all_pad, 4) == 0).all()
    assert (topk_support_log_ratio(teacher, student, tokens, 0) == 0).all()  # U_t = {y_t}
    with pytest.raises(ValueError):
        topk_support_log_ratio(teacher, student, torch.full((B, T + 1), V), 4)


def test_credit_stats_over_valid_positions():
    delta = torch.tensor([[0.5, -1.0, 9.0], [0.0, 0.1, 9.0]])
    adv = torch.tensor([1.0, -1.0])
    m = token_weights(delta, adv, EPS_W)  # [[1.2, 0.8, pad], [1.0, exp(-0.1), pad]]
    mask = torch.tensor([[True, True, False], [True, True, False]])
    stats = credit_stats(delta, m, mask, EPS_W)
    d = torch.tensor([0.5, -1.0, 0.0, 0.1], dtype=torch.float64)
    w = torch.tensor([1.2, 0.8, 1.0, math.exp(-0.1)], dtype=torch.float64)
    assert stats["credit/delta_mean"] == pytest.approx(d.mean().item(), abs=1e-6)
    assert stats["credit/delta_std"] == pytest.approx(d.std(correction=0).item(), abs=1e-6)
    assert stats["credit/delta_abs_mean"] == pytest.approx(d.abs().mean().item(), abs=1e-6)
    assert stats["credit/weight_mean"] == pytest.approx(w.mean().item(), abs=1e-6)
    assert stats["credit/weight_clip_frac"] == pytest.approx(0.5)
    empty = credit_stats(delta, m, torch.zeros_like(mask), EPS_W)
    assert set(empty) == set(stats) and all(v == 0.0 for v in empty.values())
