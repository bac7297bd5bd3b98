"""Scoring: logits of response tokens under a prompt (student or teacher), in micro-batches.

Sequences are laid out as [left pad | prompt | response | right pad] so every row's response
starts at the same column; the LM head runs only on the response positions
(``logits_to_keep``), which matters for long teacher prompts. Rows that share a prompt (the G
samples of a group) run that prompt once: its KV cache, gradients included, is expanded to the
rows, and only the responses run per row. Rows whose prompts differ but begin alike (the teacher
prompts of a group) run their common prefix once in the same way.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor        # [n, P + R]
    attention_mask: torch.Tensor   # [n, P + R]
    position_ids: torch.Tensor     # [n, P + R]
    response_ids: torch.Tensor     # [n, R]
    response_mask: torch.Tensor    # [n, R] float: 1 on real response tokens
    prompt_width: int


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device=None,
         width: int | None = None) -> Packed:
    """``width`` forces the response width R (so that student and teacher tensors line up)."""
    n = len(prompts)
    P = max(len(p) for p in prompts)
    R = width if width is not None else max(1, max(len(r) for r in responses))
    ids = torch.full((n, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((n, P + R), dtype=torch.long)
    rmask = torch.zeros((n, R))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p):P] = 1
        if r:
            ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
            attn[i, P:P + len(r)] = 1
            rmask[i, :len(r)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    packed = Packed(ids, attn, pos, ids[:, P:].clone(), rmask, P)
    if device is not None:
        packed = Packed(*(t.to(device) if torch.is_tensor(t) else t for t in
                          (packed.input_ids, packed.attention_mask, packed.position_ids,
                           packed.response_ids, packed.response_mask, packed.prompt_width)))
    return packed


def _forward_params(model) -> dict:
    """The keyword parameters of the model's forward (through a PEFT wrapper, whose own forward
    only takes ``**kwargs``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return dict(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return {}


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in _forward_params(model)


def _shared_prompts(packed: Packed):
    """(representative row of each distinct prompt, row -> distinct prompt) when some rows share
    their whole prompt region, else None."""
    n, P = packed.input_ids.shape[0], packed.prompt_width
    if n < 2 or P < 2:
        return None
    key = torch.cat([packed.input_ids[:, :P], packed.attention_mask[:, :P]], dim=1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if uniq.shape[0] == n:
        return None
    rep = torch.empty(uniq.shape[0], dtype=torch.long, device=inverse.device)
    rep.scatter_(0, inverse, torch.arange(n, device=inverse.device))
    return rep, inverse


MIN_SHARED_PREFIX = 16     # tokens: a shorter common prefix is not worth a second forward call


def _shared_prefixes(packed: Packed, min_prefix: int = MIN_SHARED_PREFIX):
    """(prompts, row -> prefix group, prefix length per group) when rows with *different* prompts
    share a long common prefix (the teacher prompts of a group: the same system prompt, problem
    and demonstration, then each row's own feedback), else None. A group's prefix is the longest
    prefix common to all its rows, capped one token short of its shortest prompt so that every
    row keeps at least one prompt token of its own (whose logits predict the first response
    token). Used only when it saves at least a tenth of the prompt tokens."""
    n, P = packed.input_ids.shape[0], packed.prompt_width
    if n < 2 or P <= min_prefix:
        return None
    ids, attn = packed.input_ids[:, :P].tolist(), packed.attention_mask[:, :P].tolist()
    prompts = [[t for t, a in zip(row, mask) if a] for row, mask in zip(ids, attn)]
    clusters: dict[tuple, list[int]] = {}
    singles = []
    for i, p in enumerate(prompts):
        if len(p) > min_prefix:
            clusters.setdefault(tuple(p[:min_prefix]), []).append(i)
        else:
            singles.append(i)
    groups = [rows for rows in clusters.values()] + [[i] for i in singles]
    group_of, lengths, saved = [0] * n, [], 0
    for g, rows in enumerate(groups):
        first = prompts[rows[0]]
        L = min(len(prompts[i]) for i in rows) - 1
        for i in rows[1:]:
            other = prompts[i]
            k = 0
            while k < L and first[k] == other[k]:
                k += 1
            L = k
        if len(rows) == 1 or L < min_prefix:
            L = 0
        lengths.append(L)
        saved += (len(rows) - 1) * L
        for i in rows:
            group_of[i] = g
    if saved * 10 < sum(len(p) for p in prompts):
        return None
    return prompts, group_of, lengths


def _prefix_saving(prefixes) -> int:
    """Prompt tokens the shared-prefix path does not run: (rows - 1) x prefix per group."""
    _, group_of, lengths = prefixes
    return sum((group_of.count(g) - 1) * L for g, L in enumerate(lengths))


def _identical_saving(packed: Packed, shared) -> int:
    """Prompt tokens the identical-prompt path does not run: every row but a representative."""
    rep, inverse = shared
    lengths = packed.attention_mask[:, :packed.prompt_width].sum(-1)
    return int(lengths.sum() - lengths.index_select(0, rep).sum())


def sharing_plan(packed: Packed):
    """(identical-prompt plan, shared-prefix plan), at most one of them not None: how
    ``response_logits`` shares prompt work for this batch. Where both apply (e.g. a teacher
    micro-batch where two rows got the same feedback and the rest differ only at the end), the
    one that runs fewer prompt tokens."""
    shared, prefixes = _shared_prompts(packed), _shared_prefixes(packed)
    if shared is not None and prefixes is not None:
        if _prefix_saving(prefixes) > _identical_saving(packed, shared):
            shared = None
        else:
            prefixes = None
    return shared, prefixes


def tokens_run(packed: Packed, share_prompts: bool = True) -> int:
    """Positions (padding included) that ``response_logits`` runs through the model for this batch,
    given its sharing plan: the cost of scoring it, without a model (benchmarks and tests)."""
    n, P, R = packed.input_ids.shape[0], packed.prompt_width, packed.response_ids.shape[1]
    shared, prefixes = sharing_plan(packed) if share_prompts else (None, None)
    if shared is not None:
        return int(shared[0].numel()) * P + (n * (R - 1) if R > 1 else 0)
    if prefixes is not None:
        prompts, group_of, lengths = prefixes
        width_rest = max(len(prompts[i]) - lengths[group_of[i]] for i in range(n))
        return len(lengths) * max(1, max(lengths)) + n * (width_rest + R - 1)
    return n * (P + R)


def _shared_prefix_logits(model, packed: Packed, prompts, group_of, lengths, cache_kw: str):
    """Response logits with each group's common prefix run once: the prefix pass (with grad, when
    grad is on) gives a KV cache that is expanded to the group's rows; then each row runs the rest
    of its prompt (left-padded to a common width, so that the responses stay column-aligned) and
    its response but the last token. Positions continue each row's own prompt, as in ``pack``."""
    P, R = packed.prompt_width, packed.response_ids.shape[1]
    device = packed.input_ids.device
    n, G = len(prompts), len(lengths)
    pad = 0                              # any id: padded positions are masked out
    Wp = max(1, max(lengths))
    pre_ids = torch.full((G, Wp), pad, dtype=torch.long)
    pre_mask = torch.zeros((G, Wp), dtype=torch.long)
    rep = {}
    for i, g in enumerate(group_of):
        rep.setdefault(g, i)
    for g, L in enumerate(lengths):
        if L:
            pre_ids[g, Wp - L:] = torch.tensor(prompts[rep[g]][:L], dtype=torch.long)
            pre_mask[g, Wp - L:] = 1
    pre_pos = (pre_mask.cumsum(-1) - 1).clamp(min=0)
    rest = [prompts[i][lengths[group_of[i]]:] for i in range(n)]
    Ws = max(len(r) for r in rest)
    rest_ids = torch.full((n, Ws), pad, dtype=torch.long)
    rest_mask = torch.zeros((n, Ws), dtype=torch.long)
    rest_pos = torch.zeros((n, Ws), dtype=torch.long)
    for i, r in enumerate(rest):
        start = lengths[group_of[i]]
        rest_ids[i, Ws - len(r):] = torch.tensor(r, dtype=torch.long)
        rest_mask[i, Ws - len(r):] = 1
        rest_pos[i, Ws - len(r):] = torch.arange(start, start + len(r))
    pre_ids, pre_mask, pre_pos = pre_ids.to(device), pre_mask.to(device), pre_pos.to(device)
    rest_ids, rest_mask, rest_pos = rest_ids.to(device), rest_mask.to(device), rest_pos.to(device)
    out = model(**_token_inputs(model, pre_ids), attention_mask=pre_mask, position_ids=pre_pos, use_cache=True,
                logits_to_keep=1)
    cache = _cache_of(out)
    index = torch.tensor(group_of, dtype=torch.long, device=device)
    _expand_cache(cache, index)
    ids = torch.cat([rest_ids, packed.input_ids[:, P:P + R - 1]], dim=1)
    mask = torch.cat([pre_mask.index_select(0, index), rest_mask, packed.attention_mask[:, P:P + R - 1]], dim=1)
    pos = torch.cat([rest_pos, packed.position_ids[:, P:P + R - 1]], dim=1)
    out = model(**_token_inputs(model, ids), attention_mask=mask, position_ids=pos, use_cache=True,
                logits_to_keep=R, **{cache_kw: cache})
    return out.logits[:, -R:]


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _expand_cache(cache, index: torch.Tensor) -> None:
    """Rows of a KV cache -> ``index`` rows. ``index_select`` rather than the cache's own
    ``batch_select_indices`` (advanced indexing): the latter's backward accumulates with atomic adds
    across threads, so gradients would change in the last bits from run to run."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:        # older transformers: no per-layer cache objects
        DynamicLayer = None
    layers = getattr(cache, "layers", None)
    if DynamicLayer is not None and layers and all(type(layer) is DynamicLayer for layer in layers):
        for layer in layers:
            if torch.is_tensor(layer.keys) and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
    else:
        cache.batch_select_indices(index)


def _token_inputs(model, ids: torch.Tensor) -> dict:
    """``input_ids``, or, when training a model whose input embedding is tied to its LM head,
    ``inputs_embeds`` looked up with a sparse gradient. The dense embedding backward builds a
    zeroed [V, H] tensor per forward call and adds it to the LM head's [V, H] gradient (on CPU
    about 15% of a small model's update); the sparse one adds only the rows of the tokens used.
    The tied LM head always contributes a dense gradient in the same backward, so ``.grad``
    stays dense and the optimizer never sees a sparse tensor."""
    if not torch.is_grad_enabled():
        return {"input_ids": ids}
    try:
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return {"input_ids": ids}
    if (type(emb) is not torch.nn.Embedding or head is None or getattr(head, "weight", None) is not emb.weight
            or not emb.weight.requires_grad or emb.max_norm is not None or emb.scale_grad_by_freq):
        return {"input_ids": ids}
    return {"inputs_embeds": torch.nn.functional.embedding(ids, emb.weight, emb.padding_idx, sparse=True)}


def _shared_prompt_logits(model, packed: Packed, rep: torch.Tensor, inverse: torch.Tensor, cache_kw: str):
    """Response logits with each distinct prompt run once: the prompt pass (with grad, when grad
    is on) yields the first response token's logits and a KV cache, which is expanded to the rows
    and extended by the responses (all but the last token, whose prediction nobody needs)."""
    P, R = packed.prompt_width, packed.response_ids.shape[1]
    out = model(**_token_inputs(model, packed.input_ids[rep, :P]), attention_mask=packed.attention_mask[rep, :P],
                position_ids=packed.position_ids[rep, :P], use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1:].index_select(0, inverse)
    if R == 1:
        return first
    cache = _cache_of(out)
    _expand_cache(cache, inverse)
    out = model(**_token_inputs(model, packed.input_ids[:, P:P + R - 1]),
                attention_mask=packed.attention_mask[:, :P + R - 1],
                position_ids=packed.position_ids[:, P:P + R - 1], use_cache=True, logits_to_keep=R - 1,
                **{cache_kw: cache})
    return torch.cat([first, out.logits[:, -(R - 1):]], dim=1)


def response_logits(model, packed: Packed, temperature: float = 1.0, bf16_autocast: bool = False,
                    share_prompts: bool = True) -> torch.Tensor:
    """Logits that predict each response token: [n, R, V] in float32 (float64 for a float64 model),
    divided by temperature.

    ``share_prompts``: rows with an identical prompt (the G samples of a group) run it once and
    share its KV cache; rows whose prompts share a long common prefix (a group's teacher prompts)
    run the prefix once; where both apply, the one that runs fewer prompt tokens is used. Same
    logits up to float rounding, fewer tokens through the model."""
    R = packed.response_ids.shape[1]
    params = _forward_params(model)
    keep = "logits_to_keep" in params
    device_type = packed.input_ids.device.type
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if bf16_autocast else nullcontext()
    shared, prefixes = sharing_plan(packed) if share_prompts and keep else (None, None)
    cache_kw = "cache" if "cache" in params else "past_key_values"
    if shared is not None:
        with ctx:
            logits = _upcast(_shared_prompt_logits(model, packed, *shared, cache_kw))
    elif prefixes is not None:
        with ctx:
            logits = _upcast(_shared_prefix_logits(model, packed, *prefixes, cache_kw))
    else:
        kwargs = dict(**_token_inputs(model, packed.input_ids), attention_mask=packed.attention_mask,
                      position_ids=packed.position_ids, use_cache=False)
        if keep:
            kwargs["logits_to_keep"] = R + 1
        with ctx:
            logits = model(**kwargs).logits
        logits = _upcast(logits[:, -(R + 1):-1])
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores come in for a model of ``dtype``: float64 for float64, else float32 (a
    float64 model's scores rounded to float32 would put float32 noise into every loss downstream)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 logits to float32; float32 and float64 ones as they are."""
    return logits.to(score_dtype(logits.dtype))


def token_log_probs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token) from logits without a full log-softmax tensor: gather minus logsumexp."""
    return logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def micro_batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), max(1, size))]
