"""Method behaviour on fixed toy batches: VPD's E-step, teacher copies, degenerate batches."""
import copy

import pytest
import torch

from _toy import step_on, toy_batch  # noqa: F401


def gain(trainer, batch):
    """teacher gain on the batch with the current weights: mean (log q - log pi) on successes minus failures."""
    t = trainer
    items = range(batch.num_responses)
    with torch.no_grad():
        q = t.sequence_log_probs(t.model, [batch.teacher_prompt_ids[i] for i in items], batch.response_ids)
        p = t.sequence_log_probs(t.model, [batch.prompt_ids_of(i) for i in items], batch.response_ids)
    d = q - p
    s = batch.rewards >= 1
    return float(d[s].mean() - d[~s].mean())


def test_repeated_esteps_raise_teacher_gain(make_trainer):
    t = make_trainer("vpd", feedback="env", overrides=["method.estep_every=1", "train.lr=1e-3"])
    batch = toy_batch(t)
    t.build_teacher_context(batch)
    gains = [gain(t, batch)]
    t.method._remember(batch)
    losses = []
    for _ in range(8):
        out = t.method.e_step()
        losses.append(out["estep_loss"])
        gains.append(gain(t, batch))
    assert out["estep_size"] == 4
    rises = sum(b > a for a, b in zip(gains, gains[1:]))
    assert rises >= 6 and gains[-1] > gains[0] + 0.1, gains
    assert losses[-1] < losses[0], losses


def test_estep_prior_student_gets_no_gradient(make_trainer, monkeypatch):
    """With prior=student the prior term is scored under no_grad: the E-step gradient equals the
    gradient of the teacher term alone."""
    t = make_trainer("vpd", feedback="env", overrides=["method.estep_every=1"])
    batch = toy_batch(t)
    t.build_teacher_context(batch)
    t.method._remember(batch)
    seen = []
    original = t.sequence_log_probs

    def spy(model, prompts, responses, norm="sum"):
        out = original(model, prompts, responses, norm)
        seen.append((prompts[0] == batch.prompt_ids[0], out.requires_grad))
        return out
    monkeypatch.setattr(t, "sequence_log_probs", spy)
    monkeypatch.setattr(t, "optimizer_step", lambda: 0.0)
    t.method.e_step()
    student_calls = [g for is_student, g in seen if is_student]
    teacher_calls = [g for is_student, g in seen if not is_student]
    assert student_calls and not any(student_calls)
    # several E-step micro-batches: a forward-only pass gives delta its batch mean first, then every
    # micro-batch is scored again with a graph
    assert sum(teacher_calls) == len(student_calls) and len(teacher_calls) == 2 * len(student_calls)


def test_estep_delta_follows_running_mean(make_trainer):
    t = make_trainer("vpd", feedback="env", overrides=["method.estep_every=1", "train.lr=0"])
    batch = toy_batch(t)
    t.build_teacher_context(batch)
    t.method._remember(batch)
    first = t.method.e_step()["delta"]
    second = t.method.e_step()["delta"]        # lr = 0: same rho, so delta stays at the same mean
    assert first == pytest.approx(second, abs=1e-6)


def test_estep_with_one_class_uses_that_term_and_warns(make_trainer, caplog):
    t = make_trainer("vpd", feedback="env", overrides=["method.estep_every=1"])
    batch = toy_batch(t, rewards=(0.0, 0.0, 0.0, 0.0))
    m = step_on(t, batch)
    assert m["estep_loss"] is not None and m["estep_success_frac"] == 0.0
    assert "only one class" in caplog.text


def test_every_teacher_masked_gives_zero_distillation_loss(make_trainer, caplog):
    t = make_trainer("sdpo", feedback="env")
    batch = toy_batch(t, with_feedback=False)
    m = step_on(t, batch)
    assert m["loss"] == 0.0 and "lacks a teacher signal" in caplog.text


def test_all_flat_groups_give_grpo_no_signal(make_trainer, caplog):
    t = make_trainer("grpo")
    batch = toy_batch(t, rewards=(1.0, 1.0, 1.0, 1.0))
    m = step_on(t, batch)
    assert m["no_signal_frac"] == 1.0 and m["loss"] == 0.0 and "no signal" in caplog.text


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def test_teacher_copies(make_trainer):
    """SDPO with ema holds exactly one extra copy; VPD and live SDPO hold none."""
    sdpo = make_trainer("sdpo")
    assert sdpo.teacher.name == "ema" and sdpo.teacher.extra_copies == 1
    assert count_params(sdpo.teacher.copy) == count_params(sdpo.model)
    vpd = make_trainer("vpd")
    assert vpd.teacher.name == "trained" and vpd.teacher.extra_copies == 0 and not hasattr(vpd.teacher, "copy")
    assert vpd.method.initial_prior is None
    assert make_trainer("vpd", overrides=["method.prior=initial"]).method.initial_prior is not None
    opsd = make_trainer("opsd")
    assert opsd.teacher.name == "frozen" and opsd.teacher.extra_copies == 1


def test_ema_teacher_moves_at_rate_tau(make_trainer):
    t = make_trainer("sdpo", overrides=["method.teacher_tau=0.05", "train.lr=1e-2"])
    before = copy.deepcopy(dict(t.teacher.copy.named_parameters()))
    batch = toy_batch(t)
    step_on(t, batch)
    student = dict(t.model.named_parameters())
    for name, p in t.teacher.copy.named_parameters():
        expected = 0.95 * before[name] + 0.05 * student[name].detach()
        assert torch.allclose(p, expected, atol=1e-6), name


def test_frozen_teacher_never_moves(make_trainer):
    t = make_trainer("opsd", overrides=["train.lr=1e-2"])
    before = copy.deepcopy(t.teacher.copy.state_dict())
    step_on(t, toy_batch(t))
    for k, v in t.teacher.copy.state_dict().items():
        assert torch.equal(v, before[k])


def test_sdft_teacher_reads_the_reference_not_feedback(make_trainer):
    t = make_trainer("sdft")
    batch = toy_batch(t)
    t.build_teacher_context(batch)
    ref = batch.problems[0].reference
    assert all(ref in text for text in batch.teacher_prompt_texts)
    assert not any("wrong" in text for text in batch.teacher_prompt_texts)


def test_grpo_ignores_feedback_and_builds_no_teacher(make_trainer):
    t = make_trainer("grpo")
    assert t.teacher is None
    batch = toy_batch(t)
    t.build_teacher_context(batch)
    assert not batch.teacher_mask.any()


def test_micro_batching_does_not_change_the_gradient(make_trainer, monkeypatch):
    """Gradient accumulation over micro-batches gives the full-batch gradient (whole-batch normalisers)."""
    grads = []
    for size in (4, 1):
        t = make_trainer("grpo_sdpo", overrides=[f"train.micro_batch_size={size}", "method.teacher=live"])
        monkeypatch.setattr(t, "optimizer_step", lambda: 0.0)     # keep the accumulated gradient
        batch = toy_batch(t)
        t.build_teacher_context(batch)
        t.update_student(batch)
        grads.append(torch.cat([p.grad.flatten() for p in t.model.parameters()]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-7)


def test_lora_teachers_hold_adapter_copies_only(make_trainer):
    """Under LoRA, EMA keeps a copy of the adapter weights only and frozen is the base model with the
    adapter switched off (no copy); a step runs and moves only adapter weights."""
    t = make_trainer("sdpo", overrides=["train.lora.enabled=true", "train.lora.r=4", "train.lr=1e-2"])
    assert t.teacher.copy is None and t.teacher.adapter
    assert all("lora_" in n for n in t.teacher.adapter)
    base_before = {n: p.detach().clone() for n, p in t.model.named_parameters() if "lora_" not in n}
    step_on(t, toy_batch(t))
    for n, p in t.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n
    frozen = make_trainer("opsd", overrides=["train.lora.enabled=true", "train.lora.r=4"])
    assert frozen.teacher.extra_copies == 0 and frozen.teacher.copy is None
    step_on(frozen, toy_batch(frozen))


@pytest.mark.parametrize("support,alpha", [("full", 0.0), ("sampled", 1.0), ("topk", 0.5)])
def test_every_divergence_support_trains(make_trainer, support, alpha):
    t = make_trainer("sdpo", overrides=[f"method.support={support}", f"method.alpha={alpha}", "method.teacher=live"])
    m = step_on(t, toy_batch(t))
    assert m["loss"] == m["loss"] and m["grad_norm"] > 0 and m["divergence"] is not None


def test_sampled_support_rejects_forward_kl(make_trainer):
    t = make_trainer("sdpo", overrides=["method.support=sampled", "method.alpha=0.0"])
    with pytest.raises(ValueError, match="reverse KL"):
        step_on(t, toy_batch(t))


def test_trust_region_teacher_mixes_frozen_and_live_logits(make_trainer):
    t = make_trainer("sdpo", overrides=["method.teacher=trust_region", "method.teacher_tau=0.25", "train.lr=1e-2"])
    step_on(t, toy_batch(t))                      # the live weights move away from the frozen copy
    from vpd_bench.rollout.scoring import pack, response_logits
    packed = pack([[1, 2, 3]], [[4, 5]], t.pad_id)
    with torch.no_grad():
        mixed = t.teacher.logits(packed, 1.0, False)
        frozen = response_logits(t.teacher.copy, packed)
        live = response_logits(t.model, packed)
    assert torch.allclose(mixed, 0.75 * frozen + 0.25 * live, atol=1e-5)
    assert not torch.allclose(frozen, live)


def test_grpo_with_kl_penalty_and_several_ppo_epochs(make_trainer):
    t = make_trainer("grpo", overrides=["method.kl_coef=0.1", "method.ppo_epochs=2", "train.lr=1e-2"])
    assert t.reference is not None
    m = step_on(t, toy_batch(t))
    assert m["clip_frac"] is not None and m["loss"] == m["loss"]


def test_estep_batches_by_group_keep_a_problems_rows_together_within_the_budget():
    """method.estep_batching=group: rows with the same student prompt (one problem's samples) share a
    micro-batch wherever the group fits, groups shortest first; the padded-token budget still holds."""
    from vpd_bench.methods.vpd import VPD
    # three problems (prompts a, b, c), rows interleaved in the buffer; teacher widths differ per row
    spec = [("a", 30), ("b", 12), ("a", 34), ("c", 60), ("b", 10), ("a", 32), ("c", 58), ("b", 14)]
    items = [{"prompt": [ord(p)] * 10, "response": [0] * 10, "teacher_prompt": [0] * n} for p, n in spec]
    budget = 8 * 20
    grouped = VPD._token_budget_batches(items, micro_batch_size=8, by_group=True)
    assert sorted(i for b in grouped for i in b) == list(range(len(items)))
    for b in grouped:
        widest = max(len(items[i]["teacher_prompt"]) + len(items[i]["response"]) for i in b)
        assert len(b) == 1 or len(b) * widest <= budget
    # b (widths 20-24) then a (40-44) then c (68-70); a group that does not fit beside another starts
    # a new micro-batch (b + a would be 6 x 44 > 160) and c alone (2 x 70 = 140) fits in one
    assert grouped == [[4, 1, 7], [0, 5, 2], [6, 3]]
    by_length = VPD._token_budget_batches(items, micro_batch_size=8, by_group=False)
    assert any(len({items[i]["prompt"][0] for i in b}) > 1 for b in by_length)    # length order mixes problems
    # a group wider than the budget on its own is split in order, never dropped
    big = [{"prompt": [1] * 10, "response": [0] * 10, "teacher_prompt": [0] * 70} for _ in range(5)]
    split = VPD._token_budget_batches(big, micro_batch_size=8, by_group=True)
    assert split == [[0, 1], [2, 3], [4]]


def test_estep_batches_by_group_run_fewer_tokens_on_prompts_shaped_like_the_math_tasks():
    """Teacher prompts = system prompt, the problem and its demonstration, then each row's own
    feedback: rows of one problem share far more than rows of different problems, so group-aligned
    micro-batches run fewer positions through the model (``scoring.tokens_run``, the cost that
    ``response_logits`` pays), for the prior's student prompts and for the teacher prompts alike."""
    import random
    from vpd_bench.methods.vpd import VPD
    from vpd_bench.rollout.scoring import pack, tokens_run
    rng = random.Random(0)
    system = list(range(1, 25))                          # 24 tokens every prompt begins with
    items = []
    for step in range(5):                                # a window buffer: 5 iterations x 4 problems x 4 rows
        for prob in range(4):
            problem = [rng.randrange(100, 1000) for _ in range(20)]
            demo = [rng.randrange(100, 1000) for _ in range(12)]
            for row in range(4):
                response = [rng.randrange(100, 1000) for _ in range(rng.randrange(8, 40))]
                feedback = [rng.randrange(100, 1000) for _ in range(rng.randrange(3, 8))]
                items.append({"prompt": system + problem, "response": response,
                              "teacher_prompt": system + problem + demo + feedback})
    rng.shuffle(items)

    def cost(batches, key):
        return sum(tokens_run(pack([items[i][key] for i in b], [items[i]["response"] for i in b], 0)) for b in batches)
    grouped = VPD._token_budget_batches(items, micro_batch_size=8, by_group=True)
    by_length = VPD._token_budget_batches(items, micro_batch_size=8, by_group=False)
    assert cost(grouped, "teacher_prompt") < 0.85 * cost(by_length, "teacher_prompt")
    assert cost(grouped, "prompt") < 0.95 * cost(by_length, "prompt")
    # tokens_run itself: one shared prompt of 44 tokens + 4 rows x 9 response positions, against 4 full rows
    four = pack([system + [7] * 20] * 4, [[5] * 10] * 4, 0)
    assert tokens_run(four) == 44 + 4 * 9 and tokens_run(four, share_prompts=False) == 4 * (44 + 10)


def test_estep_batches_respect_the_m_step_token_budget():
    from vpd_bench.methods.vpd import VPD
    items = [{"prompt": [0] * 10, "response": [0] * 10, "teacher_prompt": [0] * n} for n in (30, 30, 5, 70, 10)]
    batches = VPD._token_budget_batches(items, micro_batch_size=4)      # budget 4 * 20 = 80 padded tokens
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    for b in batches:
        widest = max(len(items[i]["teacher_prompt"]) + len(items[i]["response"]) for i in b)
        assert len(b) == 1 or len(b) * widest <= 80
    # shortest first (widths 15, 20, 40, 40, 80): similar widths share a micro-batch
    assert batches == [[2, 4], [0, 1], [3]]
