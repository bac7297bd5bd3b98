"""The teacher prompt: the student's problem plus an optional demonstration and an optional
feedback block, then an instruction to solve the original problem again.

Pure functions, testable without a model. Truncation cuts the context block (demonstration +
feedback), never the problem or the chat template, so the teacher always sees the task.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

from vpd_bench.rollout.batch import Feedback
from vpd_bench.errors import UserError


@dataclass
class TeacherPrompt:
    text: str | None          # None: no teacher signal for this response (masked)
    ids: list[int] | None
    truncated: bool = False


def context_block(fb: Feedback, templates) -> str:
    parts = []
    if fb.demonstration:
        parts.append(templates.demonstration.format(demonstration=fb.demonstration))
    if fb.text:
        parts.append(templates.feedback.format(feedback=fb.text))
    return "\n".join(parts)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, starting with the tokenizer's BOS where the tokenizer adds
    one by default (gemma, llama) and the text does not already start with it (a chat template
    that writes it). Raw completion prompts (cold start) otherwise reach the model without BOS,
    and gemma-3-270m base then only repeats the prompt (0 of 24 greedy answers right, 23 of 48 with
    BOS: ``scripts/cold_start_fewshot.py --no-bos``). Tokenizers that add no BOS (SmolLM2, Qwen)
    are unchanged."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or (ids and ids[0] == bos) or not _adds_bos(tokenizer, bos):
        return ids
    return [bos] + ids


_ADDS_BOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _adds_bos(tokenizer, bos: int) -> bool:
    """Whether the tokenizer puts BOS in front by default: asked once per tokenizer, since every
    student and teacher prompt of every step comes through :func:`encode_prompt`."""
    try:
        return _ADDS_BOS[tokenizer]
    except (KeyError, TypeError):         # TypeError: not weak-referenceable, asked every time
        adds = tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]
    with contextlib.suppress(TypeError):
        _ADDS_BOS[tokenizer] = adds
    return adds


def render_prompt(tokenizer, text: str, chat: bool) -> str:
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def build_teacher_prompt(problem_text: str, fb: Feedback, templates, tokenizer, chat: bool,
                         max_length: int, truncation: str = "left") -> TeacherPrompt:
    """Teacher prompt for one response. ``truncation``: left (drop the start of the context
    block), right (drop its end) or error (raise)."""
    if fb.empty:
        return TeacherPrompt(None, None, False)
    block = context_block(fb, templates)

    def assemble(ctx: str) -> str:
        body = f"{problem_text}\n\n{ctx}\n{templates.instruction}"
        return render_prompt(tokenizer, body, chat)

    text = assemble(block)
    ids = encode_prompt(tokenizer, text)
    if len(ids) <= max_length:
        return TeacherPrompt(text, ids, False)
    if truncation == "error":
        raise UserError(f"teacher prompt has {len(ids)} tokens > teacher_prompt.max_length={max_length}; "
                        f"raise max_length or set teacher_prompt.truncation=left|right")
    if truncation not in ("left", "right"):
        raise UserError(f"teacher_prompt.truncation must be left, right or error, got {truncation!r}")
    overflow = len(ids) - max_length
    block_ids = tokenizer.encode(block, add_special_tokens=False)
    marker = "[...]"
    keep = len(block_ids) - overflow - len(tokenizer.encode(marker, add_special_tokens=False)) - 2
    for _ in range(4):   # re-tokenisation at the cut can shift a token or two
        if keep <= 0:
            return TeacherPrompt(None, None, True)   # not even the problem fits: no teacher signal
        kept = block_ids[-keep:] if truncation == "left" else block_ids[:keep]
        kept_text = tokenizer.decode(kept, skip_special_tokens=True)
        ctx = f"{marker}{kept_text}" if truncation == "left" else f"{kept_text}{marker}"
        text = assemble(ctx)
        ids = encode_prompt(tokenizer, text)
        if len(ids) <= max_length:
            return TeacherPrompt(text, ids, True)
        keep -= len(ids) - max_length
    return TeacherPrompt(None, None, True)
