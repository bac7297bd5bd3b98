"""Each method's real ``prepare`` / ``loss`` (and VPD's E-step) against values and gradients computed
independently, in float64, from the model's own forward pass.

The references below do not call ``vpd_bench.losses``: they re-derive every quantity from the
definitions in docs/method.md (divergence by alpha, top-k + tail support, importance weights clipped
above, token-mean aggregation, group advantages with the sample std, PPO clip, BCO with delta
updated before the loss). The toy batch's rollout log-probs differ from the student's, so the clipped
importance weight matters, and alpha takes values where the divergence is not symmetric.
These tests exist to fail on plausible wiring bugs: student and teacher swapped at the divergence
call, a teacher that carries a graph, an inverted importance ratio, a flipped KL direction, a
flipped BCO label, a prior without stop-gradient, delta updated after the loss.
"""
import math

import pytest
import torch

from _toy import sharpen, toy_batch

TEMPERATURE = 0.7
IS_CLIP = 2.0
SHARPEN = 15.0
# rollout log-prob shifts per response: importance ratios exp(-shift) from ~0.3 to ~2.7 (clipped at 2)
SHIFTS = (-1.5, 0.5, -0.3, 1.2)


def rollout_shift(i, t):
    return SHIFTS[i] + 0.1 * t


def trainer_for(make_trainer, method, overrides=()):
    base = [f"rollout.temperature={TEMPERATURE}", "train.micro_batch_size=4"]
    if method not in ("grpo", "dr_grpo"):
        base += [f"method.is_clip={IS_CLIP}", "method.aggregation=token_mean"]
    t = make_trainer(method, feedback="env", overrides=base + list(overrides))
    # the tiny random model is nearly uniform over its vocabulary and barely reads its context (logit
    # std ~0.2): student and teacher would agree to ~1e-6, where float32 noise hides every bug and
    # forward and reverse KL coincide. Re-draw its projections at unit gain and sharpen its output so
    # that the teacher prompt changes the distribution at first order (divergences ~0.2-1 nats).
    sharpen(t.model, gain=SHARPEN)
    with torch.no_grad():
        for copy in (getattr(t.teacher, "copy", None), getattr(t.method, "initial_prior", None)):
            if copy is not None:          # EMA / frozen / initial-prior copies start equal to the student
                copy.load_state_dict(t.model.state_dict())
    return t


def params_of(model):
    return [p for p in model.parameters() if p.requires_grad]


# -- independent references -------------------------------------------------------------------------

def forward_logits(model, prompt, response, grad):
    """Logits that predict each response token, from one unpadded forward pass, divided by T."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.set_grad_enabled(grad):
        out = model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) + len(response) - 1]
    return out.double() / TEMPERATURE


def support_probs(s_logits, t_logits, support, k):
    """Student and teacher distributions on the support, as probabilities (float64)."""
    ps, pt = torch.softmax(s_logits, -1), torch.softmax(t_logits, -1)
    if support == "full":
        return ps, pt
    ids = torch.topk(s_logits.detach(), k, dim=-1).indices
    ps_k, pt_k = ps.gather(-1, ids), pt.gather(-1, ids)
    return (torch.cat([ps_k, 1 - ps_k.sum(-1, keepdim=True)], -1),
            torch.cat([pt_k, 1 - pt_k.sum(-1, keepdim=True)], -1))


def divergence(ps, pt, alpha):
    if alpha == 0.0:      # forward KL(p_T || p_S)
        return (pt * (pt.log() - ps.log())).sum(-1)
    if alpha == 1.0:      # reverse KL(p_S || p_T)
        return (ps * (ps.log() - pt.log())).sum(-1)
    m = (1 - alpha) * ps + alpha * pt
    return (1 - alpha) * (ps * (ps.log() - m.log())).sum(-1) + alpha * (pt * (pt.log() - m.log())).sum(-1)


def reference_distillation_loss(t, batch, alpha, support, k=20, drop=(), scored=None):
    """sum over rows with a teacher, tokens: min(exp(log p_S(y_t) - log p_rollout(y_t)), clip) * D_t,
    divided by the number of those tokens; teacher scored without a graph. ``drop``: token ids
    removed from both distributions (renormalised over the rest) before D_t; the weights still
    use the sampled token's full-vocabulary log-probs. ``scored``: per response, how many leading
    tokens are scored (and counted)."""
    teacher_model = getattr(t.teacher, "copy", None) or t.model
    total, n_tokens = 0.0, 0
    for i in range(batch.num_responses):
        if not bool(batch.teacher_mask[i]):
            continue
        y = batch.response_ids[i]
        s = forward_logits(t.model, batch.prompt_ids_of(i), y, grad=True)
        with torch.no_grad():
            tt = forward_logits(teacher_model, batch.teacher_prompt_ids[i], y, grad=False)
        ys = torch.tensor(y)
        s_tok = torch.log_softmax(s, -1).gather(-1, ys[:, None])[:, 0]
        t_tok = torch.log_softmax(tt, -1).gather(-1, ys[:, None])[:, 0]
        ratio = torch.exp(s_tok.detach() - torch.tensor(batch.rollout_logp[i], dtype=torch.float64))
        w = torch.clamp(ratio, max=IS_CLIP)
        if support == "sampled":
            per_token = -(t_tok - s_tok).detach() * s_tok
        else:
            if drop:
                keep = torch.tensor([v for v in range(s.shape[-1]) if v not in set(drop)])
                s, tt = s.index_select(-1, keep), tt.index_select(-1, keep)
            ps, pt = support_probs(s, tt, support, min(k, s.shape[-1]))
            per_token = divergence(ps, pt, alpha)
        n = len(y) if scored is None else scored[i]
        total = total + (w * per_token)[:n].sum()
        n_tokens += n
    return total / n_tokens


def method_loss(t, batch, old_logp=None):
    t.build_teacher_context(batch)
    t.method.prepare(batch)
    mb = t._micro_batch(batch, list(range(batch.num_responses)), old_logp)
    return t.method.loss(mb), mb


def flat_gradient(grads, params):
    return torch.cat([(g if g is not None else torch.zeros_like(p)).double().flatten() for g, p in zip(grads, params)])


def assert_close_gradients(got, want, tol=2e-3):
    """Relative error of the whole gradient vector (float32 pipeline vs float64 reference)."""
    assert float(want.norm()) > 0
    err = float((got - want).norm() / want.norm())
    assert err < tol, f"relative gradient error {err:.2e}"


def assert_same_value_and_gradient(t, loss, ref):
    params = params_of(t.model)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-3, abs=1e-7)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    got = flat_gradient(got, params)
    want = flat_gradient(want, params)
    assert_close_gradients(got, want)


# -- the distillation methods -------------------------------------------------------------------------

CASES = [
    ("sdpo", ["method.teacher=live"], 0.0, "full"),
    ("sdpo", ["method.teacher=live"], 0.3, "full"),
    ("sdpo", ["method.teacher=live"], 1.0, "full"),
    ("sdpo", ["method.teacher=live"], 0.0, "topk"),
    ("sdpo", ["method.teacher=live"], 0.7, "topk"),
    ("sdpo", ["method.teacher=live"], 1.0, "topk"),
    ("vpd", [], 0.0, "topk"),
    ("vpd", [], 0.3, "full"),
    ("vpd", [], 1.0, "topk"),
    ("sdft", [], 0.0, "full"),
    ("opsd", [], 0.5, "topk"),
    ("sdpo", [], 0.2, "topk"),        # the default EMA teacher
]


@pytest.mark.parametrize("method,extra,alpha,support", CASES)
def test_distillation_loss_matches_the_definition(make_trainer, method, extra, alpha, support):
    t = trainer_for(make_trainer, method, extra + [f"method.alpha={alpha}", f"method.support={support}",
                                                   "method.topk=5"])
    batch = toy_batch(t, rollout_shift=rollout_shift)
    loss, mb = method_loss(t, batch)
    assert bool(batch.teacher_mask.any())
    ref = reference_distillation_loss(t, batch, alpha, support, k=5)
    assert_same_value_and_gradient(t, loss, ref)


@pytest.mark.parametrize("method,extra,alpha,support", [
    ("sdpo", ["method.teacher=live"], 0.5, "full"),
    ("sdpo", [], 0.0, "topk"),
    ("vpd", [], 1.0, "topk"),
])
def test_distill_stop_false_removes_the_stop_token_from_the_divergence(make_trainer, method, extra, alpha, support):
    """method.distill_stop=false: the divergence is taken over the distributions renormalised without
    the stop token(s), at every position; with it on, the loss differs (so the toy batch can tell)."""
    from vpd_bench.method import stop_token_ids
    t = trainer_for(make_trainer, method, extra + [f"method.alpha={alpha}", f"method.support={support}",
                                                   "method.topk=5", "method.distill_stop=false"])
    batch = toy_batch(t, rollout_shift=rollout_shift)
    assert stop_token_ids(t.method) == sorted(t.engine.eos_ids) and t.engine.eos_ids
    # the tiny model gives EOS almost no mass: add the two tokens it finds likeliest on the toy
    # responses to the stop set, so that removing it changes the divergence far beyond the tolerance
    _, mb = method_loss(t, batch)
    likeliest = torch.softmax(mb.student_logits().detach().double(), -1).mean(dim=(0, 1)).topk(2).indices
    t.engine.eos_ids = set(t.engine.eos_ids) | set(likeliest.tolist())
    stop = stop_token_ids(t.method)
    loss, _ = method_loss(t, batch)
    ref = reference_distillation_loss(t, batch, alpha, support, k=5, drop=stop)
    assert_same_value_and_gradient(t, loss, ref)
    with_stop = reference_distillation_loss(t, batch, alpha, support, k=5)
    assert abs(float(with_stop.detach()) - float(ref.detach())) > 1e-2 * abs(float(ref.detach()))   # >> the 1e-3 tolerance


def test_distill_stop_false_ignores_the_teachers_stop_logit(make_trainer):
    """A teacher that only wants to stop less (its stop logit lowered) changes SDPO's loss, and
    changes nothing with distill_stop=false."""
    from vpd_bench.method import stop_token_ids

    def loss_with_teacher_shift(distill_stop, shift):
        t = trainer_for(make_trainer, "sdpo", ["method.teacher=live", "method.support=full",
                                               f"method.distill_stop={distill_stop}"])
        batch = toy_batch(t, rollout_shift=rollout_shift)
        t.build_teacher_context(batch)
        t.method.prepare(batch)
        mb = t._micro_batch(batch, list(range(batch.num_responses)))
        stop = torch.tensor(stop_token_ids(t.method))
        plain = mb.teacher_logits_fn
        mb.teacher_logits_fn = lambda: plain().index_add(-1, stop, torch.full(plain().shape[:-1] + (len(stop),), shift))
        return float(t.method.loss(mb).detach())

    assert loss_with_teacher_shift("true", -3.0) != pytest.approx(loss_with_teacher_shift("true", 0.0), rel=1e-4)
    assert loss_with_teacher_shift("false", -3.0) == pytest.approx(loss_with_teacher_shift("false", 0.0), rel=1e-6)


def test_distill_stop_false_refuses_the_sampled_support(make_trainer):
    t = trainer_for(make_trainer, "sdpo", ["method.teacher=live", "method.alpha=1.0", "method.support=sampled",
                                           "method.distill_stop=false"])
    with pytest.raises(ValueError, match="distill_stop"):
        method_loss(t, toy_batch(t, rollout_shift=rollout_shift))


def test_sampled_support_matches_the_reinforce_surrogate(make_trainer):
    t = trainer_for(make_trainer, "sdpo", ["method.teacher=live", "method.alpha=1.0", "method.support=sampled"])
    batch = toy_batch(t, rollout_shift=rollout_shift)
    loss, _ = method_loss(t, batch)
    assert_same_value_and_gradient(t, loss, reference_distillation_loss(t, batch, 1.0, "sampled"))


def test_importance_weights_matter_in_the_toy_batch(make_trainer):
    """Guard for the tests above: the toy batch's weights are neither all 1 nor all clipped."""
    t = trainer_for(make_trainer, "sdpo", ["method.teacher=live"])
    batch = toy_batch(t, rollout_shift=rollout_shift)
    _, mb = method_loss(t, batch)
    ratio = torch.exp(mb.student_token_logp().detach() - mb.rollout_logp)[mb.response_mask > 0]
    assert (ratio < 0.9).any() and (ratio > IS_CLIP).any() and ((ratio > 1.0) & (ratio < IS_CLIP)).any()


@pytest.mark.parametrize("method", ["vpd", "sdpo"])
def test_the_teacher_forward_carries_no_graph(make_trainer, method):
    """The live / trained teacher is the student's own weights: its logits must come without a graph,
    so the M-step gradient is exactly the gradient with the teacher detached."""
    t = trainer_for(make_trainer, method, ["method.teacher=live"] if method == "sdpo" else [])
    batch = toy_batch(t, rollout_shift=rollout_shift)
    _, mb = method_loss(t, batch)
    logits = mb.teacher_logits_fn()
    assert not logits.requires_grad and logits.grad_fn is None
    assert mb.teacher_logits().grad_fn is None


# -- GRPO ------------------------------------------------------------------------------------------------

def reference_advantages(rewards, G):
    r = [float(x) for x in rewards]
    out = []
    for g in range(0, len(r), G):
        grp = r[g:g + G]
        mean = sum(grp) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))      # sample std (n - 1)
        out += [0.0 if max(grp) == min(grp) else (x - mean) / (std + 1e-6) for x in grp]
    return out


def reference_grpo_loss(t, batch, old=None, eps_low=0.2, eps_high=0.2, scale_by_std=True):
    adv = reference_advantages(batch.rewards, batch.group_size)
    if not scale_by_std:
        r = [float(x) for x in batch.rewards]
        mean = sum(r) / len(r)
        adv = [x - mean for x in r]
    total, n = 0.0, 0
    for i in range(batch.num_responses):
        y = batch.response_ids[i]
        s = forward_logits(t.model, batch.prompt_ids_of(i), y, grad=True)
        logp = torch.log_softmax(s, -1).gather(-1, torch.tensor(y)[:, None])[:, 0]
        old_i = logp.detach() if old is None else old[i, :len(y)].double()
        ratio = torch.exp(logp - old_i)
        a = adv[i]
        total = total - torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a).sum()
        n += len(y)
    return total / n


def test_grpo_advantages_use_the_sample_std(make_trainer):
    t = trainer_for(make_trainer, "grpo")
    batch = toy_batch(t, rewards=(1.0, 0.0, 0.0, 0.0))
    t.method.prepare(batch)
    # rewards 1,0,0,0: mean 0.25, sample std sqrt(0.75 / 3) = 0.5 -> advantages 1.5, -0.5, -0.5, -0.5
    assert batch.extras["advantages"].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)


@pytest.mark.parametrize("method,rewards", [("grpo", (1.0, 0.0, 1.0, 0.0)), ("grpo", (1.0, 0.0, 0.0, 0.0)),
                                            ("dr_grpo", (1.0, 0.0, 0.0, 0.0))])
def test_grpo_on_policy_loss_matches_the_definition(make_trainer, method, rewards):
    t = trainer_for(make_trainer, method)
    batch = toy_batch(t, rewards=rewards, rollout_shift=rollout_shift)
    loss, _ = method_loss(t, batch)
    ref = reference_grpo_loss(t, batch, scale_by_std=method == "grpo")
    assert_same_value_and_gradient(t, loss, ref)


def test_grpo_clipped_loss_with_old_log_probs(make_trainer):
    """ppo_epochs > 1: the ratio to the behaviour policy's log-probs is clipped at 1 -/+ eps."""
    t = trainer_for(make_trainer, "grpo", ["method.clip_low=0.2", "method.clip_high=0.28"])
    batch = toy_batch(t, rewards=(1.0, 0.0, 0.0, 1.0))
    t.build_teacher_context(batch)
    t.method.prepare(batch)
    probe = t._micro_batch(batch, [0, 1, 2, 3])
    with torch.no_grad():
        current = probe.student_token_logp()
    offsets = torch.tensor([-0.5, 0.1, 0.4, -0.05])[:, None]     # ratios 0.61, 1.1, 1.5, 0.95
    old = current + offsets
    loss, mb = method_loss(t, batch, old_logp=old)
    ref = reference_grpo_loss(t, batch, old=old, eps_low=0.2, eps_high=0.28)
    assert_same_value_and_gradient(t, loss, ref)


# -- VPD's E-step ----------------------------------------------------------------------------------------

def reference_estep(t, batch, beta, delta_before, momentum=0.9, successes_only=False, lagged=False, prior_model=None):
    """(loss, delta): rho_i = beta (log q(y|x,C) - sg log pi(y|x)), summed over tokens; delta updated
    with the batch mean of rho *before* the loss; BCO with per-class means. successes_only: the
    buffer holds the passing responses alone. lagged (method.delta_timing=after_loss): the loss
    uses ``delta_before`` and the returned delta is the one updated after it. prior_model: the
    weights that score log pi(y|x) (default: the current ones)."""
    rhos, success = [], []
    for i in range(batch.num_responses):
        if not bool(batch.teacher_mask[i]) or (successes_only and float(batch.rewards[i]) < 1.0):
            continue
        y = batch.response_ids[i]
        ys = torch.tensor(y)[:, None]
        q = torch.log_softmax(forward_logits(t.model, batch.teacher_prompt_ids[i], y, grad=True), -1).gather(-1, ys).sum()
        with torch.no_grad():
            p = torch.log_softmax(forward_logits(prior_model or t.model, batch.prompt_ids_of(i), y, grad=False),
                                  -1).gather(-1, ys).sum()
        rhos.append(beta * (q - p))
        success.append(float(batch.rewards[i]) >= 1.0)
    mean_rho = sum(float(r.detach()) for r in rhos) / len(rhos)
    delta = mean_rho if delta_before is None else momentum * delta_before + (1 - momentum) * mean_rho
    shift = delta_before if lagged and delta_before is not None else delta
    pos = [r for r, s in zip(rhos, success) if s]
    neg = [r for r, s in zip(rhos, success) if not s]
    loss = 0.0
    if pos:
        loss = loss - sum(torch.nn.functional.logsigmoid(r - shift) for r in pos) / len(pos)
    if neg:
        loss = loss - sum(torch.nn.functional.logsigmoid(-(r - shift)) for r in neg) / len(neg)
    return loss, delta


def buffered_batch(t, rewards):
    """A toy batch with feedback, remembered in the VPD trainer's E-step buffer."""
    batch = toy_batch(t, rewards=rewards)
    t.build_teacher_context(batch)
    t.method._remember(batch)
    return batch


def run_estep_capturing_gradient(t, monkeypatch):
    params = params_of(t.model)
    captured = {}

    def capture():
        captured["grad"] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                      for p in params]).clone()
        t.optimizer.zero_grad(set_to_none=True)
        return 0.0
    monkeypatch.setattr(t, "optimizer_step", capture)
    out = t.method.e_step()
    return out, captured["grad"]


def check_estep_against(t, monkeypatch, ref_loss, ref_delta, abs_tol=1e-6):
    """Run the trainer's E-step; its delta, loss and gradient must equal the reference's."""
    params = params_of(t.model)
    want = flat_gradient(torch.autograd.grad(ref_loss, params, allow_unused=True), params)
    out, got = run_estep_capturing_gradient(t, monkeypatch)
    assert out["delta"] == pytest.approx(ref_delta, rel=1e-4, abs=abs_tol)
    assert out["estep_loss"] == pytest.approx(float(ref_loss), rel=1e-4, abs=abs_tol)
    assert_close_gradients(got, want)
    return out


@pytest.mark.parametrize("micro_batch,delta_before,rewards", [
    (4, None, (1.0, 0.0, 1.0, 0.0)),       # one micro-batch, first E-step: delta = its own batch mean
    (1, None, (1.0, 0.0, 0.0, 0.0)),       # four micro-batches (forward-only pre-pass for delta)
    (4, 0.7, (0.0, 1.0, 1.0, 1.0)),        # a later E-step: delta moves with this batch before the loss
])
def test_estep_loss_and_gradient_match_the_definition(make_trainer, monkeypatch, micro_batch, delta_before, rewards):
    beta = 0.5
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=1", f"method.beta={beta}",
                                          f"train.micro_batch_size={micro_batch}"])
    batch = buffered_batch(t, rewards)
    t.method.delta = delta_before
    ref_loss, ref_delta = reference_estep(t, batch, beta, delta_before)
    check_estep_against(t, monkeypatch, ref_loss, ref_delta)


def test_estep_batching_by_group_changes_no_number(make_trainer, monkeypatch):
    """A window buffer of two problems' batches: the E-step with group-aligned micro-batches (the
    default) gives the loss, delta and gradient of the one with length-ordered micro-batches."""
    # micro-batch budget 12 x 72 student tokens: four of these ~197-token teacher rows
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=2", "method.beta=0.5", "train.micro_batch_size=12",
                                          "method.estep_probe=0"])
    for step, problem, rewards in ((1, 0, (1.0, 0.0, 1.0, 0.0)), (2, 2, (0.0, 1.0, 0.0, 0.0))):
        batch = toy_batch(t, step=step, rewards=rewards, problem=problem)
        t.build_teacher_context(batch)
        t.method._remember(batch)
    tokens = []
    real_forward = t.model.forward

    def counting_forward(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens.append(int(ids.numel()) if ids is not None else int(kwargs["inputs_embeds"].shape[:2].numel()))
        return real_forward(*args, **kwargs)
    monkeypatch.setattr(t.model, "forward", counting_forward)
    results = {}
    for batching in ("length", "group"):
        t.method.mcfg.estep_batching = batching
        t.method.delta = 0.3
        tokens.clear()
        mbs = t.method._estep_micro_batches([it for its in t.method.buffer for it in its])
        out, grad = run_estep_capturing_gradient(t, monkeypatch)
        results[batching] = (out, grad, sum(tokens), mbs)
    (lo, lg, ln, lm), (go, gg, gn, gm) = results["length"], results["group"]
    items = [it for its in t.method.buffer for it in its]
    assert all(len({tuple(items[i]["prompt"]) for i in mb}) == 1 for mb in gm)      # one problem per micro-batch
    assert any(len({tuple(items[i]["prompt"]) for i in mb}) > 1 for mb in lm)       # the length order mixes them
    assert go["estep_loss"] == pytest.approx(lo["estep_loss"], rel=1e-5, abs=1e-6)
    assert go["delta"] == pytest.approx(lo["delta"], rel=1e-5, abs=1e-7)
    assert_close_gradients(gg, lg)
    assert gn > 0 and ln > 0        # (on these toy prompts, which differ in one letter, the token counts are alike;
                                    # tests/test_methods.py counts them on prompts shaped like the math task's)


@pytest.mark.parametrize("micro_batch", [1, 4])
def test_lagged_delta_uses_the_previous_running_mean_and_moves_it_after(make_trainer, monkeypatch, micro_batch):
    """method.delta_timing=after_loss: the loss (and its gradient) is BCO's with the delta the
    previous E-steps left; the E-step then moves delta with this batch's mean exactly as the
    method does. Against the exact variant: the same new delta, a different loss."""
    beta, before = 0.5, 0.7
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=1", f"method.beta={beta}",
                                          f"train.micro_batch_size={micro_batch}", "method.delta_timing=after_loss"])
    batch = buffered_batch(t, (0.0, 1.0, 1.0, 0.0))
    t.method.delta = before
    ref_loss, ref_delta = reference_estep(t, batch, beta, before, lagged=True)
    exact_loss, exact_delta = reference_estep(t, batch, beta, before)
    params = params_of(t.model)
    want = flat_gradient(torch.autograd.grad(ref_loss, params, allow_unused=True), params)
    out, got = run_estep_capturing_gradient(t, monkeypatch)
    assert out["delta"] == pytest.approx(ref_delta, rel=1e-4, abs=1e-6) and ref_delta == pytest.approx(exact_delta)
    assert out["estep_loss"] == pytest.approx(float(ref_loss), rel=1e-4, abs=1e-6)
    assert abs(float(ref_loss) - float(exact_loss)) > 1e-4
    assert_close_gradients(got, want)


@pytest.mark.parametrize("timing,delta_before,passes", [
    ("before_loss", 0.7, 8),     # a forward-only pass over the 4 one-row micro-batches, then 4 with a graph
    ("after_loss", 0.7, 4),      # the graph-carrying passes alone
    ("after_loss", None, 8),     # the first E-step has no running mean yet: the exact variant
])
def test_lagged_delta_saves_the_forward_only_pass(make_trainer, monkeypatch, timing, delta_before, passes):
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=1", "train.micro_batch_size=1",
                                          f"method.delta_timing={timing}", "method.estep_probe=0"])
    buffered_batch(t, (0.0, 1.0, 1.0, 0.0))
    t.method.delta = delta_before
    calls = []
    real = t.method._teacher_log_probs
    monkeypatch.setattr(t.method, "_teacher_log_probs", lambda *a: calls.append(1) or real(*a))
    run_estep_capturing_gradient(t, monkeypatch)
    assert len(calls) == passes


def _mstep_then_move_weights(t, batch):
    """Run the M-step's forward passes on ``batch`` (its own update left out), remember the batch as
    the loop does, and then move the weights, as the M-step updates and later iterations would.
    Returns a frozen copy of the weights the M-step scored with."""
    import copy
    scored_with = copy.deepcopy(t.model).eval()
    real_step = t.optimizer_step
    t.optimizer_step = lambda: 0.0
    try:
        t.update_student(batch)
    finally:
        t.optimizer_step = real_step
    t.optimizer.zero_grad(set_to_none=True)
    t.method._remember(batch)
    with torch.no_grad():
        for p in t.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return scored_with


@pytest.mark.parametrize("micro_batch", [4, 1])
def test_rollout_prior_uses_the_msteps_student_log_probs(make_trainer, monkeypatch, micro_batch):
    """method.prior_timing=rollout: rho's prior is log pi(y|x) at the weights the M-step scored the
    response with (its own iteration), not at the E-step's start; loss, delta and gradient equal the
    definition with that prior, and differ from the exact variant's once the weights have moved."""
    beta = 0.5
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=1", f"method.beta={beta}", "method.estep_probe=0",
                                          f"train.micro_batch_size={micro_batch}", "method.prior_timing=rollout"])
    batch = toy_batch(t, rewards=(1.0, 0.0, 0.0, 1.0))
    t.build_teacher_context(batch)
    torch.manual_seed(0)
    scored_with = _mstep_then_move_weights(t, batch)
    assert all("prior" in it for its in t.method.buffer for it in its)
    ref_loss, ref_delta = reference_estep(t, batch, beta, None, prior_model=scored_with)
    exact_loss, exact_delta = reference_estep(t, batch, beta, None)
    assert abs(ref_delta - exact_delta) > 1e-3 and abs(float(ref_loss) - float(exact_loss)) > 1e-4
    check_estep_against(t, monkeypatch, ref_loss, ref_delta, abs_tol=1e-5)


@pytest.mark.parametrize("timing", ["estep", "rollout"])
def test_rollout_prior_saves_the_prior_pass(make_trainer, monkeypatch, timing):
    """The E-step scores no student prompt with prior_timing=rollout; the exact variant scores each
    micro-batch's once."""
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=1", "method.estep_probe=0",
                                          f"method.prior_timing={timing}"])
    batch = toy_batch(t)
    t.build_teacher_context(batch)
    _mstep_then_move_weights(t, batch)
    student_prompt = batch.prompt_ids_of(0)
    calls = []
    real = t.sequence_log_probs
    monkeypatch.setattr(t, "sequence_log_probs",
                        lambda model, prompts, *a: calls.append(list(prompts[0]) == list(student_prompt))
                        or real(model, prompts, *a))
    items = [it for its in t.method.buffer for it in its]
    n_micro_batches = len(t.method._estep_micro_batches(items))
    run_estep_capturing_gradient(t, monkeypatch)
    assert sum(calls) == (n_micro_batches if timing == "estep" else 0)
    assert len(calls) > sum(calls)          # the teacher passes still run


def test_prior_timing_is_checked(make_trainer):
    from vpd_bench.errors import UserError
    with pytest.raises(UserError, match="prior_timing"):
        trainer_for(make_trainer, "vpd", ["method.prior_timing=later"])
    with pytest.raises(UserError, match="prior_timing"):
        trainer_for(make_trainer, "vpd", ["method.prior_timing=rollout", "method.prior=initial"])
    with pytest.raises(UserError, match="prior_timing"):
        trainer_for(make_trainer, "vpd", ["method.prior_timing=rollout", "method.estep_fused=true",
                                          "method.estep_buffer=current"])


def test_delta_timing_is_checked(make_trainer):
    from vpd_bench.errors import UserError
    with pytest.raises(UserError, match="delta_timing"):
        trainer_for(make_trainer, "vpd", ["method.delta_timing=later"])
    with pytest.raises(UserError, match="delta_timing"):
        trainer_for(make_trainer, "vpd", ["method.delta_timing=after_loss", "method.estep_fused=true",
                                          "method.estep_buffer=current"])


def test_estep_on_successes_only_drops_the_failure_term(make_trainer, monkeypatch):
    """method.estep_samples=successes: the buffer holds passing responses only; the loss, delta and
    gradient equal the definition restricted to them, and differ from the full E-step's."""
    beta = 0.5
    full = trainer_for(make_trainer, "vpd", ["method.estep_every=1", f"method.beta={beta}"])
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=1", f"method.beta={beta}",
                                          "method.estep_samples=successes"])
    batch = buffered_batch(t, (1.0, 0.0, 1.0, 0.0))
    assert [it["success"] for its in t.method.buffer for it in its] == [True, True]
    ref_loss, ref_delta = reference_estep(t, batch, beta, None, successes_only=True)
    all_loss, all_delta = reference_estep(full, batch, beta, None)
    params = params_of(t.model)
    want = flat_gradient(torch.autograd.grad(ref_loss, params, allow_unused=True), params)
    out, got = run_estep_capturing_gradient(t, monkeypatch)
    assert out["estep_size"] == 2 and out["estep_success_frac"] == 1.0
    assert out["delta"] == pytest.approx(ref_delta, rel=1e-4, abs=1e-6)
    assert out["estep_loss"] == pytest.approx(float(ref_loss), rel=1e-4, abs=1e-6)
    assert abs(float(all_loss) - float(ref_loss)) > 1e-3 and abs(all_delta - ref_delta) > 1e-4
    assert_close_gradients(got, want)


def test_estep_samples_is_checked(make_trainer):
    from vpd_bench.errors import UserError
    with pytest.raises(UserError, match="estep_samples"):
        trainer_for(make_trainer, "vpd", ["method.estep_samples=failures"])
    with pytest.raises(UserError, match="estep_samples=all"):
        trainer_for(make_trainer, "vpd", ["method.estep_samples=successes", "method.estep_fused=true",
                                          "method.estep_buffer=current"])


def test_estep_prior_initial_scores_the_frozen_copy(make_trainer, monkeypatch):
    """prior=initial: after the weights move, rho uses the initial weights' log pi(y|x)."""
    t = trainer_for(make_trainer, "vpd", ["method.estep_every=1", "method.prior=initial", "method.beta=1.0"])
    with torch.no_grad():                     # move the live weights away from the initial copy
        for p in t.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = toy_batch(t)
    t.build_teacher_context(batch)
    t.method._remember(batch)
    out, _ = run_estep_capturing_gradient(t, monkeypatch)
    rho_live, rho_initial = [], []
    for i in range(4):
        y = batch.response_ids[i]
        ys = torch.tensor(y)[:, None]
        with torch.no_grad():
            q = torch.log_softmax(forward_logits(t.model, batch.teacher_prompt_ids[i], y, False), -1).gather(-1, ys).sum()
            p0 = torch.log_softmax(forward_logits(t.method.initial_prior, batch.prompt_ids_of(i), y, False), -1).gather(-1, ys).sum()
            p1 = torch.log_softmax(forward_logits(t.model, batch.prompt_ids_of(i), y, False), -1).gather(-1, ys).sum()
        rho_initial.append(float(q - p0))
        rho_live.append(float(q - p1))
    assert out["delta"] == pytest.approx(sum(rho_initial) / 4, rel=1e-4)
    assert abs(sum(rho_live) / 4 - sum(rho_initial) / 4) > 1e-3


# -- VPD's M-step teacher options -------------------------------------------------------------------------

def test_vpd_refuses_a_frozen_m_step_teacher(make_trainer):
    from vpd_bench.errors import UserError
    with pytest.raises(UserError, match="frozen"):
        trainer_for(make_trainer, "vpd", ["method.teacher=frozen"])


def test_vpd_with_an_ema_teacher_moves_it_after_the_estep(make_trainer):
    """method.teacher=ema for VPD: the M-step reads a slow copy that follows the shared weights,
    E-step included: after an iteration, copy = (1 - tau) old copy + tau (weights after the E-step)."""
    import copy
    from _toy import step_on
    t = trainer_for(make_trainer, "vpd", ["method.teacher=ema", "method.teacher_tau=0.25", "method.estep_every=1",
                                          "train.lr=1e-2"])
    before = copy.deepcopy(dict(t.teacher.copy.named_parameters()))
    m = step_on(t, toy_batch(t))
    assert m["estep_loss"] is not None
    student = dict(t.model.named_parameters())
    moved = 0
    for name, p in t.teacher.copy.named_parameters():
        expected = 0.75 * before[name] + 0.25 * student[name].detach()
        assert torch.allclose(p, expected, atol=1e-6), name
        moved += int(not torch.equal(p, before[name]))
    assert moved > 0


# -- VPD's fused E-step (method.estep_fused) -------------------------------------------------------------

@pytest.mark.parametrize("graph", ["recompute", "keep"])
@pytest.mark.parametrize("micro_batch", [4, 2])
def test_fused_estep_takes_the_exact_estep_gradient_at_the_weights_before_the_m_step(make_trainer, monkeypatch,
                                                                                       micro_batch, graph):
    """estep_fused: one pass serves both steps. The M-step gradient is unchanged (teacher detached)
    and the E-step gradient equals the definition's, with log q and log pi taken at the weights the
    M-step started from; the E-step's own update follows the M-step's."""
    beta = 0.5
    common = ["method.estep_every=1", f"method.beta={beta}", "method.estep_buffer=current",
              f"train.micro_batch_size={micro_batch}"]
    t = trainer_for(make_trainer, "vpd", common + ["method.estep_fused=true", f"method.estep_fused_graph={graph}"])
    batch = toy_batch(t, rewards=(1.0, 0.0, 0.0, 1.0), rollout_shift=rollout_shift)
    t.build_teacher_context(batch)
    params = params_of(t.model)
    ref_m = reference_distillation_loss(t, batch, float(t.cfg.method.alpha), "topk")
    want_m = flat_gradient(torch.autograd.grad(ref_m, params, allow_unused=True), params)
    ref_e, ref_delta = reference_estep(t, batch, beta, None)
    want_e = flat_gradient(torch.autograd.grad(ref_e, params, allow_unused=True), params)
    steps = []

    def capture():
        steps.append(flat_gradient([p.grad for p in params], params))
        t.optimizer.zero_grad(set_to_none=True)
        return 0.0
    monkeypatch.setattr(t, "optimizer_step", capture)
    t.update_student(batch)
    out = t.method.after_update(batch, batch.step)
    assert len(steps) == 2                          # the M-step's update, then the E-step's
    assert_close_gradients(steps[0], want_m)
    assert_close_gradients(steps[1], want_e)
    assert out["delta"] == pytest.approx(ref_delta, rel=1e-4, abs=1e-6)
    assert out["estep_loss"] == pytest.approx(float(ref_e.detach()), rel=1e-4, abs=1e-6)


def test_fused_estep_is_refused_where_it_cannot_be_exact_about_its_inputs(make_trainer):
    from vpd_bench.errors import UserError
    with pytest.raises(UserError, match="estep_buffer=current"):
        trainer_for(make_trainer, "vpd", ["method.estep_fused=true"])          # default window buffer


def test_fused_vpd_runs_and_logs_its_estep(make_trainer):
    from _toy import step_on
    t = trainer_for(make_trainer, "vpd", ["method.estep_fused=true", "method.estep_buffer=current",
                                          "method.estep_every=2", "train.lr=1e-3"])
    first = step_on(t, toy_batch(t, step=1))
    second = step_on(t, toy_batch(t, step=2))
    assert "estep_loss" not in first and second["estep_loss"] is not None and second["estep_size"] == 4


# -- diagnostics that must not change training ---------------------------------------------------------

def test_stop_log_probs_are_the_eos_log_probs_of_failed_responses(make_trainer, monkeypatch):
    """stop_logp_student / stop_logp_teacher: on failed responses the student ended itself, the
    log-probability of their last token (the EOS) under the student and under the teacher."""
    t = trainer_for(make_trainer, "sdpo", ["method.teacher=live"])
    batch = toy_batch(t, rewards=(1.0, 0.0, 1.0, 0.0))
    batch.finish_reasons = ["eos", "eos", "eos", "length"]          # row 3 was cut: not counted
    monkeypatch.setattr(t, "optimizer_step", lambda: 0.0)
    t.build_teacher_context(batch)
    out = t.update_student(batch)
    y = batch.response_ids[1]
    ys = torch.tensor(y)[:, None]
    with torch.no_grad():
        s = torch.log_softmax(forward_logits(t.model, batch.prompt_ids_of(1), y, False), -1).gather(-1, ys)[-1, 0]
        q = torch.log_softmax(forward_logits(t.model, batch.teacher_prompt_ids[1], y, False), -1).gather(-1, ys)[-1, 0]
    assert out["stop_logp_student"] == pytest.approx(float(s), abs=1e-4)
    assert out["stop_logp_teacher"] == pytest.approx(float(q), abs=1e-4)
    assert out["stop_logp_student"] != pytest.approx(out["stop_logp_teacher"], abs=1e-3)


def test_estep_probe_reports_before_and_after_and_changes_nothing(make_trainer):
    from _toy import step_on
    runs = {}
    for probe in (0, 4):
        t = trainer_for(make_trainer, "vpd", [f"method.estep_probe={probe}", "method.estep_every=1", "train.lr=1e-3"],)
        outs = [step_on(t, toy_batch(t, step=s)) for s in (1, 2)]
        runs[probe] = outs
    assert [o["loss"] for o in runs[0]] == [o["loss"] for o in runs[4]]
    assert [o["estep_loss"] for o in runs[0]] == [o["estep_loss"] for o in runs[4]]
    assert "estep_probe_pass_before" not in runs[0][0]
    for key in ("estep_probe_pass_before", "estep_probe_pass_after", "estep_probe_len_before", "estep_probe_len_after"):
        assert runs[4][1][key] is not None
    assert 0.0 <= runs[4][1]["estep_probe_pass_after"] <= 1.0 and runs[4][1]["estep_probe_len_after"] > 0


def test_estep_probe_time_is_reported_apart_from_the_step_time(make_trainer, monkeypatch):
    """The probe is an instrument: its time goes to diagnostics_s, not to step_time_s, the
    teacher-update stage or the wall-clock budget that cost comparisons read. A fake clock that
    moves only inside the probe makes the accounting exact."""
    import time as _time
    t = trainer_for(make_trainer, "vpd", ["method.estep_probe=2", "method.estep_every=1"])
    clock = [100.0]
    monkeypatch.setattr(_time, "perf_counter", lambda: clock[0])

    def slow_probe(trainer, n):
        clock[0] += 10.0
        return {"pass": 0.0, "len": 1.0}
    monkeypatch.setattr(t.method, "_probe_run", slow_probe)
    m = t.train_step(1)
    assert m["diagnostics_s"] == 20.0                       # one probe before and one after the E-step
    assert m["teacher_update_s"] == 0.0 and m["step_time_s"] == 0.0 and t.wall_time == 0.0
    assert m["estep_probe_pass_before"] == 0.0 and m["estep_probe_len_after"] == 1.0


# -- distill_after_answer=false: the feedback-echo fix ------------------------------------------------

def with_answers(t, batch, answers):
    """Verdicts whose extracted answers are ``answers`` (None: no answer found), and the number of
    leading tokens each response keeps, found by decoding prefixes independently."""
    from tasks.base import Verdict
    batch.verdicts = [Verdict(float(r), "pass" if r >= 1 else "fail", extras={"extracted": a})
                      for r, a in zip(batch.rewards.tolist(), answers)]
    keep = []
    for ids, text, a in zip(batch.response_ids, batch.response_texts, answers):
        if a is None:
            keep.append(len(ids))
            continue
        end = text.rfind(a) + len(a)
        keep.append(next(k for k in range(1, len(ids) + 1)
                         if len(t.tokenizer.decode(ids[:k], skip_special_tokens=True)) >= end))
    return keep


def test_answer_end_is_the_last_occurrence_of_the_extracted_answer():
    from tasks.base import Verdict
    from vpd_bench.method import answer_end_char
    v = lambda a: Verdict(1.0, "pass", extras={"extracted": a})
    assert answer_end_char("9 + 9 = 18\n\nYour answer is correct.", v("18")) == 10
    assert answer_end_char("18 or 18.", v("18")) == 8             # the last occurrence
    assert answer_end_char("The answer is \\boxed{7}.", v("7")) == 22    # 14 + 7 characters come before the 7
    assert answer_end_char("no answer here", v(None)) is None
    assert answer_end_char("12", v("13")) is None                  # a cleaned answer not in the text
    assert answer_end_char("12", Verdict(0.0, "fail")) is None     # a verifier without `extracted` (code)


def test_tokens_through_counts_the_fewest_tokens_that_reach_the_answer(make_trainer):
    from vpd_bench.method import tokens_through
    tok = make_trainer("sdpo").tokenizer
    ids = tok.encode("12 + 30 = 42\n\nYour answer is correct.", add_special_tokens=False)
    k = tokens_through(tok, ids, len("12 + 30 = 42"))
    assert tok.decode(ids[:k], skip_special_tokens=True).startswith("12 + 30 = 42")
    assert not tok.decode(ids[:k - 1], skip_special_tokens=True).startswith("12 + 30 = 42")
    assert tokens_through(tok, ids, 10_000) == len(ids)


@pytest.mark.parametrize("method,extra,alpha,support", [
    ("sdpo", ["method.teacher=live"], 0.5, "full"),
    ("vpd", [], 1.0, "topk"),
    ("sdft", [], 0.0, "full"),
])
def test_distill_after_answer_false_scores_the_tokens_through_the_answer(make_trainer, method, extra, alpha, support):
    """Each response is distilled over its leading tokens up to the end of the extracted answer, and
    the token mean counts those only; a response without an answer is distilled whole."""
    t = trainer_for(make_trainer, method, extra + [f"method.alpha={alpha}", f"method.support={support}",
                                                   "method.topk=5", "method.distill_after_answer=false"])
    batch = toy_batch(t, rollout_shift=rollout_shift)          # "e tea", "xyz", "eel", "qqq"
    keep = with_answers(t, batch, ["e", "x", None, "q"])
    lengths = [len(r) for r in batch.response_ids]
    assert any(k < n for k, n in zip(keep, lengths)) and keep[2] == lengths[2]
    loss, _ = method_loss(t, batch)
    assert batch.extras["distill_keep"].tolist() == keep
    from vpd_bench.method import distill_prepare
    assert distill_prepare(t.method, batch)["distill_token_frac"] == pytest.approx(sum(keep) / sum(lengths))
    ref = reference_distillation_loss(t, batch, alpha, support, k=5, scored=keep)
    assert_same_value_and_gradient(t, loss, ref)
    whole = reference_distillation_loss(t, batch, alpha, support, k=5)
    assert abs(float(whole.detach()) - float(ref.detach())) > 1e-2 * abs(float(ref.detach()))


def test_distill_after_answer_false_ignores_what_the_teacher_wants_after_the_answer(make_trainer):
    """A teacher that changes only after the answer (where an echo would begin) changes SDPO's loss,
    and changes nothing with distill_after_answer=false."""
    def loss_with_teacher_shift(after_answer, shift):
        t = trainer_for(make_trainer, "sdpo", ["method.teacher=live", "method.support=full",
                                               f"method.distill_after_answer={after_answer}"])
        batch = toy_batch(t, rollout_shift=rollout_shift)
        keep = with_answers(t, batch, ["e", "x", "e", "q"])
        t.build_teacher_context(batch)
        t.method.prepare(batch)
        mb = t._micro_batch(batch, list(range(batch.num_responses)))
        plain = mb.teacher_logits_fn
        after = (torch.arange(plain().shape[1])[None, :] >= torch.tensor(keep)[:, None]).float()

        def shifted():
            logits = plain().clone()
            logits[..., 3] += shift * after          # one token made likelier only after the answer
            return logits
        mb.teacher_logits_fn = shifted
        return float(t.method.loss(mb).detach())

    assert loss_with_teacher_shift("true", 5.0) != pytest.approx(loss_with_teacher_shift("true", 0.0), rel=1e-4)
    assert loss_with_teacher_shift("false", 5.0) == pytest.approx(loss_with_teacher_shift("false", 0.0), rel=1e-6)
