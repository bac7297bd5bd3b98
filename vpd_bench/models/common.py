"""What every model provider shares: the loaded pair, dtypes, and the tiny in-process model and
tokenizer that tests and the GPU check build without a download."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vpd_bench.errors import UserError

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    info: dict = field(default_factory=dict)


def _dtype(name: str):
    if name in (None, "auto"):
        return "auto"
    try:
        return getattr(torch, name)
    except AttributeError:
        raise UserError(f"model.dtype '{name}' is not a torch dtype (use float32, bfloat16, float16 or auto)") from None


# -- tiny-random --------------------------------------------------------------------------------
def build_tiny_tokenizer():
    """A byte-level tokenizer with ChatML specials, built in-process (deterministic, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_random(mcfg) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=mcfg.hidden_size, intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_layers, num_attention_heads=mcfg.num_heads,
        num_key_value_heads=mcfg.num_heads, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(mcfg.init_seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tok.pad_token_id
    return LoadedModel(model.to(_dtype(mcfg.dtype)), tok, {"source": "in-process config"})
