"""The HF engine and scoring: reproducible sampling, shared prompts, and log-probs that agree."""
import pytest
import torch

from vpd_bench.rollout.engine import HFEngine, sampling_filter
from vpd_bench.models.loading import build_tiny_random
from vpd_bench.rollout.scoring import pack, response_logits, token_log_probs


@pytest.fixture(scope="module")
def tiny():
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(__import__("vpd_bench.config", fromlist=["CONF_DIR"]).CONF_DIR / "model" / "tiny-random.yaml")
    loaded = build_tiny_random(cfg)
    loaded.model.eval()
    return loaded


def prompts(tok):
    texts = ["Write a word with the letter a.", "Hi", "A longer prompt that needs left padding here."]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True), add_special_tokens=False) for t in texts]


def test_same_seed_same_samples(tiny):
    e = HFEngine(tiny.model, tiny.tokenizer)
    a = e.generate(prompts(tiny.tokenizer), 3, 10, seed=5)
    b = e.generate(prompts(tiny.tokenizer), 3, 10, seed=5)
    c = e.generate(prompts(tiny.tokenizer), 3, 10, seed=6)
    assert a.response_ids == b.response_ids and a.logprobs == b.logprobs
    assert a.response_ids != c.response_ids
    assert len(a.response_ids) == 9


def test_greedy_matches_plain_generate_with_and_without_sharing(tiny):
    tok, model = tiny.tokenizer, tiny.model
    ps = prompts(tok)
    outs = []
    for share, drop in [(True, True), (False, False), (True, False)]:
        outs.append(HFEngine(model, tok, share, drop).generate(ps, 2, 8, greedy=True).response_ids)
    assert outs[0] == outs[1] == outs[2]
    for i, p in enumerate(ps):
        ref = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
        got = outs[0][2 * i]
        assert got == ref[:len(got)]


def test_rollout_logprobs_match_scoring(tiny):
    """The per-token log-probs the engine returns are those the trainer recomputes (importance ratio 1)."""
    tok, model = tiny.tokenizer, tiny.model
    ps = prompts(tok)
    g = HFEngine(model, tok).generate(ps, 2, 12, temperature=0.7, seed=1)
    expanded = [p for p in ps for _ in range(2)]
    packed = pack(expanded, g.response_ids, tok.pad_token_id)
    with torch.no_grad():
        lp = token_log_probs(response_logits(model, packed, temperature=0.7), packed.response_ids)
    for i, r in enumerate(g.response_ids):
        assert torch.allclose(lp[i, :len(r)], torch.tensor(g.logprobs[i]), atol=1e-4)


def test_finished_rows_stop_and_are_reported(tiny):
    tok = tiny.tokenizer
    g = HFEngine(tiny.model, tok).generate(prompts(tok), 4, 30, seed=2)
    for ids, reason in zip(g.response_ids, g.finish_reasons):
        assert reason in ("eos", "length")
        if reason == "eos":
            assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        else:
            assert len(ids) == 30


def test_a_stop_string_ends_the_response_where_it_first_appears(tiny):
    tok = tiny.tokenizer
    engine = HFEngine(tiny.model, tok)
    free = engine.generate(prompts(tok)[:1], 1, 24, seed=3, ignore_eos=True).response_ids[0]
    texts = [tok.decode(free[:k + 1], skip_special_tokens=False) for k in range(len(free))]
    # a stop string the sampled response first contains after a few tokens (same seed, same draws)
    k = next(k for k in range(3, len(free)) if tok.decode([free[k]]).strip()
             and tok.decode([free[k]]).strip() not in texts[k - 1])
    stop = tok.decode([free[k]]).strip()
    g = engine.generate(prompts(tok)[:1], 1, 24, seed=3, ignore_eos=True, stop=[stop])
    assert g.finish_reasons == ["stop"]
    assert g.response_ids[0] == free[:k + 1]          # cut right after it, the stop string kept
    assert stop in tok.decode(g.response_ids[0]) and stop not in texts[k - 1]


def test_packed_scoring_equals_unpadded(tiny):
    tok, model = tiny.tokenizer, tiny.model
    ps = prompts(tok)
    rs = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    packed = pack(ps, rs, tok.pad_token_id)
    with torch.no_grad():
        batched = token_log_probs(response_logits(model, packed), packed.response_ids)
        for i, (p, r) in enumerate(zip(ps, rs)):
            single = pack([p], [r], tok.pad_token_id)
            one = token_log_probs(response_logits(model, single), single.response_ids)[0]
            assert torch.allclose(batched[i, :len(r)], one, atol=1e-4)
    assert packed.response_mask.sum(1).tolist() == [3, 1, 5]


def test_sampling_filter_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(sampling_filter(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: keep the smallest prefix whose mass reaches 0.7 -> tokens 0 and 1
    assert torch.isinf(sampling_filter(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(sampling_filter(logits, top_p=0.9)).tolist() == [[False, False, False, True]]


def teacher_like_prompts(tok):
    """A group's teacher prompts: one long common beginning (problem + demonstration), then each
    row's own feedback of a different length; plus one unrelated prompt."""
    head = "Problem: add 12 and 30. Here is a correct solution: 12 + 30 = 42. Feedback on your attempt: "
    tails = ["your answer 41 is wrong.", "no.", "the answer 40 is incorrect; check the carry."]
    texts = [head + t for t in tails] + ["Something else entirely."]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True), add_special_tokens=False) for t in texts]


def scored_shared_and_unshared(model, packed):
    """([log-probs shared, unshared], [gradients shared, unshared]) of the masked response log-probs,
    the model in train mode for the two passes and left clean after them."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    try:
        lps, grads = [], []
        for share in (True, False):
            model.zero_grad(set_to_none=True)
            lp = token_log_probs(response_logits(model, packed, share_prompts=share), packed.response_ids)
            (lp * packed.response_mask).sum().backward()
            grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                    for p in params]).clone())
            lps.append(lp.detach() * packed.response_mask)
        return lps, grads
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_shared_prefix_scoring_equals_unshared_with_gradients(tiny, monkeypatch):
    """Rows with different prompts that begin alike run the common prefix once: the response
    log-probs and their gradients equal scoring every row in full, and the prefix path is taken."""
    import vpd_bench.rollout.scoring as S
    tok, model = tiny.tokenizer, tiny.model
    ps = teacher_like_prompts(tok)
    rs = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    packed = pack(ps, rs, tok.pad_token_id)
    found = S._shared_prefixes(packed)
    assert found is not None
    _, group_of, lengths = found
    assert group_of[0] == group_of[1] == group_of[2] != group_of[3] and lengths[group_of[0]] > 40
    assert lengths[group_of[3]] == 0
    calls = []
    real = S._shared_prefix_logits
    monkeypatch.setattr(S, "_shared_prefix_logits", lambda *a: calls.append(1) or real(*a))
    lps, grads = scored_shared_and_unshared(model, packed)
    assert calls == [1]
    assert torch.allclose(lps[0], lps[1], atol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)


def test_where_identical_and_prefix_sharing_both_apply_the_cheaper_runs_and_scores_the_same(tiny, monkeypatch):
    """A teacher micro-batch where two rows got the same feedback (identical prompts) and the others
    differ only in their last lines: the prefix path runs fewer prompt tokens, so it is taken, and
    the log-probs and gradients equal scoring every row in full. A student group (all prompts
    identical) keeps the identical-prompt path."""
    import vpd_bench.rollout.scoring as S
    tok, model = tiny.tokenizer, tiny.model
    ps = teacher_like_prompts(tok)[:3]
    ps = [ps[0], ps[0], ps[1], ps[2]]                      # rows 0 and 1: the same feedback
    rs = [[5, 6, 7], [8, 9], [9, 10, 11, 12, 13], [14, 15]]
    packed = pack(ps, rs, tok.pad_token_id)
    shared, prefixes = S._shared_prompts(packed), S._shared_prefixes(packed)
    assert shared is not None and prefixes is not None
    assert S._prefix_saving(prefixes) > S._identical_saving(packed, shared) == len(ps[0])
    taken = []
    real_prefix, real_identical = S._shared_prefix_logits, S._shared_prompt_logits
    monkeypatch.setattr(S, "_shared_prefix_logits", lambda *a: taken.append("prefix") or real_prefix(*a))
    monkeypatch.setattr(S, "_shared_prompt_logits", lambda *a: taken.append("identical") or real_identical(*a))
    lps, grads = scored_shared_and_unshared(model, packed)
    assert taken == ["prefix"]
    assert torch.allclose(lps[0], lps[1], atol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)
    student = pack([ps[2]] * 4, rs, tok.pad_token_id)    # a group's student prompts: all identical
    taken.clear()
    with torch.no_grad():
        response_logits(model, student)
    assert taken == ["identical"]


def test_short_common_prefixes_are_not_shared(tiny):
    tok = tiny.tokenizer
    ps = [tok.encode(t) for t in ["ab one", "ab two", "ab three"]]
    packed = pack(ps, [[5], [6], [7]], tok.pad_token_id)
    from vpd_bench.rollout.scoring import _shared_prefixes
    assert _shared_prefixes(packed) is None


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
def test_scores_keep_float64_and_upcast_half_precision(tiny, dtype, expected):
    """Logits come back in float32 from a bf16 model and in float64 from a float64 one (rounding a
    float64 model's scores to float32 would put float32 noise into every loss downstream), on the
    plain, the shared-prompt and the shared-prefix paths alike; float64 scores equal float32 ones."""
    import copy
    tok = tiny.tokenizer
    model = copy.deepcopy(tiny.model).to(dtype)
    ps = prompts(tok)
    cases = {"plain": (ps, [[5, 6, 7], [8], [9, 10, 11, 12, 13]]),
             "shared prompt": ([ps[0]] * 3, [[5, 6, 7], [8], [9, 10]]),
             "shared prefix": (teacher_like_prompts(tok), [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]])}
    for name, (p, r) in cases.items():
        packed = pack(p, r, tok.pad_token_id)
        with torch.no_grad():
            logits = response_logits(model, packed)
            ref = response_logits(tiny.model, packed)
        assert logits.dtype == expected, name
        if dtype == torch.float64:
            assert torch.allclose(logits.float(), ref, atol=1e-4), name
