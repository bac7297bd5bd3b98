"""Generation engines. The HF engine is our own sampling loop over a transformers model:
each prompt is encoded once and its KV cache shared by its G samples, finished rows leave the
decode batch, and the log-prob of every sampled token is returned. Seeded and reproducible.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch


@dataclass
class Generation:
    response_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]


def sampling_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the top-k / nucleus; returns logits with -inf where excluded."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        drop = cum - probs > top_p          # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


def _sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row from ``probs`` [n, V] by inverse-CDF sampling: one uniform per row
    instead of the V exponentials ``torch.multinomial`` draws (which was ~8% of a CPU decode
    step). The cumulative sum runs in float64 so tail tokens keep their probability."""
    cdf = probs.detach().cpu().double().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    # u < total mass, so searchsorted lands inside; the clamp only guards rounding at the top,
    # and zero-probability tokens (filtered out) are never picked because their cdf step is 0
    return tok.clamp_(max=cdf.shape[1] - 1)


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class HFEngine:
    """Sampling loop with a shared-prompt KV cache. Works on CPU and on one GPU."""

    name = "hf"

    def __init__(self, model, tokenizer, prompt_sharing: bool = True, drop_finished: bool = True,
                 autocast_bf16: bool = False, dtype: str | torch.dtype | None = None):
        """``dtype``: the weights the decode loop reads. None (or the model's own dtype) decodes
        with the training model itself; ``bfloat16`` decodes from a bf16 copy of the parameters,
        re-synced before a ``generate`` call whenever the training weights changed. On CPU decoding
        is memory-bound, so half the bytes per step is about twice the tokens/s; the rollout
        log-probs then drift from the float32 scoring ones (benchmarks/README.md measures it)."""
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_sharing = prompt_sharing
        self.drop_finished = drop_finished
        self.autocast_bf16 = autocast_bf16
        if isinstance(dtype, str):
            dtype = None if dtype in ("", "auto", "none", "null") else getattr(torch, dtype)
        self.dtype = dtype
        self._decoder = None            # the low-precision copy, built on first use
        self._decoder_pairs: list = []  # (training parameter, copy parameter)
        self._decoder_version = None
        # transformers >= 5.2x names the KV cache `cache`; older releases `past_key_values`
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        eos = tokenizer.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            self.eos_ids |= set([gen_eos] if isinstance(gen_eos, int) else gen_eos)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _decode_model(self):
        """The module the decode loop runs: the training model, or its synced low-precision copy."""
        params = list(self.model.parameters())
        if self.dtype is None or all(p.dtype == self.dtype for p in params):
            return self.model
        if self._decoder is None:
            # deepcopy with the parameters pre-seeded in the memo: no float32 duplicate is ever
            # made, tied weights stay tied, buffers (e.g. rotary inv_freq) keep their dtype
            memo = {id(p): torch.nn.Parameter(p.detach().to(self.dtype), requires_grad=False) for p in params}
            self._decoder = copy.deepcopy(self.model, memo).eval()
            if self.device.type == "cpu" and hasattr(self._decoder, "set_attn_implementation"):
                try:   # torch's CPU flash kernel is slow for one bf16 query row; eager is ~25% faster
                    self._decoder.set_attn_implementation("eager")
                except (ValueError, ImportError, AttributeError):
                    pass
            self._decoder_pairs = [(p, memo[id(p)]) for p in params]
            self._decoder_version = self._weights_version()
            return self._decoder
        version = self._weights_version()
        if version != self._decoder_version:        # optimizer steps bump the tensors' versions
            with torch.no_grad():
                for src, dst in self._decoder_pairs:
                    dst.copy_(src)
            self._decoder_version = version
        return self._decoder

    def _weights_version(self):
        return tuple((id(p), p._version) for p, _ in self._decoder_pairs) or None

    def _forward(self, cache=None, model=None, **kw):
        model = model if model is not None else self.model
        if cache is not None:
            kw[self._cache_kw] = cache
        if self.autocast_bf16 and self.dtype is None:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return model(**kw)
        return model(**kw)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, stop: list[str] | tuple = (), seed: int = 0,
                 greedy: bool = False, ignore_eos: bool = False) -> Generation:
        """Sample ``n`` responses for each prompt; results are ordered prompt by prompt.

        ``ignore_eos``: never stop at EOS (every response gets ``max_new_tokens`` tokens unless a
        stop string ends it): fixed-length generation for throughput benchmarks."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self._generate(prompts, n, max_new_tokens, temperature, top_p, top_k, list(stop), seed, greedy,
                                  ignore_eos)
        finally:
            self.model.train(was_training)

    def _generate(self, prompts, n, max_new_tokens, temperature, top_p, top_k, stop, seed, greedy, ignore_eos=False):
        device = self.device
        model = self._decode_model()
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if not self.prompt_sharing:                       # baseline behaviour: every sample re-encodes
            prompts, n_share = [p for p in prompts for _ in range(n)], 1
        else:
            n_share = n
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attn = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        ids, attn = ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                            model=model)
        cache, logits = _cache_of(out), out.logits[:, -1].float()
        if n_share > 1:
            cache.batch_repeat_interleave(n_share)
            logits = logits.repeat_interleave(n_share, 0)
            attn = attn.repeat_interleave(n_share, 0)
            pos = pos.repeat_interleave(n_share, 0)
        total = logits.shape[0]
        next_pos = pos[:, -1:] + 1
        active = torch.arange(total, device=device)
        tokens: list[list[int]] = [[] for _ in range(total)]
        logps: list[list[float]] = [[] for _ in range(total)]
        reasons = ["length"] * total
        finished: set[int] = set()
        eos = torch.tensor(sorted(self.eos_ids), device=device) if self.eos_ids and not ignore_eos else None
        for t in range(max_new_tokens):
            scaled = logits / max(temperature, 1e-6) if not greedy else logits
            logp_all = torch.log_softmax(scaled, dim=-1)
            if greedy:
                tok = scaled.argmax(-1)
            else:
                if top_k or top_p < 1.0:
                    probs = torch.softmax(sampling_filter(scaled, top_k, top_p), dim=-1)
                else:
                    probs = logp_all.exp()
                tok = _sample(probs, gen).to(device)
            tok_logp = logp_all.gather(-1, tok[:, None]).squeeze(-1)
            done = torch.isin(tok, eos) if eos is not None else torch.zeros_like(tok, dtype=torch.bool)
            tok_l, lp_l, act_l = tok.tolist(), tok_logp.tolist(), active.tolist()
            done_l = done.tolist()
            for j, row in enumerate(act_l):
                if row in finished:         # only when finished rows are kept in the batch
                    done_l[j] = True
                    continue
                tokens[row].append(tok_l[j])
                logps[row].append(lp_l[j])
                if done_l[j]:
                    reasons[row] = "eos"
                elif stop:
                    tail = self.tokenizer.decode(tokens[row][-16:], skip_special_tokens=False)
                    if any(s in tail for s in stop):
                        done_l[j] = True
                        reasons[row] = "stop"
                if done_l[j]:
                    finished.add(row)
            if all(done_l) or t == max_new_tokens - 1:
                break
            if self.drop_finished and any(done_l):
                keep_idx = torch.tensor([j for j, d in enumerate(done_l) if not d], device=device)
                cache.batch_select_indices(keep_idx)
                tok, attn, active, next_pos = tok[keep_idx], attn[keep_idx], active[keep_idx], next_pos[keep_idx]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = self._forward(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                                cache=cache, use_cache=True, model=model)
            cache, logits = _cache_of(out), out.logits[:, -1].float()
            next_pos = next_pos + 1
        return Generation(tokens, logps, reasons)
