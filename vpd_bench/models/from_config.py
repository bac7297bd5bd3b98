"""Model provider ``config``: a transformers architecture built in-process from a config, randomly
initialised (seeded), with the in-process byte tokenizer. Nothing is downloaded, so it runs on a
GPU machine that reaches no model hub: the GPU check (``benchmarks/gpu_check.sh``) trains a
Qwen3-architecture model of about 0.5B parameters this way (``conf/model/qwen3-0.5b-random.yaml``).

Config keys (``model.*``): ``architecture`` (a transformers ``model_type``: qwen3, qwen2, llama,
...), ``hidden_size``, ``intermediate_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``,
``head_dim`` (null: hidden_size / num_heads), ``max_position_embeddings``, ``tie_word_embeddings``,
``rope_theta``, ``init_seed``, ``dtype``. The vocabulary is the byte tokenizer's (260 ids), so the
embedding and LM head are small; parameter counts below are for the transformer blocks.
"""
from __future__ import annotations

import torch

from vpd_bench.errors import UserError


def config_for(mcfg, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import AutoConfig

    arch = str(mcfg.get("architecture", "qwen3"))
    heads = int(mcfg.num_heads)
    kw = dict(vocab_size=vocab_size, hidden_size=int(mcfg.hidden_size), intermediate_size=int(mcfg.intermediate_size),
              num_hidden_layers=int(mcfg.num_layers), num_attention_heads=heads,
              num_key_value_heads=int(mcfg.get("num_kv_heads") or heads),
              max_position_embeddings=int(mcfg.get("max_position_embeddings") or 8192),
              tie_word_embeddings=bool(mcfg.get("tie_word_embeddings", True)),
              eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)
    if mcfg.get("head_dim"):
        kw["head_dim"] = int(mcfg.head_dim)
    if mcfg.get("rope_theta"):
        kw["rope_theta"] = float(mcfg.rope_theta)
    try:
        return AutoConfig.for_model(arch, **kw)
    except (ValueError, KeyError) as err:
        raise UserError(f"model.architecture '{arch}' is not a transformers model type this version knows "
                        f"({err}); try qwen3, qwen2 or llama") from None


def build_from_config(mcfg):
    """``provider: config`` -> LoadedModel (model on CPU in ``model.dtype``; the trainer places it)."""
    from transformers import AutoModelForCausalLM

    from vpd_bench.models.common import LoadedModel, _dtype, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = config_for(mcfg, len(tok), tok.eos_token_id, tok.pad_token_id)
    state = torch.random.get_rng_state()
    torch.manual_seed(int(mcfg.get("init_seed", 1234)))
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    dtype = _dtype(mcfg.get("dtype", "float32"))
    if dtype != "auto":
        model = model.to(dtype)
    n = sum(p.numel() for p in model.parameters())
    return LoadedModel(model, tok, {"source": f"in-process {config.model_type} config (random init)",
                                    "architecture": config.model_type, "parameters_built": n})
