"""Contract tests for vpd_bench.losses: hand-computed toy distributions, masks, gradients.

Fast CPU tests on plain tensors, no model. Hand values are written out with `math` next to the
formula they come from, so a reader can check the convention without running anything.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vpd_bench import losses
from vpd_bench.losses import (
    aggregate,
    bco_loss,
    ema_update_,
    forward_kl,
    generalized_jsd,
    group_advantages,
    implicit_reward,
    importance_weights,
    k3_kl,
    log_probs_full,
    ppo_clipped_surrogate,
    reverse_kl,
    sampled_reverse_kl_surrogate,
    sequence_log_prob,
    token_divergence,
    token_entropy,
    topk_with_tail,
    trust_region_logits,
    update_running_delta,
)

F64 = torch.float64


def logp(*probs: float) -> torch.Tensor:
    """Log-probabilities of a hand-written distribution, float64."""
    return torch.tensor(probs, dtype=F64).log()


def kl(p: list[float], q: list[float]) -> float:
    """Reference KL(p || q) in plain Python."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# Two-token example: student uniform, teacher confident.   S = [0.5, 0.5], T = [0.9, 0.1]
S2, T2 = [0.5, 0.5], [0.9, 0.1]
# Three-token example.                                      S = [0.2, 0.3, 0.5], T = [0.6, 0.3, 0.1]
S3, T3 = [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]


# --------------------------------------------------------------------------- divergences


def test_forward_kl_is_kl_teacher_to_student_on_two_tokens():
    # KL(T || S) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.368064...
    expected = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert expected == pytest.approx(0.3680642, abs=1e-6)
    assert forward_kl(logp(*T2), logp(*S2)).item() == pytest.approx(expected, abs=1e-12)


def test_reverse_kl_is_kl_student_to_teacher_on_two_tokens():
    # KL(S || T) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 (ln 5 - ln 1.8) = 0.510826...
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert expected == pytest.approx(0.5108256, abs=1e-6)
    assert reverse_kl(logp(*S2), logp(*T2)).item() == pytest.approx(expected, abs=1e-12)


def test_forward_and_reverse_kl_on_three_tokens():
    # KL(T || S) = 0.6 ln(0.6/0.2) + 0.3 ln 1 + 0.1 ln(0.1/0.5) = 0.6 ln 3 + 0.1 ln 0.2 = 0.498224...
    # KL(S || T) = 0.2 ln(0.2/0.6) + 0.3 ln 1 + 0.5 ln(0.5/0.1) = 0.2 ln(1/3) + 0.5 ln 5 = 0.584996...
    forward = 0.6 * math.log(3.0) + 0.1 * math.log(0.2)
    reverse = 0.2 * math.log(1 / 3) + 0.5 * math.log(5.0)
    assert forward == pytest.approx(0.4982236, abs=1e-6)
    assert reverse == pytest.approx(0.5849965, abs=1e-6)
    assert forward_kl(logp(*T3), logp(*S3)).item() == pytest.approx(forward, abs=1e-12)
    assert reverse_kl(logp(*S3), logp(*T3)).item() == pytest.approx(reverse, abs=1e-12)


def test_generalized_jsd_at_half_on_two_tokens():
    # M = 0.5 S + 0.5 T = [0.7, 0.3]
    # KL(S || M) = 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3) = 0.087177...
    # KL(T || M) = 0.9 ln(0.9/0.7) + 0.1 ln(0.1/0.3) = 0.116322...
    # JSD = 0.5 * 0.087177 + 0.5 * 0.116322 = 0.101749...
    kl_s_m = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    kl_t_m = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    expected = 0.5 * kl_s_m + 0.5 * kl_t_m
    assert expected == pytest.approx(0.1017492, abs=1e-6)
    assert generalized_jsd(logp(*S2), logp(*T2), 0.5).item() == pytest.approx(expected, abs=1e-12)


def test_generalized_jsd_at_point_three_weights_student_by_one_minus_alpha():
    # alpha = 0.3: M = 0.7 S + 0.3 T = [0.35 + 0.27, 0.35 + 0.03] = [0.62, 0.38]
    # value = 0.7 KL(S || M) + 0.3 KL(T || M)
    mixture = [0.62, 0.38]
    expected = 0.7 * kl(S2, mixture) + 0.3 * kl(T2, mixture)
    assert generalized_jsd(logp(*S2), logp(*T2), 0.3).item() == pytest.approx(expected, abs=1e-12)
    # three tokens: M = 0.7 [0.2, 0.3, 0.5] + 0.3 [0.6, 0.3, 0.1] = [0.32, 0.30, 0.38]
    mixture3 = [0.32, 0.30, 0.38]
    expected3 = 0.7 * kl(S3, mixture3) + 0.3 * kl(T3, mixture3)
    assert generalized_jsd(logp(*S3), logp(*T3), 0.3).item() == pytest.approx(expected3, abs=1e-12)
    # and it is NOT the mirror convention (alpha weighting the student)
    mirror = 0.3 * kl(S2, [0.38, 0.62]) + 0.7 * kl(T2, [0.38, 0.62])
    assert abs(expected - mirror) > 1e-3


def test_generalized_jsd_is_symmetric_at_half_and_under_alpha_mirror():
    s, t = logp(*S3), logp(*T3)
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(generalized_jsd(t, s, 0.5).item(), abs=1e-14)
    assert generalized_jsd(s, t, 0.3).item() == pytest.approx(generalized_jsd(t, s, 0.7).item(), abs=1e-14)


def test_token_divergence_alpha_zero_is_kl_teacher_to_student_not_student_to_teacher():
    value = token_divergence(logp(*S2), logp(*T2), alpha=0.0).item()
    assert value == pytest.approx(kl(T2, S2), abs=1e-12)  # 0.368
    assert value != pytest.approx(kl(S2, T2), abs=1e-3)  # 0.511


def test_token_divergence_alpha_one_is_kl_student_to_teacher_not_teacher_to_student():
    value = token_divergence(logp(*S2), logp(*T2), alpha=1.0).item()
    assert value == pytest.approx(kl(S2, T2), abs=1e-12)  # 0.511
    assert value != pytest.approx(kl(T2, S2), abs=1e-3)  # 0.368


def test_token_divergence_endpoints_are_defined_directly_not_as_mixture_limits():
    s, t = logp(*S3), logp(*T3)
    # the mixture formula collapses to 0 at both ends ...
    assert generalized_jsd(s, t, 0.0).item() == pytest.approx(0.0, abs=1e-12)
    assert generalized_jsd(s, t, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    # ... the divergence does not
    assert token_divergence(s, t, 0.0).item() == pytest.approx(kl(T3, S3), abs=1e-12)
    assert token_divergence(s, t, 1.0).item() == pytest.approx(kl(S3, T3), abs=1e-12)
    assert token_divergence(s, t, 0.5).item() == pytest.approx(generalized_jsd(s, t, 0.5).item(), abs=1e-14)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_token_divergence_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        token_divergence(logp(*S2), logp(*T2), alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_divergences_are_zero_for_identical_and_nonnegative_otherwise(alpha):
    torch.manual_seed(0)
    s = torch.log_softmax(torch.randn(4, 5, 7, dtype=F64), dim=-1)
    t = torch.log_softmax(torch.randn(4, 5, 7, dtype=F64), dim=-1)
    same = token_divergence(s, s, alpha)
    assert same.shape == (4, 5)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-12)
    assert (token_divergence(s, t, alpha) >= 0).all()
    assert (forward_kl(t, s) >= 0).all() and (reverse_kl(s, t) >= 0).all()


def test_divergences_treat_zero_probability_entries_as_zero_not_nan():
    # S = [0.5, 0.5, 0], T = [0.25, 0.25, 0.5]: KL(S || T) = ln 2, finite, and its gradient too
    s = torch.tensor([0.0, 0.0, -math.inf], dtype=F64, requires_grad=True)
    t = logp(0.25, 0.25, 0.5)
    value = reverse_kl(torch.log_softmax(s, -1), t)
    assert value.item() == pytest.approx(math.log(2.0), abs=1e-12)
    value.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.isfinite(generalized_jsd(torch.log_softmax(s, -1), t, 0.5)).all()


def test_log_probs_full_is_log_softmax_at_temperature():
    logits = torch.tensor([[1.0, 2.0, -0.5]], dtype=F64)
    assert torch.allclose(log_probs_full(logits), torch.log_softmax(logits, -1))
    assert torch.allclose(log_probs_full(logits, temperature=0.5), torch.log_softmax(logits * 2.0, -1))
    with pytest.raises(ValueError, match="temperature"):
        log_probs_full(logits, temperature=0.0)


# --------------------------------------------------------------------------- top-k with tail


def _random_logits(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype) * 2.0


def test_topk_with_tail_each_side_sums_to_one_in_probability_space():
    student, teacher = _random_logits(3, 4, 50, seed=1), _random_logits(3, 4, 50, seed=2)
    s, t = topk_with_tail(student, teacher, k=5)
    assert s.shape == t.shape == (3, 4, 6)
    assert torch.allclose(s.exp().sum(-1), torch.ones(3, 4), atol=1e-6)
    assert torch.allclose(t.exp().sum(-1), torch.ones(3, 4), atol=1e-6)


def test_topk_with_tail_uses_the_students_top_ids_for_both_sides():
    # student prefers ids 0 and 1; teacher prefers ids 3 and 4
    student = torch.tensor([5.0, 4.0, 0.0, -1.0, -2.0], dtype=F64)
    teacher = torch.tensor([-2.0, -1.0, 0.0, 4.0, 5.0], dtype=F64)
    s, t = topk_with_tail(student, teacher, k=2)
    full_s, full_t = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    assert torch.allclose(s[:2], full_s[[0, 1]])
    assert torch.allclose(t[:2], full_t[[0, 1]])  # the teacher on the STUDENT's ids
    assert torch.allclose(t[2].exp(), 1 - full_t[[0, 1]].exp().sum())  # teacher's own top ids sit in the tail


def test_topk_with_tail_applies_temperature_to_both_sides():
    student, teacher = _random_logits(2, 9, seed=3, dtype=F64), _random_logits(2, 9, seed=4, dtype=F64)
    s, t = topk_with_tail(student, teacher, k=3, temperature=0.7)
    s_ref, t_ref = topk_with_tail(student / 0.7, teacher / 0.7, k=3)
    assert torch.allclose(s, s_ref) and torch.allclose(t, t_ref)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_topk_with_tail_divergence_equals_full_vocab_when_tail_is_a_single_token(alpha):
    # k = V - 1: the tail bucket holds exactly the one remaining token, so the top-k-plus-tail
    # distribution is the full one up to a permutation and the divergence must match exactly.
    student, teacher = _random_logits(4, 8, seed=5, dtype=F64), _random_logits(4, 8, seed=6, dtype=F64)
    full = token_divergence(log_probs_full(student), log_probs_full(teacher), alpha)
    topk = token_divergence(*topk_with_tail(student, teacher, k=7), alpha)
    assert torch.allclose(topk, full, atol=1e-10)


@pytest.mark.parametrize("k", [8, 11])
def test_topk_with_tail_k_at_least_vocab_keeps_every_token_and_an_empty_tail(k):
    student, teacher = _random_logits(4, 8, seed=7), _random_logits(4, 8, seed=8)
    s, t = topk_with_tail(student, teacher, k=k)
    assert s.shape == (4, 9)  # min(k, V) + 1
    assert torch.all(s[:, -1].exp() < 1e-6) and torch.all(t[:, -1].exp() < 1e-6)
    for alpha in (0.0, 0.5, 1.0):
        full = token_divergence(log_probs_full(student), log_probs_full(teacher), alpha)
        assert torch.allclose(token_divergence(s, t, alpha), full, atol=1e-5)


def test_topk_with_tail_is_finite_with_finite_gradients_when_topk_holds_all_the_mass():
    # float32, one dominant token: the captured mass rounds to 1 and the tail to 0 -> no NaN
    student = torch.tensor([[60.0, 0.0, -1.0, -2.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 60.0, -1.0, -2.0], [1.0, 2.0, 3.0, 4.0]])
    for k in (1, 4, 9):
        student.grad = None
        s, t = topk_with_tail(student, teacher, k=k)
        assert torch.isfinite(s).all() and torch.isfinite(t).all()
        for alpha in (0.0, 0.5, 1.0):
            value = token_divergence(s, t, alpha).sum()
            assert torch.isfinite(value)
            (grad,) = torch.autograd.grad(value, student, retain_graph=True)
            assert torch.isfinite(grad).all()


def test_topk_with_tail_forward_kl_is_accurate_in_float32_when_student_tail_is_tiny():
    # Peaked student (tail mass ~1e-9 and below) and a teacher that prefers other tokens: the
    # case where log(1 - sum p_topk) cancels to rounding noise in float32 and forward KL loses
    # the gradient that should raise the teacher's tokens. float32 must match float64.
    student64 = _random_logits(16, 200, seed=13, dtype=F64) * 5
    teacher64 = _random_logits(16, 200, seed=14, dtype=F64) * 5
    results = {}
    for dtype in (torch.float32, F64):
        student = student64.to(dtype).requires_grad_()
        value = token_divergence(*topk_with_tail(student, teacher64.to(dtype), k=20), alpha=0.0).sum()
        (grad,) = torch.autograd.grad(value, student)
        results[dtype] = (value.item(), grad.to(F64))
    student_tail = topk_with_tail(student64, teacher64, k=20)[0][:, -1].exp()
    assert student_tail.min() < 1e-7  # the regime the test is about
    assert results[torch.float32][0] == pytest.approx(results[F64][0], rel=1e-5)
    assert torch.allclose(results[torch.float32][1], results[F64][1], atol=1e-4)


def test_topk_with_tail_handles_minus_inf_logits_outside_the_support():
    # a masked (padded) vocabulary: ids 2 and 3 can never be sampled; k = 2 leaves an empty tail
    student = torch.tensor([[0.0, 1.0, -math.inf, -math.inf]], requires_grad=True)
    teacher = torch.tensor([[0.5, 0.0, -math.inf, -math.inf]])
    s, t = topk_with_tail(student, teacher, k=2)
    assert torch.isfinite(s).all() and torch.isfinite(t).all()
    for alpha in (0.0, 0.5, 1.0):
        value = token_divergence(s, t, alpha).sum()
        full = token_divergence(log_probs_full(student), log_probs_full(teacher), alpha).sum()
        assert value.item() == pytest.approx(full.item(), abs=1e-6)
        (grad,) = torch.autograd.grad(value, student, retain_graph=True)
        assert torch.isfinite(grad).all() and torch.all(grad[0, 2:] == 0)


def test_topk_with_tail_never_builds_a_full_vocabulary_log_softmax(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("full-vocabulary log_softmax built")

    monkeypatch.setattr(torch, "log_softmax", forbidden)
    monkeypatch.setattr(F, "log_softmax", forbidden)
    monkeypatch.setattr(torch.Tensor, "log_softmax", forbidden)
    s, t = topk_with_tail(_random_logits(2, 30, seed=9), _random_logits(2, 30, seed=10), k=4)
    assert s.shape == (2, 5)


def test_topk_with_tail_gradient_reaches_student_logits():
    student = _random_logits(3, 10, seed=11, dtype=F64).requires_grad_()
    teacher = _random_logits(3, 10, seed=12, dtype=F64).requires_grad_()
    token_divergence(*topk_with_tail(student, teacher.detach(), k=3), 1.0).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the caller's detach is what keeps the teacher out


def test_topk_with_tail_rejects_bad_arguments():
    logits = _random_logits(2, 5)
    with pytest.raises(ValueError, match="k must be"):
        topk_with_tail(logits, logits, k=0)
    with pytest.raises(ValueError, match="shape"):
        topk_with_tail(logits, _random_logits(2, 6), k=2)


# --------------------------------------------------------------------------- sampled support


def test_sampled_reverse_kl_surrogate_value_is_detached_advantage_times_student_logp():
    student = torch.tensor([[math.log(0.5), math.log(0.2)]], dtype=F64)
    teacher = torch.tensor([[math.log(0.25), math.log(0.4)]], dtype=F64)
    # -(log p_T - log p_S) * log p_S = -(ln 0.5) ln 0.5 and -(ln 2) ln 0.2
    expected = torch.tensor([[-math.log(0.5) * math.log(0.5), -math.log(2.0) * math.log(0.2)]], dtype=F64)
    assert torch.allclose(sampled_reverse_kl_surrogate(student, teacher), expected)


def test_sampled_reverse_kl_surrogate_gradient_in_expectation_equals_reverse_kl_gradient():
    torch.manual_seed(1)
    student_logits = torch.randn(5, dtype=F64, requires_grad=True)
    teacher_logp = torch.log_softmax(torch.randn(5, dtype=F64), -1)

    student_logp = torch.log_softmax(student_logits, -1)
    (analytic,) = torch.autograd.grad(reverse_kl(student_logp, teacher_logp), student_logits)

    # enumerate every token y as "the sampled one", weight by p_S(y) (no gradient through the weight)
    student_logp = torch.log_softmax(student_logits, -1)
    per_token = sampled_reverse_kl_surrogate(student_logp.unsqueeze(0), teacher_logp.unsqueeze(0))  # [1, V]
    expectation = (student_logp.exp().detach() * per_token.squeeze(0)).sum()
    (reinforce,) = torch.autograd.grad(expectation, student_logits)
    assert torch.allclose(reinforce, analytic, atol=1e-12)


def test_sampled_reverse_kl_surrogate_sends_no_gradient_to_the_teacher():
    student = torch.tensor([[-0.5, -1.0]], dtype=F64, requires_grad=True)
    teacher = torch.tensor([[-0.7, -0.2]], dtype=F64, requires_grad=True)
    sampled_reverse_kl_surrogate(student, teacher).sum().backward()
    assert teacher.grad is None
    # d/ds [-(t - s) s] with (t - s) constant = -(t - s)
    assert torch.allclose(student.grad, -(teacher - student).detach())


# --------------------------------------------------------------------------- importance weights


def test_importance_weights_clip_caps_the_ratio_at_two():
    student = torch.tensor([[math.log(3.0), math.log(1.5)]], requires_grad=True)
    rollout = torch.zeros(1, 2)
    weights = importance_weights(student, rollout, clip=2.0)
    assert torch.allclose(weights, torch.tensor([[2.0, 1.5]]))


def test_importance_weights_ratio_below_one_is_not_clamped():
    weights = importance_weights(torch.tensor([[math.log(0.5), math.log(0.01)]]), torch.zeros(1, 2), clip=2.0)
    assert torch.allclose(weights, torch.tensor([[0.5, 0.01]]))


def test_importance_weights_are_detached():
    student = torch.zeros(2, 3, requires_grad=True)
    weights = importance_weights(student, torch.zeros(2, 3), clip=2.0)
    assert not weights.requires_grad and weights.grad_fn is None


def test_importance_weights_huge_ratio_is_capped_not_inf():
    weights = importance_weights(torch.tensor([[500.0]]), torch.tensor([[0.0]]), clip=2.0)
    assert weights.item() == 2.0


# --------------------------------------------------------------------------- aggregation


PER_TOKEN = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # last sequence is empty


def test_aggregate_token_mean_hand_value():
    # (1 + 2 + 4) / 3 unmasked tokens
    value = aggregate(torch.tensor(PER_TOKEN), torch.tensor(MASK), "token_mean")
    assert value.item() == pytest.approx(7 / 3)


def test_aggregate_sequence_mean_hand_value_skips_empty_sequences():
    # ((1 + 2) / 2 + 4 / 1) / 2 non-empty sequences = (1.5 + 4) / 2 = 2.75
    value = aggregate(torch.tensor(PER_TOKEN), torch.tensor(MASK), "sequence_mean")
    assert value.item() == pytest.approx(2.75)


def test_aggregate_accepts_bool_mask_and_bool_values():
    clipped = torch.tensor([[True, False, True], [False, True, True]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # clipped among unmasked: True, False | False, True, True -> 3 / 5
    assert aggregate(clipped, mask).item() == pytest.approx(0.6)


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean"])
def test_aggregate_masked_tokens_contribute_nothing_to_loss_or_gradient(mode):
    mask = torch.tensor(MASK)
    x = torch.tensor(PER_TOKEN, requires_grad=True)
    loss = aggregate(x**2, mask, mode)
    (grad,) = torch.autograd.grad(loss, x)

    changed = torch.tensor(PER_TOKEN)
    changed[mask == 0] = torch.tensor([1e6, -3.0, 42.0, 0.0, -7.5, 1e-3])
    y = changed.clone().requires_grad_()
    changed_loss = aggregate(y**2, mask, mode)
    (changed_grad,) = torch.autograd.grad(changed_loss, y)

    assert changed_loss.item() == pytest.approx(loss.item())
    assert torch.equal(changed_grad, grad)
    assert torch.all(grad[mask == 0] == 0)

    # non-finite values under the mask are selected out, not multiplied by zero
    poisoned = torch.tensor(PER_TOKEN)
    poisoned[mask == 0] = torch.tensor([math.inf, math.nan, -math.inf, math.nan, math.inf, 1e30])
    clean = aggregate(torch.tensor(PER_TOKEN), mask, mode)
    assert aggregate(poisoned, mask, mode).item() == pytest.approx(clean.item())


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean"])
def test_aggregate_all_zero_mask_returns_zero_with_graph_intact(mode):
    x = torch.randn(2, 3, requires_grad=True)
    loss = aggregate(x * 2.0, torch.zeros(2, 3), mode)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean"])
def test_aggregate_micro_batches_normalised_by_whole_batch_counts_sum_to_full_batch_loss(mode):
    torch.manual_seed(2)
    x = torch.randn(6, 5, dtype=F64, requires_grad=True)
    mask = (torch.rand(6, 5) > 0.4).to(F64)
    mask[3] = 0.0  # an empty sequence in the second micro-batch
    full = aggregate(x**2, mask, mode)
    (full_grad,) = torch.autograd.grad(full, x)

    num_tokens = mask.sum()
    num_sequences = int((mask.sum(-1) > 0).sum())
    parts = [
        aggregate(x[rows] ** 2, mask[rows], mode, num_tokens=num_tokens, num_sequences=num_sequences)
        for rows in (slice(0, 2), slice(2, 6))
    ]
    summed = parts[0] + parts[1]
    (summed_grad,) = torch.autograd.grad(summed, x)
    assert summed.item() == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(summed_grad, full_grad, atol=1e-12)


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="aggregation mode"):
        aggregate(torch.ones(1, 2), torch.ones(1, 2), "batch_sum")


def test_sequence_log_prob_sum_and_mean_over_unmasked_tokens():
    token_logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0], [-4.0, -4.0, -4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert torch.allclose(sequence_log_prob(token_logp, mask, "sum"), torch.tensor([-3.0, -10.0, 0.0]))
    assert torch.allclose(sequence_log_prob(token_logp, mask, "mean"), torch.tensor([-1.5, -10.0 / 3, 0.0]))
    with pytest.raises(ValueError, match="length_norm"):
        sequence_log_prob(token_logp, mask, "max")


# --------------------------------------------------------------------------- GRPO


def test_group_advantages_without_std_scaling_subtract_group_mean():
    # group 1: [1, 0, 0] mean 1/3; group 2: [1, 1, 0] mean 2/3
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=F64)
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3], dtype=F64)
    assert torch.allclose(group_advantages(rewards, 3, scale_by_std=False), expected)


def test_group_advantages_with_std_scaling_use_unbiased_std():
    # group [1, 0, 0]: centred [2/3, -1/3, -1/3]; unbiased std = sqrt((4/9 + 1/9 + 1/9) / (3 - 1)) = sqrt(1/3)
    rewards = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    std = math.sqrt(1 / 3)
    # [1.1547, -0.5774, -0.5774]
    expected = torch.tensor([2 / 3 / std, -1 / 3 / std, -1 / 3 / std], dtype=F64)
    assert torch.allclose(group_advantages(rewards, 3, eps=0.0), expected)
    # G = 2, rewards [0, 1]: unbiased std = sqrt(0.5) -> A = -+0.7071 (the population std would give -+1)
    two = group_advantages(torch.tensor([0.0, 1.0], dtype=F64), 2, eps=0.0)
    assert torch.allclose(two, torch.tensor([-math.sqrt(0.5), math.sqrt(0.5)], dtype=F64))
    # eps is added to the std
    with_eps = group_advantages(rewards, 3, eps=0.1)
    assert torch.allclose(with_eps, expected * std / (std + 0.1))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_flat_group_gives_exactly_zero(dtype, scale_by_std):
    # mean([0.1, 0.1, 0.1]) is not exactly 0.1 in floating point; the advantage must still be 0
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.5], dtype=dtype)
    advantages = group_advantages(rewards, 3, scale_by_std=scale_by_std)
    assert torch.equal(advantages[:3], torch.zeros(3, dtype=dtype))
    assert advantages[3:].abs().sum() > 0


def test_group_advantages_group_of_one_is_zero_and_bad_length_raises():
    assert torch.equal(group_advantages(torch.tensor([0.3, 1.0]), 1), torch.zeros(2))
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(5), 2)


def test_ppo_clipped_surrogate_hand_values_and_clip_flags():
    # ratios e^0.5 = 1.6487 and 0.5, advantages +1 and -1, eps = 0.2
    logp = torch.tensor([[0.5, math.log(0.5)], [0.5, math.log(0.5)], [math.log(1.1), 0.0]], dtype=F64)
    advantages = torch.tensor([1.0, -1.0, 2.0], dtype=F64)
    loss, clipped = ppo_clipped_surrogate(logp, torch.zeros(3, 2, dtype=F64), advantages)
    expected = torch.tensor(
        [
            [-1.2, -0.5],  # A=+1: -min(1.6487, 1.2) = -1.2 (clipped); -min(0.5, 0.8) = -0.5
            [math.exp(0.5), 0.8],  # A=-1: -min(-1.6487, -1.2) = 1.6487; -min(-0.5, -0.8) = 0.8 (clipped)
            [-2.2, -2.0],  # A=+2 inside the trust region: -ratio * A
        ],
        dtype=F64,
    )
    assert torch.allclose(loss, expected)
    assert clipped.dtype == torch.bool
    assert clipped.tolist() == [[True, False], [False, True], [False, False]]


def test_ppo_clipped_surrogate_gradient_is_zero_for_clipped_token_with_positive_advantage():
    logp = torch.tensor([[0.5, 0.05]], dtype=F64, requires_grad=True)  # ratios 1.65 (> 1.2) and 1.05
    loss, clipped = ppo_clipped_surrogate(logp, torch.zeros(1, 2, dtype=F64), torch.tensor([1.0], dtype=F64))
    loss.sum().backward()
    assert logp.grad[0, 0].item() == 0.0 and clipped[0, 0]
    assert logp.grad[0, 1].item() == pytest.approx(-math.exp(0.05))  # d(-ratio * A)/dlogp = -ratio * A


def test_ppo_clipped_surrogate_separate_low_and_high_clip():
    logp = torch.tensor([[math.log(1.25), math.log(0.75)]], dtype=F64)
    advantages = torch.tensor([[1.0, -1.0]], dtype=F64)  # per-token advantages are accepted too
    loss, clipped = ppo_clipped_surrogate(
        logp, torch.zeros(1, 2, dtype=F64), advantages, clip_low=0.1, clip_high=0.3
    )
    # ratio 1.25 < 1.3 -> unclipped -1.25; ratio 0.75 < 0.9 with A=-1 -> -min(-0.75, -0.9) = 0.9
    assert torch.allclose(loss, torch.tensor([[-1.25, 0.9]], dtype=F64))
    assert clipped.tolist() == [[False, True]]


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    torch.manual_seed(3)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    assert (k3_kl(a, b) >= 0).all()
    assert torch.equal(k3_kl(a, a), torch.zeros(4, 6))
    # logp = ln 0.5, ref = ln 0.25: d = ln 0.5, k3 = 0.5 - ln 0.5 - 1 = 0.193147...
    value = k3_kl(torch.tensor([math.log(0.5)], dtype=F64), torch.tensor([math.log(0.25)], dtype=F64))
    assert value.item() == pytest.approx(0.5 + math.log(2.0) - 1.0, abs=1e-12)


# --------------------------------------------------------------------------- VPD E-step


def test_bco_loss_hand_value():
    rho = torch.tensor([0.5, -0.2, 0.1], dtype=F64)
    success = torch.tensor([True, False, False])
    # margins rho - delta = [0.4, -0.3, 0.0]
    # L = -log s(0.4) - mean(log s(0.3), log s(0.0))
    expected = -log_sigmoid(0.4) - 0.5 * (log_sigmoid(0.3) + log_sigmoid(0.0))
    loss, info = bco_loss(rho, success, delta=0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert info == {"n_success": 1, "n_failure": 2, "one_class": False}


def test_bco_loss_uses_only_the_present_term_when_one_class():
    rho = torch.tensor([0.5, 0.1], dtype=F64)
    loss, info = bco_loss(rho, torch.tensor([1, 1]), delta=0.0)
    assert loss.item() == pytest.approx(-0.5 * (log_sigmoid(0.5) + log_sigmoid(0.1)), abs=1e-12)
    assert info == {"n_success": 2, "n_failure": 0, "one_class": True}
    loss, info = bco_loss(rho, torch.tensor([False, False]), delta=0.0)
    assert loss.item() == pytest.approx(-0.5 * (log_sigmoid(-0.5) + log_sigmoid(-0.1)), abs=1e-12)
    assert info == {"n_success": 0, "n_failure": 2, "one_class": True}


def test_bco_loss_empty_input_is_zero():
    rho = torch.zeros(0, requires_grad=True)
    loss, info = bco_loss(rho, torch.zeros(0, dtype=torch.bool), delta=0.3)
    assert loss.item() == 0.0 and loss.requires_grad
    assert info == {"n_success": 0, "n_failure": 0, "one_class": False}


def test_bco_loss_delta_receives_no_gradient():
    rho = torch.tensor([0.5, -0.2], requires_grad=True)
    delta = torch.tensor(0.1, requires_grad=True)
    loss, _ = bco_loss(rho, torch.tensor([True, False]), delta)
    loss.backward()
    assert delta.grad is None
    assert rho.grad is not None and rho.grad.abs().sum() > 0


def test_bco_loss_gradient_flows_only_through_teacher_term_of_implicit_reward():
    teacher = torch.tensor([-10.0, -12.0, -9.0], dtype=F64, requires_grad=True)
    prior = torch.tensor([-11.0, -11.0, -11.0], dtype=F64, requires_grad=True)
    beta = 0.1
    rho = implicit_reward(teacher, prior, beta)
    assert torch.allclose(rho, torch.tensor([0.1, -0.1, 0.2], dtype=F64))
    loss, _ = bco_loss(rho, torch.tensor([True, False, True]), delta=0.0)
    loss.backward()
    assert prior.grad is None
    # d/dteacher_i = beta * dL/drho_i; success: -(1 - s(rho)) / n_s, failure: s(rho) / n_f
    sigmoid = torch.sigmoid(rho.detach())
    expected = beta * torch.stack([-(1 - sigmoid[0]) / 2, sigmoid[1] / 1, -(1 - sigmoid[2]) / 2])
    assert torch.allclose(teacher.grad, expected)


def test_update_running_delta_ema_hand_value():
    assert update_running_delta(None, 0.3) == pytest.approx(0.3)  # first call starts at the batch mean
    # 0.9 * 0.5 + 0.1 * 1.0 = 0.55
    assert update_running_delta(0.5, 1.0, momentum=0.9) == pytest.approx(0.55)
    value = update_running_delta(0.5, torch.tensor(1.0, requires_grad=True))
    assert isinstance(value, float) and value == pytest.approx(0.55)


# --------------------------------------------------------------------------- teacher weights


def test_ema_update_tau_zero_leaves_teacher_unchanged():
    teacher = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    before = [t.clone() for t in teacher]
    ema_update_(teacher, [torch.tensor([9.0, 9.0]), torch.tensor([[9.0]])], tau=0.0)
    assert all(torch.equal(t, b) for t, b in zip(teacher, before))


def test_ema_update_tau_one_copies_student_exactly():
    # values where t + 1.0 * (s - t) would not round-trip in float32
    teacher = [torch.nn.Parameter(torch.tensor([1e8, -3.0]))]
    student = [torch.nn.Parameter(torch.tensor([1e-8, 0.1]))]
    ema_update_(teacher, student, tau=1.0)
    assert torch.equal(teacher[0].data, student[0].data)


def test_ema_update_tau_small_hand_value_on_parameters():
    teacher_model, student_model = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        teacher_model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        student_model.weight.copy_(torch.tensor([[3.0, 2.0]]))
    ema_update_(teacher_model.parameters(), student_model.parameters(), tau=0.05)
    # 0.95 * 1 + 0.05 * 3 = 1.1; 0.95 * -2 + 0.05 * 2 = -1.8
    assert torch.allclose(teacher_model.weight, torch.tensor([[1.1, -1.8]]))
    assert torch.equal(student_model.weight, torch.tensor([[3.0, 2.0]]))


def test_ema_update_rejects_mismatched_parameter_lists():
    with pytest.raises(ValueError):
        ema_update_([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)], tau=0.5)
    with pytest.raises(ValueError, match="tau"):
        ema_update_([torch.zeros(2)], [torch.zeros(2)], tau=1.5)


def test_trust_region_logits_endpoints_and_midpoint():
    frozen, live = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.0, -0.5])
    assert torch.equal(trust_region_logits(frozen, live, 0.0), frozen)
    assert torch.equal(trust_region_logits(frozen, live, 1.0), live)
    # 0.75 * frozen + 0.25 * live
    assert torch.allclose(trust_region_logits(frozen, live, 0.25), torch.tensor([1.5, -1.5, 0.25]))


# --------------------------------------------------------------------------- health signals


def test_token_entropy_equals_minus_p_log_p():
    # p = [0.5, 0.25, 0.25]: H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 = 1.039721...
    logits = logp(0.5, 0.25, 0.25) + 3.0  # entropy ignores a constant shift
    assert token_entropy(logits).item() == pytest.approx(1.5 * math.log(2.0), abs=1e-12)
    torch.manual_seed(4)
    logits = torch.randn(3, 4, 11, dtype=F64)
    p = torch.softmax(logits / 0.8, -1)
    assert torch.allclose(token_entropy(logits, temperature=0.8), -(p * p.log()).sum(-1))
    assert token_entropy(torch.zeros(7, dtype=F64)).item() == pytest.approx(math.log(7.0))


def test_token_entropy_ignores_minus_inf_slots():
    logits = torch.tensor([0.0, 0.0, -math.inf], dtype=F64)
    assert token_entropy(logits).item() == pytest.approx(math.log(2.0))


# --------------------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_token_divergence_gradcheck_through_log_softmax(alpha):
    generator = torch.Generator().manual_seed(5)
    student = torch.randn(2, 3, 5, dtype=F64, generator=generator, requires_grad=True)
    teacher = torch.randn(2, 3, 5, dtype=F64, generator=generator, requires_grad=True)

    def divergence(s, t):
        return token_divergence(torch.log_softmax(s, -1), torch.log_softmax(t, -1), alpha)

    assert torch.autograd.gradcheck(divergence, (student, teacher))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_topk_with_tail_divergence_gradcheck(alpha):
    # well-separated logits so the top-k selection is stable under finite differences
    base = torch.tensor([3.0, 1.5, 0.0, -1.2, -2.5, 0.7], dtype=F64)
    student = torch.stack([base, base.flip(0)]).requires_grad_()
    teacher = torch.stack([base.roll(2), base * 0.5]).requires_grad_()

    def divergence(s, t):
        return token_divergence(*topk_with_tail(s, t, k=3, temperature=0.9), alpha)

    assert torch.autograd.gradcheck(divergence, (student, teacher))


def test_bco_loss_gradcheck():
    rho = torch.tensor([0.4, -0.3, 1.2, 0.05], dtype=F64, requires_grad=True)
    success = torch.tensor([True, False, True, False])
    assert torch.autograd.gradcheck(lambda r: bco_loss(r, success, 0.2)[0], (rho,))


def test_ppo_clipped_surrogate_gradcheck_away_from_clip_boundaries():
    # ratios inside (0.8, 1.2) and well outside it, never at 0.8 or 1.2
    logp = torch.tensor([[0.05, -0.1, 0.6], [-0.6, 0.15, 0.0]], dtype=F64, requires_grad=True)
    old_logp = torch.zeros(2, 3, dtype=F64)
    advantages = torch.tensor([0.7, -1.3], dtype=F64, requires_grad=True)

    def surrogate(lp, adv):
        return ppo_clipped_surrogate(lp, old_logp, adv)[0]

    assert torch.autograd.gradcheck(surrogate, (logp, advantages))


def test_module_exports_exactly_the_loss_api_the_methods_build_on():
    expected = {
        "log_probs_full", "topk_with_tail", "forward_kl", "reverse_kl", "generalized_jsd",
        "token_divergence", "sampled_reverse_kl_surrogate", "importance_weights", "aggregate",
        "group_advantages", "ppo_clipped_surrogate", "k3_kl", "sequence_log_prob", "implicit_reward",
        "bco_loss", "update_running_delta", "ema_update_", "trust_region_logits", "token_entropy",
    }  # fmt: skip
    assert set(losses.__all__) == expected
    assert all(callable(getattr(losses, name)) for name in expected)
