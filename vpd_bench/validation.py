"""Checks of a composed config's values against their declared types and ranges, run before anything
is created (no run folder, no model load), so that a mistake is one line naming the key, the value
and what is allowed.

Two layers:
- **types**: every leaf keeps the type of its default (a number stays a number, a flag a flag, a
  list a list); Hydra alone would accept ``train.lr=abc`` as the string ``'abc'``.
- **ranges and choices**: the rules below, one per key, for the keys a run reads as counts, rates,
  probabilities or names of a fixed set.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from vpd_bench.errors import UserError

Rule = Callable[[Any], str | None]   # returns what is allowed when the value breaks the rule


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)
        if ok:
            return None
        if lo is not None and hi is not None:
            return f"a whole number from {lo} to {hi}"
        return f"a whole number >= {lo}" if lo is not None else "a whole number"
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           nullable: bool = False) -> Rule:
    def check(v):
        if v is None and nullable:
            return None
        ok = _is_number(v) and math.isfinite(float(v))
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if ok:
            return None
        left = "" if lo is None else ("> " if lo_open else ">= ") + f"{lo:g}"
        right = "" if hi is None else ("< " if hi_open else "<= ") + f"{hi:g}"
        bounds = " and ".join(x for x in (left, right) if x)
        return f"a number{(' ' + bounds) if bounds else ''}" + (" (or null)" if nullable else "")
    return check


def choice(*options: str) -> Rule:
    def check(v):
        return None if v in options else "one of " + ", ".join(options)
    return check


def flag(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


PROBABILITY = number(0.0, 1.0)

RULES: dict[str, Rule] = {
    "seed": integer(0),
    "setting": choice("instruct", "cold_start"),
    "train.steps": integer(1),
    "train.prompts_per_step": integer(1),
    "train.group_size": integer(1),
    "train.lr": number(0.0),
    "train.weight_decay": number(0.0),
    "train.grad_clip": number(0.0),
    "train.lr_schedule": choice("constant", "linear", "cosine"),
    "train.warmup_steps": integer(0),
    "train.micro_batch_size": integer(1),
    "train.bf16_autocast": flag,
    "train.success_threshold": PROBABILITY,
    "train.checkpoint_every": integer(1),
    "train.keep_checkpoints": integer(0),
    "train.samples_per_step": integer(0),
    "train.tensorboard": flag,
    "train.lora.enabled": flag,
    "train.lora.r": integer(1),
    "train.lora.alpha": number(0.0, lo_open=True),
    "train.lora.dropout": number(0.0, 1.0, hi_open=True),
    "rollout.max_new_tokens": integer(1),
    "rollout.temperature": number(0.0, lo_open=True),
    "rollout.top_p": number(0.0, 1.0, lo_open=True),
    "rollout.top_k": integer(0),
    "teacher_prompt.max_length": integer(1),
    "teacher_prompt.truncation": choice("left", "right", "error"),
    "teacher_prompt.allow_self_demonstration": flag,
    "teacher_prompt.feedback_on_success": flag,
    "eval.every": integer(0),
    "eval.num_problems": integer(0),
    "eval.samples": integer(0),
    "eval.greedy": flag,
    "eval.max_new_tokens": integer(1),
    "eval.temperature": number(0.0, lo_open=True),
    "eval.split": choice("heldout", "validation"),
    "eval.validation_problems": integer(0),
    "eval.teacher_probe": integer(0),
    "method.alpha": PROBABILITY,
    "method.support": choice("full", "topk", "sampled"),
    "method.topk": integer(1),
    "method.is_clip": number(0.0, lo_open=True, nullable=True),
    "method.aggregation": choice("token_mean", "sequence_mean"),
    "method.teacher": choice("live", "ema", "frozen", "trust_region", "trained"),
    "method.teacher_tau": PROBABILITY,
    "method.context": choice("feedback", "reference"),
    "method.clip_low": number(0.0, 1.0),
    "method.clip_high": number(0.0),
    "method.ppo_epochs": integer(1),
    "method.kl_coef": number(0.0),
    "method.scale_by_std": flag,
    "method.estep_every": integer(1),
    "method.prior": choice("student", "initial"),
    "method.beta": number(0.0, lo_open=True),
    "method.delta_momentum": PROBABILITY,
    "method.length_norm": choice("sum", "mean"),
    "method.estep_buffer": choice("window", "current"),
    "method.estep_lr": number(0.0, nullable=True),
    "method.estep_epochs": integer(1),
    "method.estep_fused": flag,
    "method.estep_batching": choice("group", "length"),
    "method.estep_fused_graph": choice("recompute", "keep"),
    "method.estep_probe": integer(0),
}


def _leaves(node, prefix: str = ""):
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            try:
                child = node._get_node(key)
            except Exception:  # noqa: BLE001 - a key that cannot be read is reported by the resolver
                continue
            if isinstance(child, DictConfig):
                yield from _leaves(child, path + ".")
            else:
                yield path, child


def _value(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _type_problem(default, value) -> str | None:
    """What type the key wants, when ``value`` does not have the type of the key's default."""
    if default is None or value is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return None if _is_number(value) else "a number"
    if isinstance(default, (list, ListConfig)):
        return None if isinstance(value, (list, ListConfig)) else "a list, e.g. [a,b]"
    if isinstance(default, str):
        return None if isinstance(value, str) else "text"
    return None


def check_config(cfg: DictConfig, base: DictConfig | None = None, overrides=()) -> None:
    """Raise :class:`UserError` naming the first key whose value has the wrong type (against its
    default in ``base``, the same config without the user's overrides) or breaks its rule."""
    user_keys = {ov.split("=", 1)[0].lstrip("+~") for ov in overrides}
    if base is not None:
        for key in sorted(user_keys):
            default = _value(base, key)
            if isinstance(default, DictConfig):
                continue
            try:
                value = _value(cfg, key)
            except Exception as err:  # noqa: BLE001 - an interpolation that fails to resolve
                raise UserError(f"config key {key}: {err}") from None
            want = _type_problem(default, value)
            if want:
                raise UserError(f"config key {key} = {value!r} is not valid: it must be {want} "
                                f"(default {default!r})")
    for key, rule in RULES.items():
        try:
            value = _value(cfg, key)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"config key {key}: {err}") from None
        if value is None and OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue                                   # the key does not exist for this method / task
        want = rule(value)
        if want:
            raise UserError(f"config key {key} = {value!r} is not valid: it must be {want}")
