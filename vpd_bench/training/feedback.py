"""Feedback sources: who writes the language feedback C about each response.

Each source is a small object with ``build(batch, ctx) -> list[Feedback]`` (one per response).
Combinations merge their parts (``env+sibling``); ``noisy`` swaps in another problem's feedback
with probability p. The reference solution never enters feedback (only SDFT / OPSD read it,
through their own ``context: reference``).
"""
from __future__ import annotations

import logging
import random
from typing import Callable

from vpd_bench.rollout.batch import Feedback, RolloutBatch
from vpd_bench.registry import lookup

log = logging.getLogger("vpd_bench")


def cap_text(text: str | None, max_chars: int, max_lines: int) -> str | None:
    if not text:
        return text
    lines = text.splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"[... {len(text.splitlines()) - max_lines} more lines]"]
    out = "\n".join(lines)
    if len(out) > max_chars:
        out = out[:max_chars] + " [...]"
    return out


def without_stop(text: str | None, stops) -> str | None:
    """A response as it reads to another prompt: without the stop string that ended its
    generation. Raw-prompt runs keep the stop string in the response (" 5 + 8 = 13\n\nQuestion:"),
    so a demonstration shown as is ends with a dangling "Question:" line (38 of the 49 shown in
    the cold-start probe of session 16; results/cpu/README.md §1k)."""
    if not text or not stops:
        return text
    body = text.rstrip()
    for stop in stops:
        if stop and body.endswith(stop):
            return body[:-len(stop)].rstrip()
    return text


class FeedbackSource:
    name = "base"

    def __init__(self, fcfg):
        self.cfg = fcfg

    def build(self, batch: RolloutBatch, ctx) -> list[Feedback]:
        raise NotImplementedError


SOURCES: dict[str, type[FeedbackSource]] = {}


def register_source(name: str) -> Callable:
    def deco(cls):
        cls.name = name
        SOURCES[name] = cls
        return cls
    return deco


@register_source("env")
class EnvFeedback(FeedbackSource):
    """The verifier's own message (built by the task from training-side checks only). With
    ``teacher_prompt.feedback_on_success=false`` a passing response gets none."""

    def build(self, batch, ctx):
        texts = list(batch.verdict_feedback)
        if not ctx.feedback_on_success:
            success = batch.success(ctx.success_threshold).tolist()
            texts = [None if ok else t for t, ok in zip(texts, success)]
        return [Feedback(text=cap_text(t, self.cfg.max_chars, self.cfg.max_lines) or None) for t in texts]


@register_source("sibling")
class SiblingFeedback(FeedbackSource):
    """A successful response from the same group as a demonstration."""

    def build(self, batch, ctx):
        G = batch.group_size
        success = batch.success(ctx.success_threshold).tolist()
        allow_self = ctx.allow_self_demonstration
        out = []
        for i in range(batch.num_responses):
            g0 = (i // G) * G
            candidates = [j for j in range(g0, g0 + G) if success[j] and (allow_self or j != i)]
            demo = without_stop(batch.response_texts[candidates[0]], ctx.stop_strings) if candidates else None
            out.append(Feedback(demonstration=cap_text(demo, self.cfg.max_chars * 4, self.cfg.max_lines * 8)))
        return out


@register_source("hint")
class HintFeedback(FeedbackSource):
    """A data-set hint (tasks that have one); responses of problems without a hint get none."""

    def build(self, batch, ctx):
        return [Feedback(text=cap_text(batch.problem_of(i).hint, self.cfg.max_chars, self.cfg.max_lines))
                for i in range(batch.num_responses)]


@register_source("self_critique")
class SelfCritiqueFeedback(FeedbackSource):
    """The policy critiques its own failed response, given the verifier's verdict (never the
    reference answer). Successes get no critique."""

    def build(self, batch, ctx):
        success = batch.success(ctx.success_threshold).tolist()
        failed = [i for i in range(batch.num_responses) if not success[i]]
        out = [Feedback() for _ in range(batch.num_responses)]
        if not failed:
            return out
        prompts = []
        for i in failed:
            verdict = batch.statuses[i]
            if batch.verdict_feedback[i]:
                verdict += ": " + cap_text(batch.verdict_feedback[i], self.cfg.max_chars, self.cfg.max_lines)
            text = self.cfg.critique_prompt.format(problem=batch.problem_of(i).prompt,
                                                   response=batch.response_texts[i], verdict=verdict)
            prompts.append(ctx.encode_prompt(text))
        critiques = ctx.generate_texts(prompts, self.cfg.critique_max_new_tokens, seed=batch.step * 7919 + 17)
        for i, c in zip(failed, critiques):
            out[i] = Feedback(text=cap_text(c.strip(), self.cfg.max_chars, self.cfg.max_lines) or None)
        return out


def merge(parts: list[list[Feedback]]) -> list[Feedback]:
    merged = []
    for fbs in zip(*parts):
        demo = next((f.demonstration for f in fbs if f.demonstration), None)
        texts = [f.text for f in fbs if f.text]
        merged.append(Feedback(demonstration=demo, text="\n".join(texts) if texts else None))
    return merged


class CombinedFeedback:
    """The configured feedback: one or more sources merged, optionally made noisy."""

    def __init__(self, fcfg):
        self.cfg = fcfg
        self.sources = [lookup(SOURCES, s, "feedback source")(fcfg) for s in fcfg.sources]
        self.noise_p = float(fcfg.get("p", 0.0)) if fcfg.name == "noisy" else 0.0
        self.errors: list[str] = []     # sources that failed on the last batch, and why

    def build(self, batch: RolloutBatch, ctx) -> list[Feedback]:
        self.errors = []
        fbs = merge([self._safe_build(s, batch, ctx) for s in self.sources])
        if self.noise_p > 0:
            fbs = add_noise(fbs, batch.group_size, self.noise_p, random.Random(ctx.seed * 100_003 + batch.step))
        return fbs

    def _safe_build(self, source, batch, ctx) -> list[Feedback]:
        """A source that fails (a data set without hints, a self-critique that errors) gives this batch
        no feedback from it, with a warning: those responses are masked (no teacher signal), the run
        goes on."""
        try:
            return source.build(batch, ctx)
        except Exception as err:  # noqa: BLE001
            log.warning("feedback source %s failed at step %s (%s: %s): its feedback is left out of this batch",
                        type(source).__name__, batch.step, type(err).__name__, err)
            self.errors.append(f"{source.name} failed ({type(err).__name__}: {err})")
            return [Feedback() for _ in range(batch.num_responses)]


def add_noise(fbs: list[Feedback], group_size: int, p: float, rng: random.Random) -> list[Feedback]:
    """With probability p, replace a response's feedback by that of a response to another problem."""
    n = len(fbs)
    groups = n // group_size
    if groups < 2:
        return fbs
    out = list(fbs)
    for i in range(n):
        if rng.random() < p:
            other = [j for j in range(n) if j // group_size != i // group_size]
            out[i] = fbs[rng.choice(other)]
    return out
