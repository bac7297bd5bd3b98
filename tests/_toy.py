"""Toy rollout batches for method tests (shared by test_methods.py and test_method_losses.py)."""
import torch

from vpd_bench.rollout.batch import RolloutBatch


def toy_batch(trainer, step=1, rewards=(1.0, 0.0, 1.0, 0.0), with_feedback=True, rollout_shift=None, problem=0):
    """A fixed batch: one prompt, four responses, two successes and two failures, each with its own
    feedback text; the successes read 'correct' feedback, the failures 'wrong'.

    ``rollout_shift(i, t)`` is added to the rollout log-prob of token t of response i, so that the
    rollout policy differs from the student and importance weights are not all 1. ``problem``: which
    training problem (an index) the batch is about."""
    tok = trainer.tokenizer
    prob = trainer.train_problems[problem]
    prompt = trainer.encode_prompt(trainer.task.render_prompt(prob))
    texts = ["e tea", "xyz", "eel", "qqq"]
    b = RolloutBatch(step=step, group_size=4, problems=[prob], prompt_texts=[""], prompt_ids=[prompt])
    b.response_ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    b.response_texts = texts
    with torch.no_grad():
        lp = trainer.sequence_log_probs(trainer.model, [prompt] * 4, b.response_ids)  # only to shape; per-token below
    from vpd_bench.rollout.scoring import pack, response_logits, token_log_probs
    packed = pack([prompt] * 4, b.response_ids, trainer.pad_id)
    with torch.no_grad():
        tl = token_log_probs(response_logits(trainer.model, packed, float(trainer.cfg.rollout.temperature)),
                              packed.response_ids)
    shift = rollout_shift or (lambda i, t: 0.0)
    b.rollout_logp = [[float(tl[i, t]) + shift(i, t) for t in range(len(r))] for i, r in enumerate(b.response_ids)]
    b.finish_reasons = ["eos"] * 4
    b.rewards = torch.tensor(rewards)
    b.statuses = ["pass" if r >= 1 else "fail" for r in rewards]
    b.verdict_feedback = ["The answer is correct." if r >= 1 else "The answer is wrong." for r in rewards] \
        if with_feedback else [""] * 4
    assert lp.shape == (4,)
    return b


def step_on(trainer, batch):
    trainer.build_teacher_context(batch)
    m = trainer.update_student(batch)
    m.update(trainer.method.after_update(batch, batch.step))
    return m


def sharpen(model, seed: int = 0, gain: float = 15.0) -> None:
    """The tiny random model is nearly uniform over its vocabulary and barely reads its context
    (logit std ~0.2). Re-draw its projections at unit gain and sharpen its output (in place), so
    that its distribution depends on the prompt at first order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0.0, p.shape[1] ** -0.5, generator=g)
        model.model.norm.weight.mul_(gain)
