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
