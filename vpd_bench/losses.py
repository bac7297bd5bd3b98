"""Loss building blocks shared by every method: pure torch functions, one concern each.

Nothing here holds trainer state or reads the config; a method composes these functions and
passes the config's values in. Conventions used throughout:

- Log-probabilities, never probabilities, cross function boundaries; the vocabulary (or the
  top-k support) is the last dimension ``[..., V]``.
- Per-token tensors are ``[N, T]`` (N responses, T response positions) and come with a mask of
  the same shape; per-sequence tensors are ``[N]``, ordered group by group (N = B * G).
- "student" is the policy being trained, "teacher" the feedback-conditioned distribution. The
  functions never detach the teacher: the method scores it under ``torch.no_grad()`` (or detaches
  it) so that the loss reads the same as in the paper, ``sg[teacher]``. Where a stop-gradient is
  part of the *definition* of a quantity (REINFORCE advantage, importance weight, VPD prior,
  BCO margin ``delta``) the function applies it itself.
- Compute in float32 or float64: pass upcast logits; nothing here upcasts bf16 silently.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "log_probs_full",
    "topk_with_tail",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "token_divergence",
    "sampled_reverse_kl_surrogate",
    "importance_weights",
    "aggregate",
    "group_advantages",
    "ppo_clipped_surrogate",
    "k3_kl",
    "sequence_log_prob",
    "implicit_reward",
    "bco_loss",
    "update_running_delta",
    "ema_update_",
    "trust_region_logits",
    "token_entropy",
]

AGGREGATION_MODES = ("token_mean", "sequence_mean")
LENGTH_NORMS = ("sum", "mean")


# --------------------------------------------------------------------------- distributions


def _scale_by_temperature(logits: Tensor, temperature: float) -> Tensor:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # Skip the division at T = 1 so the common case adds no [..., V] copy.
    return logits if temperature == 1.0 else logits / temperature


def log_probs_full(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Full-vocabulary log-probabilities ``log_softmax(logits / temperature)``.

    Shapes: ``logits [..., V]`` -> ``[..., V]``. Used by ``support: full``; the default top-k
    support goes through :func:`topk_with_tail`, which never builds this tensor.
    """
    return torch.log_softmax(_scale_by_temperature(logits, temperature), dim=-1)


class _LogSumExpOutside(torch.autograd.Function):
    """``logsumexp`` over the last dim of ``logits`` with the entries at ``ids`` left out.

    Why a custom Function: ``logsumexp(logits.scatter(-1, ids, -inf))`` through autograd would
    keep the masked ``[..., V]`` copy alive until backward. Here the copy is a temporary in
    forward and backward; only ``logits`` (already held by the caller) is saved.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor) -> Tensor:
        result = torch.logsumexp(logits.scatter(-1, ids, -math.inf), dim=-1, keepdim=True)
        ctx.save_for_backward(logits, ids, result)
        return result

    @staticmethod
    def backward(ctx, grad_result: Tensor) -> tuple[Tensor, None]:
        logits, ids, result = ctx.saved_tensors
        # d result / d logits_v = softmax over the remainder. An empty remainder (result = -inf)
        # gets zero shares: subtracting +inf instead of -inf keeps exp(-inf - -inf) = NaN out.
        shift = torch.where(result == -math.inf, math.inf, result)
        shares = torch.exp(logits - shift).scatter_(-1, ids, 0.0)
        return grad_result * shares, None


def without_tokens(logits: torch.Tensor, token_ids: list[int], fill: float = -1e4) -> torch.Tensor:
    """Logits with ``token_ids`` pushed out of the distribution (a finite -1e4, so 0 * log 0 stays 0
    in every divergence): the softmax renormalises over the other tokens, and no gradient reaches
    the removed logits. A copy; the input is unchanged."""
    if not token_ids:
        return logits
    idx = torch.tensor(token_ids, device=logits.device, dtype=torch.long)
    return logits.index_fill(-1, idx, fill)


def topk_with_tail(
    student_logits: Tensor, teacher_logits: Tensor, k: int, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probs on the student's top-k token ids plus one tail bucket each.

    Shapes: ``student_logits, teacher_logits [..., V]`` -> ``(student_logp, teacher_logp)``,
    each ``[..., k' + 1]`` with ``k' = min(k, V)``. Columns ``0..k'-1`` are the log-probs of the
    ids with the largest *student* logits (descending), both sides evaluated on those same ids;
    column ``k'`` is the log of the remaining mass of that side. Each side sums to 1 in
    probability space.

    The tail is the log-sum-exp of the logits *outside* the support, not ``log(1 - sum p_topk)``:
    the subtraction cancels catastrophically once the support holds nearly all the mass
    (in float32 a student tail below ~1e-6 comes out as rounding noise, and forward KL then
    loses the gradient that should raise a teacher-favoured token outside the student's top
    k). The normaliser is assembled from the same two pieces, so each side costs one pass over
    the vocabulary and no ``[..., V]`` log-softmax tensor is built or kept for backward. An
    empty tail (``k >= V``) is floored at the dtype's smallest normal number instead of
    ``log 0``, which keeps ``0 * (-inf - -inf)`` (NaN) out of the divergence.

    Gradients flow to both inputs; the caller passes the teacher's logits already detached
    (scored under ``no_grad``). Pass float32 or float64 logits.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must share a shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    student = _scale_by_temperature(student_logits, temperature)
    teacher = _scale_by_temperature(teacher_logits, temperature)
    top_student_logits, top_ids = torch.topk(student, min(k, student.shape[-1]), dim=-1)
    top_teacher_logits = torch.gather(teacher, -1, top_ids)
    return (
        _normalise_with_tail(top_student_logits, student, top_ids),
        _normalise_with_tail(top_teacher_logits, teacher, top_ids),
    )


def _normalise_with_tail(top_logits: Tensor, logits: Tensor, top_ids: Tensor) -> Tensor:
    """``[..., k]`` support logits -> ``[..., k+1]`` log-probs: support, then one tail bucket."""
    floor = math.log(torch.finfo(logits.dtype).tiny)
    if top_ids.shape[-1] == logits.shape[-1]:
        tail_logsumexp = torch.full_like(top_logits[..., :1], -math.inf)
    else:
        tail_logsumexp = _LogSumExpOutside.apply(logits, top_ids)
    log_normaliser = torch.logaddexp(torch.logsumexp(top_logits, dim=-1, keepdim=True), tail_logsumexp)
    tail = (tail_logsumexp - log_normaliser).clamp(min=floor)
    return torch.cat([top_logits - log_normaliser, tail], dim=-1)


# --------------------------------------------------------------------------- divergences


def _kl_from_log_probs(p_logp: Tensor, q_logp: Tensor) -> Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the last dim, with ``0 log 0 = 0``.

    Entries where ``p`` is exactly 0 (log-prob ``-inf``, e.g. a masked vocabulary slot) are
    zeroed *before* the arithmetic, so neither the value nor the gradient becomes NaN.
    """
    p = torch.exp(p_logp)
    has_mass = p > 0
    log_ratio = torch.where(has_mass, p_logp, 0.0) - torch.where(has_mass, q_logp, 0.0)
    return (p * log_ratio).sum(dim=-1)


def forward_kl(teacher_logp: Tensor, student_logp: Tensor) -> Tensor:
    """Forward KL ``KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)``: mass-covering for the student.

    Shapes: ``[..., V]`` each -> ``[...]``. Argument order follows the KL's: teacher first.
    This is ``token_divergence`` at ``alpha = 0`` (the SDFT default).
    """
    return _kl_from_log_probs(teacher_logp, student_logp)


def reverse_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Reverse KL ``KL(p_S || p_T) = sum_v p_S (log p_S - log p_T)``: mode-seeking for the student.

    Shapes: ``[..., V]`` each -> ``[...]``. Argument order follows the KL's: student first.
    This is ``token_divergence`` at ``alpha = 1`` (the SDPO default for code).
    """
    return _kl_from_log_probs(student_logp, teacher_logp)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, alpha: float) -> Tensor:
    """Generalised Jensen-Shannon divergence through the mixture ``m = (1-a) p_S + a p_T``.

    Returns ``(1-a) KL(p_S || m) + a KL(p_T || m)``, shapes ``[..., V]`` each -> ``[...]``.
    Symmetric under swapping student and teacher together with ``a -> 1-a``. The formula tends
    to 0 at both ``a = 0`` and ``a = 1``; the endpoints the harness means by alpha are the plain
    KLs, which :func:`token_divergence` selects directly.
    """
    alpha = _check_alpha(alpha)
    log_student_weight = math.log(1.0 - alpha) if alpha < 1.0 else -math.inf
    log_teacher_weight = math.log(alpha) if alpha > 0.0 else -math.inf
    mixture_logp = torch.logsumexp(
        torch.stack([student_logp + log_student_weight, teacher_logp + log_teacher_weight]), dim=0
    )
    student_to_mixture = _kl_from_log_probs(student_logp, mixture_logp)
    teacher_to_mixture = _kl_from_log_probs(teacher_logp, mixture_logp)
    return (1.0 - alpha) * student_to_mixture + alpha * teacher_to_mixture


def token_divergence(student_logp: Tensor, teacher_logp: Tensor, alpha: float) -> Tensor:
    """The per-token distillation divergence selected by the coefficient ``alpha`` in [0, 1].

    - ``alpha = 0``: forward KL ``KL(p_T || p_S)``;
    - ``alpha = 1``: reverse KL ``KL(p_S || p_T)``;
    - otherwise: :func:`generalized_jsd` with mixture ``(1-alpha) p_S + alpha p_T``.

    Shapes: ``[..., V]`` (full vocabulary) or ``[..., k+1]`` (from :func:`topk_with_tail`) ->
    ``[...]``. Raises ``ValueError`` for alpha outside [0, 1].
    """
    alpha = _check_alpha(alpha)
    if alpha == 0.0:
        return forward_kl(teacher_logp, student_logp)
    if alpha == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    return generalized_jsd(student_logp, teacher_logp, alpha)


def sampled_reverse_kl_surrogate(student_token_logp: Tensor, teacher_token_logp: Tensor) -> Tensor:
    """REINFORCE surrogate for reverse KL on the sampled token only (``support: sampled``).

    Per-token loss ``-sg(log p_T(y_t) - log p_S(y_t)) * log p_S(y_t)``, shapes ``[N, T]`` ->
    ``[N, T]``. Its value is not a divergence; its gradient is: averaged over ``y_t ~ p_S`` it
    equals ``grad E_S[log p_S - log p_T] = grad KL(p_S || p_T)`` (the score function has zero
    mean, so the missing ``grad log p_S`` term inside the expectation vanishes). The advantage is
    detached here because the stop-gradient is part of the estimator's definition.
    """
    advantage = (teacher_token_logp - student_token_logp).detach()
    return -advantage * student_token_logp


def importance_weights(student_token_logp: Tensor, rollout_token_logp: Tensor, clip: float | None) -> Tensor:
    """Per-token importance weights ``min(exp(log p_S - log p_rollout), clip)``, detached.

    Shapes ``[N, T]`` -> ``[N, T]``. Capped above only (a ratio below 1 is kept as it is);
    ``clip=None`` disables the cap. They correct for the rollout engine's log-probs differing
    from the trainer's; they weight the loss and never receive gradient.
    """
    ratio = torch.exp((student_token_logp - rollout_token_logp).detach())
    return ratio if clip is None else ratio.clamp(max=clip)


# --------------------------------------------------------------------------- aggregation


def _safe_denominator(count: Tensor) -> Tensor:
    # An empty batch has a zero numerator; dividing by 1 keeps the result 0 and the graph
    # NaN-free (a `where` after a 0/0 would still send NaN through backward).
    return torch.where(count > 0, count, torch.ones_like(count))


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token_mean",
    num_tokens: int | float | Tensor | None = None,
    num_sequences: int | float | Tensor | None = None,
) -> Tensor:
    """Reduce a per-token loss ``[N, T]`` under ``mask [N, T]`` to a scalar.

    - ``token_mean`` (default): ``sum(per_token * mask) / num_tokens``; ``num_tokens``
      defaults to ``mask.sum()``.
    - ``sequence_mean``: each sequence's masked mean ``sum_t(per_token * mask) / len_seq``,
      summed and divided by ``num_sequences``, which defaults to the number of sequences with
      ``len_seq > 0``. Sequences with no unmasked token contribute nothing.

    Masked positions are selected out, not multiplied by zero, so an ``inf``/``NaN`` there
    changes neither the value nor the gradient. An all-zero mask returns 0 with the graph
    intact. For gradient accumulation pass the *whole* batch's ``num_tokens`` /
    ``num_sequences`` to every micro-batch call: the micro-batch losses then sum to the
    full-batch loss. ``per_token`` may be a bool tensor (e.g. PPO clip flags: gives a fraction).
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGGREGATION_MODES}")
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ in shape")
    if not per_token.is_floating_point():
        per_token = per_token.float()
    weights = mask.to(per_token.dtype)
    masked = torch.where(weights != 0, per_token * weights, 0.0)

    def as_count(value: int | float | Tensor) -> Tensor:
        return torch.as_tensor(value, dtype=per_token.dtype, device=per_token.device)

    if mode == "token_mean":
        count = weights.sum() if num_tokens is None else as_count(num_tokens)
        return masked.sum() / _safe_denominator(count)

    lengths = weights.sum(dim=-1)
    per_sequence = masked.sum(dim=-1) / _safe_denominator(lengths)
    count = (lengths > 0).sum().to(per_token.dtype) if num_sequences is None else as_count(num_sequences)
    return per_sequence.sum() / _safe_denominator(count)


def sequence_log_prob(token_logp: Tensor, mask: Tensor, length_norm: str = "sum") -> Tensor:
    """Log-probability of each response: ``[N, T]`` token log-probs -> ``[N]``.

    ``length_norm="sum"`` (the VPD default) sums over unmasked tokens; ``"mean"`` divides that
    by the number of unmasked tokens. A response with no unmasked token gets 0.
    """
    if length_norm not in LENGTH_NORMS:
        raise ValueError(f"unknown length_norm {length_norm!r}; expected one of {LENGTH_NORMS}")
    keep = mask != 0
    total = torch.where(keep, token_logp, 0.0).sum(dim=-1)
    if length_norm == "sum":
        return total
    return total / _safe_denominator(keep.sum(dim=-1).to(token_logp.dtype))


# --------------------------------------------------------------------------- GRPO


def group_advantages(
    rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Group-relative advantages ``A_i = r_i - mean_group(r)``, optionally ``/ (std_group + eps)``.

    ``rewards [N]`` must be ordered group by group (``N = B * group_size``); returns ``[N]``.
    The std is the *unbiased* (Bessel-corrected, ``N-1``) sample std, as in the TRL and verl
    GRPO implementations; ``scale_by_std=False`` is the Dr.GRPO variant. A group whose rewards
    are all equal (including any group of size 1) gets exactly 0, not a rounding residue of
    ``r - mean(r)``.
    """
    if group_size < 1 or rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.reshape(-1, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    flat = (grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)).expand_as(grouped)
    if scale_by_std and group_size > 1:
        centred = centred / (grouped.std(dim=1, unbiased=True, keepdim=True) + eps)
    return torch.where(flat, torch.zeros_like(centred), centred).reshape(-1)


def ppo_clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float = 0.2, clip_high: float = 0.2
) -> tuple[Tensor, Tensor]:
    """PPO clipped policy-gradient loss per token, and where the clip was active.

    ``ratio = exp(logp - old_logp)``; loss ``-min(ratio * A, clip(ratio, 1-clip_low,
    1+clip_high) * A)``. Shapes: ``logp, old_logp [N, T]``, ``advantages [N]`` (broadcast over
    tokens) or ``[N, T]``. Returns ``(loss [N, T], clipped [N, T] bool)``; ``clipped`` is True
    where the clipped term is strictly the smaller one, i.e. where the token gets no gradient
    (``aggregate(clipped, mask)`` is the clip fraction).
    """
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of ``KL(pi || ref)`` on tokens sampled from ``pi``.

    ``exp(ref - logp) - (ref - logp) - 1``, shapes ``[N, T]`` -> ``[N, T]``; always >= 0, 0
    where the two agree, unbiased in expectation under ``pi``. Used for GRPO's optional KL
    penalty to the initial policy.
    """
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


# --------------------------------------------------------------------------- VPD E-step


def implicit_reward(teacher_seq_logp: Tensor, prior_seq_logp: Tensor, beta: float) -> Tensor:
    """VPD implicit reward ``rho = beta * (log q_theta(y | x, C) - sg[log pi_prior(y | x)])``.

    Shapes ``[N]`` -> ``[N]``. The prior is detached here (part of the definition): the E-step
    moves only the teacher, within reach of the prior.
    """
    return beta * (teacher_seq_logp - prior_seq_logp.detach())


def bco_loss(implicit_rewards: Tensor, success: Tensor, delta: float | Tensor) -> tuple[Tensor, dict]:
    """Unpaired binary-classifier preference loss (BCO) used by the VPD E-step.

    ``L = -mean_{success} log sigmoid(rho - delta) - mean_{failure} log sigmoid(-(rho - delta))``.
    ``implicit_rewards [N]``, ``success [N]`` (bool or 0/1), ``delta`` a float or 0-dim tensor
    treated as a constant (detached). With one class present only its term is used; with no
    response the loss is 0 (graph intact). Returns ``(loss, info)`` with
    ``info = {"n_success": int, "n_failure": int, "one_class": bool}``, ``one_class`` meaning
    exactly one of the two classes is present.
    """
    success = success.to(torch.bool)
    delta = torch.as_tensor(delta, dtype=implicit_rewards.dtype, device=implicit_rewards.device).detach()
    margin = implicit_rewards - delta
    n_success = int(success.sum())
    n_failure = int(success.numel() - n_success)
    loss = implicit_rewards.sum() * 0.0
    if n_success:
        loss = loss - F.logsigmoid(margin[success]).mean()
    if n_failure:
        loss = loss - F.logsigmoid(-margin[~success]).mean()
    info = {"n_success": n_success, "n_failure": n_failure, "one_class": (n_success == 0) != (n_failure == 0)}
    return loss, info


def update_running_delta(
    delta: float | None, batch_mean_reward: float | Tensor, momentum: float = 0.9
) -> float:
    """BCO margin update: ``momentum * delta + (1 - momentum) * batch_mean`` as a plain float.

    ``delta=None`` (first E-step) starts the running mean at ``batch_mean_reward``.
    """
    if isinstance(batch_mean_reward, Tensor):
        batch_mean_reward = batch_mean_reward.detach()
    batch_mean = float(batch_mean_reward)
    if delta is None:
        return batch_mean
    return momentum * float(delta) + (1.0 - momentum) * batch_mean


# --------------------------------------------------------------------------- teacher weights


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    return tau


@torch.no_grad()
def ema_update_(teacher_params: Iterable[Tensor], student_params: Iterable[Tensor], tau: float) -> None:
    """In place ``theta_T <- (1 - tau) theta_T + tau theta`` for paired parameter tensors.

    ``tau = 0`` leaves the teacher untouched and ``tau = 1`` copies the student bit for bit
    (both handled explicitly rather than trusting floating-point interpolation). Student
    tensors are moved to each teacher tensor's device and dtype.
    """
    tau = _check_tau(tau)
    teacher_params, student_params = list(teacher_params), list(student_params)
    if len(teacher_params) != len(student_params):
        raise ValueError(f"teacher has {len(teacher_params)} tensors, student {len(student_params)}")
    if tau == 0.0:
        return
    for teacher, student in zip(teacher_params, student_params):
        if teacher.shape != student.shape:
            raise ValueError(
                f"shape mismatch: teacher {tuple(teacher.shape)} vs student {tuple(student.shape)}"
            )
        student = student.to(device=teacher.device, dtype=teacher.dtype)
        if tau == 1.0:
            teacher.copy_(student)
        else:
            teacher.lerp_(student, tau)


def trust_region_logits(frozen_logits: Tensor, live_logits: Tensor, tau: float) -> Tensor:
    """Trust-region teacher logits ``(1 - tau) * frozen + tau * live``; shapes ``[..., V]``.

    ``tau = 0`` gives the frozen teacher, ``tau = 1`` the live one.
    """
    return torch.lerp(frozen_logits, live_logits, _check_tau(tau))


# --------------------------------------------------------------------------- health signals


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / T)`` per position: ``[..., V]`` -> ``[...]``.

    ``H = logsumexp(z) - sum_v p_v z_v`` with ``z = logits / T``: no log-softmax tensor.
    Slots with ``-inf`` logits count as probability 0.
    """
    z = _scale_by_temperature(logits, temperature)
    p = torch.softmax(z, dim=-1)
    expected_logit = (p * torch.where(p > 0, z, 0.0)).sum(dim=-1)
    return torch.logsumexp(z, dim=-1) - expected_logit
