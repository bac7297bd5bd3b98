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


ANSWER_CUES = ("auto", "none")


def split_answer_cue(problem_text: str, templates, chat: bool) -> tuple[str, str]:
    """(the problem without its cue, the cue): the cue is the line a raw (completion) teacher prompt ends with: the student prompt's own last line
    (``Answer:`` for ``tasks.answers.raw_prompt``), moved from the problem to the end, so the
    response is scored right after the cue it was sampled after. Before (``none``): the teacher
    prompt was the whole student prompt, the context block, the instruction; a base-model teacher
    then put most of its first-token mass on a blank line (gemma-3-270m: the top token after 40 of
    40 prompts), and distilling from it taught the student to answer with a new ``Answer:`` line
    alone (a stop string: an empty answer), 28 to 64 of 64 greedy answers within 15-30 steps
    (results/cpu/README.md §1d). Chat prompts end with the template's assistant turn and get no
    cue. ``teacher_prompt.answer_cue``: auto | none."""
    try:
        mode = templates["answer_cue"]           # absent (an older config): auto; null: none
    except (KeyError, TypeError, AttributeError):
        mode = "auto"
    mode = "none" if mode is None else str(mode)
    if mode not in ANSWER_CUES:
        raise UserError(f"teacher_prompt.answer_cue must be one of {', '.join(ANSWER_CUES)}, got {mode!r}")
    text = problem_text.rstrip()
    if chat or mode == "none" or "\n" not in text.strip():
        return problem_text, ""
    head, cue = text.rsplit("\n", 1)
    return head.rstrip(), cue.strip()


def build_teacher_prompt(problem_text: str, fb: Feedback, templates, tokenizer, chat: bool,
                         max_length: int, truncation: str = "left") -> TeacherPrompt:
    """Teacher prompt for one response. ``truncation``: left (drop the start of the context
    block), right (drop its end) or error (raise)."""
    if fb.empty:
        return TeacherPrompt(None, None, False)
    block = context_block(fb, templates)
    # a raw prompt's cue moves to the end: left in place, "Answer:" followed by the context block
    # teaches a base model, in context, that a blank line comes after it
    head, cue = split_answer_cue(problem_text, templates, chat)

    def assemble(ctx: str) -> str:
        body = f"{head}\n\n{ctx}\n{templates.instruction}" + (f"\n{cue}" if cue else "")
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
