"""TRL as a numerical reference for GRPO: one batch of prompts, completions and advantages goes
through TRL's own ``GRPOTrainer._compute_loss`` and through ours, and the loss and the gradient
must agree (same clipping, same normalisation, beta = 0), on-policy and with old log-probs that
make the clip bite. A change on either side that alters the objective is noticed here.

The mapping between the two (docs/method.md): our ``aggregation: token_mean`` is TRL's
``loss_type="bnpo"`` (one sum over every response token of the batch / their number),
``sequence_mean`` is TRL's ``"grpo"`` (each response's token mean, then the mean over responses).
TRL's own ``dr_grpo`` divides by ``batch x max_completion_length``, a constant we do not use.
"""
from __future__ import annotations

import pytest
import torch

from test_method_losses import (TEMPERATURE, assert_close_gradients, flat_gradient, method_loss, params_of,
                                trainer_for)
from _toy import toy_batch

# TRL is part of the test environment (bin/test installs the `bench` extra): no skip if it is missing
import trl  # noqa: E402,F401


def trl_trainer(t, tmp_path, loss_type, eps_low, eps_high, max_len):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=max_len, temperature=TEMPERATURE, beta=0.0, loss_type=loss_type,
                      epsilon=eps_low, epsilon_high=eps_high, num_iterations=1, steps_per_generation=1,
                      gradient_accumulation_steps=1, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                      logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = GRPOTrainer(model=t.model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * 4}), processing_class=t.tokenizer)
    trainer.current_gradient_accumulation_steps = 1     # set by TRL's training loop, which we do not run
    return trainer


def trl_inputs(t, batch, advantages, old=None):
    prompt = batch.prompt_ids_of(0)
    width = max(len(r) for r in batch.response_ids)
    completion = torch.full((4, width), t.pad_id, dtype=torch.long)
    mask = torch.zeros((4, width), dtype=torch.long)
    for i, r in enumerate(batch.response_ids):
        completion[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    inputs = {"prompt_ids": torch.tensor([prompt] * 4), "prompt_mask": torch.ones((4, len(prompt)), dtype=torch.long),
              "completion_ids": completion, "completion_mask": mask, "advantages": advantages.detach().clone(),
              "num_items_in_batch": mask.sum()}
    if old is not None:
        inputs["old_per_token_logps"] = old.detach().clone()
    return inputs, width


@pytest.mark.parametrize("aggregation,loss_type", [("token_mean", "bnpo"), ("sequence_mean", "grpo")])
@pytest.mark.parametrize("off_policy", [False, True])
def test_grpo_loss_and_gradient_equal_trls(make_trainer, tmp_path, aggregation, loss_type, off_policy):
    eps_low, eps_high = 0.2, 0.28
    t = trainer_for(make_trainer, "grpo", [f"method.aggregation={aggregation}", f"method.clip_low={eps_low}",
                                           f"method.clip_high={eps_high}"])
    batch = toy_batch(t, rewards=(1.0, 0.0, 0.0, 1.0))
    old = None
    if off_policy:                  # ratios 0.61, 1.1, 1.5, 0.95: the clip is active on two rows
        t.build_teacher_context(batch)
        t.method.prepare(batch)
        with torch.no_grad():
            current = t._micro_batch(batch, [0, 1, 2, 3]).student_token_logp()
        old = current + torch.tensor([-0.5, 0.1, 0.4, -0.05])[:, None]
    ours, mb = method_loss(t, batch, old_logp=old)
    params = params_of(t.model)
    ours_grad = flat_gradient(torch.autograd.grad(ours, params, allow_unused=True), params)

    advantages = batch.extras["advantages"]
    inputs, width = trl_inputs(t, batch, advantages, None if old is None else old * mb.response_mask)
    trainer = trl_trainer(t, tmp_path, loss_type, eps_low, eps_high, width)
    t.model.train()
    theirs = trainer._compute_loss(t.model, inputs)
    theirs_grad = flat_gradient(torch.autograd.grad(theirs, params, allow_unused=True), params)

    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-4, abs=1e-7)
    assert_close_gradients(ours_grad, theirs_grad, tol=1e-4)
    assert float(ours_grad.norm()) > 0


def test_the_aggregations_differ_so_the_mapping_is_tested(make_trainer, tmp_path):
    """On responses of unequal length token_mean and sequence_mean give different losses: the
    parity above could not pass with the two TRL loss types swapped."""
    losses = {}
    for aggregation in ("token_mean", "sequence_mean"):
        t = trainer_for(make_trainer, "grpo", [f"method.aggregation={aggregation}"])
        batch = toy_batch(t, rewards=(1.0, 0.0, 0.0, 1.0))
        assert len({len(r) for r in batch.response_ids}) > 1
        losses[aggregation] = float(method_loss(t, batch)[0].detach())
    assert losses["token_mean"] != pytest.approx(losses["sequence_mean"], rel=1e-3)
