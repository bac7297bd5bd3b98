"""Scoring: logits of response tokens under a prompt (student or teacher), in micro-batches.

Sequences are laid out as [left pad | prompt | response | right pad] so every row's response
starts at the same column; the LM head runs only on the response positions
(``logits_to_keep``), which matters for long teacher prompts.
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


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def response_logits(model, packed: Packed, temperature: float = 1.0, bf16_autocast: bool = False) -> torch.Tensor:
    """Logits that predict each response token: [n, R, V] in float32, divided by temperature."""
    R = packed.response_ids.shape[1]
    kwargs = dict(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                  position_ids=packed.position_ids, use_cache=False)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = R + 1
    device_type = packed.input_ids.device.type
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if bf16_autocast else nullcontext()
    with ctx:
        logits = model(**kwargs).logits
    logits = logits[:, -(R + 1):-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def token_log_probs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token) from logits without a full log-softmax tensor: gather minus logsumexp."""
    return logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def micro_batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), max(1, size))]
