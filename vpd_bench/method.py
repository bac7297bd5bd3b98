"""The method interface. A method file implements only what differs: which context its teacher
reads, its loss on a micro-batch, and what happens after the student update (teacher EMA, VPD's
E-step). The loop (``vpd_bench.training.loop``) owns generation, verification, scoring and optimisation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from vpd_bench import losses as L
from vpd_bench.rollout.batch import Feedback, RolloutBatch
from vpd_bench.registry import lookup
from vpd_bench.rollout.scoring import Packed, response_logits, score_dtype, token_log_probs  # noqa: F401 (public to methods/)

log = logging.getLogger("vpd_bench")


@dataclass
class MicroBatch:
    """A slice of the rollout batch, with lazily computed student and teacher logits so that
    each forward pass runs at most once per micro-batch."""
    indices: list[int]
    student: Packed                       # student prompt + response
    rollout_logp: torch.Tensor            # [n, R]
    rewards: torch.Tensor                 # [n]
    success: torch.Tensor                 # [n] bool
    teacher_rows: torch.Tensor            # [n] bool: rows with a teacher prompt
    teacher: Packed | None                # teacher prompt + response, rows `teacher_rows` only
    student_logits_fn: Callable[[], torch.Tensor]
    teacher_logits_fn: Callable[[], torch.Tensor] | None
    reference_logits_fn: Callable[[], torch.Tensor] | None = None
    old_logp: torch.Tensor | None = None  # [n, R] for ppo_epochs > 1
    advantages: torch.Tensor | None = None
    batch_extras: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    @property
    def response_mask(self) -> torch.Tensor:
        return self.student.response_mask

    def student_logits(self) -> torch.Tensor:
        if "s" not in self._cache:
            # the teacher runs first: a LoRA EMA teacher swaps adapter weights in place, which
            # must not happen while the student's graph holds them
            if self.teacher_logits_fn is not None:
                self.teacher_logits()
            if self.reference_logits_fn is not None:
                self.reference_logits()
            self._cache["s"] = self.student_logits_fn()
        return self._cache["s"]

    def teacher_logits(self) -> torch.Tensor:
        if "t" not in self._cache:
            self._cache["t"] = self.teacher_logits_fn().detach()
        return self._cache["t"]

    def reference_logits(self) -> torch.Tensor:
        if "r" not in self._cache:
            self._cache["r"] = self.reference_logits_fn().detach()
        return self._cache["r"]

    def student_token_logp(self) -> torch.Tensor:
        if "s_tok" not in self._cache:
            self._cache["s_tok"] = token_log_probs(self.student_logits(), self.student.response_ids)
        return self._cache["s_tok"]


@dataclass
class Normalizers:
    """Whole-batch counts, so that micro-batch losses add up to the full-batch loss."""
    num_tokens: float
    num_sequences: float


class Method:
    name = "base"
    teacher_strategy: str | None = None   # None: the method reads no teacher prompt

    def __init__(self, cfg, trainer):
        self.cfg = cfg
        self.mcfg = cfg.method
        self.trainer = trainer
        self._warned: set[str] = set()

    # -- stage: build the teacher's context ------------------------------------------------------
    def teacher_feedback(self, batch: RolloutBatch) -> list[Feedback] | None:
        """Feedback C for each response, or None when the method has no teacher."""
        return None

    # -- stage: per-batch preparation and the loss ----------------------------------------------
    def prepare(self, batch: RolloutBatch) -> dict:
        """Whole-batch quantities (advantages, normalizers). Returned dict is logged."""
        return {}

    def loss(self, mb: MicroBatch) -> torch.Tensor:
        raise NotImplementedError

    @property
    def ppo_epochs(self) -> int:
        return 1

    def before_optimizer_step(self) -> None:
        """Called after every micro-batch's loss has been backpropagated and before the student's
        optimizer step (VPD's fused E-step takes its gradient here, at the pre-update weights)."""

    # -- stage: update the teacher ---------------------------------------------------------------
    def after_update(self, batch: RolloutBatch, step: int) -> dict:
        return {}

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def build_method(cfg, trainer) -> Method:
    import vpd_bench.methods  # noqa: F401  (registers the method files)
    return lookup(METHODS, cfg.method.name, "method")(cfg, trainer)


# -- shared pieces the method files compose ----------------------------------------------------------
def grpo_prepare(method: Method, batch: RolloutBatch) -> dict:
    """Group-relative advantages and the token normaliser; logs flat (no-signal) groups."""
    m = method.mcfg
    adv = L.group_advantages(batch.rewards, batch.group_size, scale_by_std=m.scale_by_std)
    batch.extras["advantages"] = adv
    r = batch.rewards.view(-1, batch.group_size)
    flat = (r.max(dim=1).values == r.min(dim=1).values)
    if bool(flat.all()):
        method.warn_once("flat", "every group in this batch has equal rewards: GRPO gets no signal "
                                 "(logged as no_signal_frac; warned once)")
    lengths = batch.response_lengths()
    batch.extras["grpo_norm"] = Normalizers(float(lengths.sum().clamp(min=1)), float((lengths > 0).sum().clamp(min=1)))
    return {"no_signal_frac": float(flat.float().mean())}


def grpo_loss(method: Method, mb: MicroBatch, norm: Normalizers) -> torch.Tensor:
    m = method.mcfg
    logp = mb.student_token_logp()
    old = mb.old_logp if mb.old_logp is not None else logp.detach()
    per_token, clipped = L.ppo_clipped_surrogate(logp, old, mb.advantages, m.clip_low, m.clip_high)
    if m.kl_coef > 0:
        ref = token_log_probs(mb.reference_logits(), mb.student.response_ids)
        per_token = per_token + m.kl_coef * L.k3_kl(logp, ref)
    mask = mb.response_mask
    mb.stats.setdefault("clip_frac", []).append(((clipped.float() * mask).sum().item(), mask.sum().item()))
    return L.aggregate(per_token, mask, m.aggregation, norm.num_tokens, norm.num_sequences)


def answer_end_char(text: str, verdict) -> int | None:
    """Where the final answer the verifier read ends in ``text`` (a character offset), or None when
    the verifier reports none: the end of the last occurrence of its ``extracted`` answer (math,
    sciqa calculations; the chosen letter on multiple choice). Code verifiers extract no answer."""
    extracted = (getattr(verdict, "extras", None) or {}).get("extracted")
    if not isinstance(extracted, str) or not extracted.strip():
        return None
    at = text.rfind(extracted.strip())
    return None if at < 0 else at + len(extracted.strip())


def tokens_through(tokenizer, ids: list[int], end_char: int) -> int:
    """The fewest leading tokens of ``ids`` whose decoded text reaches character ``end_char``
    (the text decoded as the loop decodes responses); all of them when none does."""
    for k in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= end_char:
            return k
    return len(ids)


def distill_keep(method: Method, batch: RolloutBatch) -> torch.Tensor | None:
    """Per response, how many leading tokens the distillation scores: all of them (the methods as
    published), or with ``method.distill_after_answer=false`` those up to the end of the final
    answer, so that nothing the teacher would write after an answer (the verifier's "Your answer
    is correct." read from its prompt: feedback echo), the stop token included, is distilled.
    None when every token is scored (the default: no mask to build)."""
    if bool(method.mcfg.get("distill_after_answer", True)):
        return None
    keep = []
    for i, ids in enumerate(batch.response_ids):
        end = answer_end_char(batch.response_texts[i], batch.verdicts[i] if i < len(batch.verdicts) else None)
        keep.append(len(ids) if end is None else tokens_through(method.trainer.tokenizer, ids, end))
    return torch.tensor(keep, dtype=torch.long)


def distill_prepare(method: Method, batch: RolloutBatch) -> dict:
    keep = distill_keep(method, batch)
    if keep is not None:
        batch.extras["distill_keep"] = keep
    scored = keep.float() if keep is not None else batch.response_lengths()
    lengths = scored * batch.teacher_mask.float()
    batch.extras["distill_norm"] = Normalizers(float(lengths.sum().clamp(min=1)), float((lengths > 0).sum().clamp(min=1)))
    # responses the student ended itself (EOS): where teacher and student disagree about stopping
    batch.extras["ended_eos"] = torch.tensor([r == "eos" for r in (batch.finish_reasons or [])], dtype=torch.bool)
    if not bool(batch.teacher_mask.any()):
        method.warn_once("masked", "every response in this batch lacks a teacher signal (no feedback or "
                                   "demonstration): the distillation loss is 0 (masked_teacher_frac=1; warned once)")
    # the share of response tokens the loss scores (1 unless distill_after_answer=false cuts at answers)
    total = float(batch.response_lengths().sum())
    return {"distill_token_frac": float(scored.sum()) / total if total else None}


def distillation_loss(method: Method, mb: MicroBatch, norm: Normalizers) -> torch.Tensor:
    """The token divergence between student and stop-gradient teacher on the student's own
    response, importance-weighted and aggregated over rows that have a teacher prompt."""
    m = method.mcfg
    rows = mb.teacher_rows
    s_logits = mb.student_logits()
    if not bool(rows.any()):
        return s_logits.sum() * 0.0          # keeps the graph; contributes nothing
    s_logits = s_logits[rows]
    t_logits = mb.teacher_logits()
    ids = mb.student.response_ids[rows]
    full_mask = mask = mb.response_mask[rows]
    keep = mb.batch_extras.get("distill_keep")
    if keep is not None:                  # distill_after_answer=false: tokens after the answer leave the loss
        keep = keep[mb.indices][rows.cpu()].to(mask.device)
        mask = mask * (torch.arange(mask.shape[1], device=mask.device)[None, :] < keep[:, None]).to(mask.dtype)
    s_tok = mb.student_token_logp()[rows]
    t_tok = token_log_probs(t_logits, ids)
    weights = L.importance_weights(s_tok, mb.rollout_logp[rows], m.is_clip)
    if m.support == "sampled":
        if not bool(m.get("distill_stop", True)):
            raise ValueError("method.distill_stop=false needs support=full or topk (the sampled support "
                             "scores the sampled token only)")
        if m.alpha != 1.0:
            raise ValueError("support=sampled estimates the reverse KL only: set method.alpha=1.0")
        per_token = L.sampled_reverse_kl_surrogate(s_tok, t_tok)
        divergence = (s_tok - t_tok).detach()
    else:
        if not bool(m.get("distill_stop", True)):
            # the stop decision is not distilled: stop tokens leave the support at every position, so
            # a teacher whose context alone makes it reluctant to stop cannot teach the student to go on
            stop = stop_token_ids(method)
            s_logits, t_logits = L.without_tokens(s_logits, stop), L.without_tokens(t_logits, stop)
        if m.support == "topk":
            s_lp, t_lp = L.topk_with_tail(s_logits, t_logits, m.topk)
        elif m.support == "full":
            s_lp, t_lp = L.log_probs_full(s_logits), L.log_probs_full(t_logits)
        else:
            raise ValueError(f"method.support must be full, topk or sampled, got {m.support!r}")
        per_token = L.token_divergence(s_lp, t_lp, m.alpha)
        divergence = per_token.detach()
    loss = L.aggregate(per_token * weights, mask, m.aggregation, norm.num_tokens, norm.num_sequences)
    # health: teacher-student divergence and the teacher's log-likelihood gain per response
    mb.stats.setdefault("divergence", []).append(((divergence * mask).sum().item(), mask.sum().item()))
    # the diagnostics read whole responses, whatever the loss scores
    gain = ((t_tok - s_tok.detach()) * full_mask).sum(-1)
    mb.stats.setdefault("gain", []).append((gain, mb.success[rows]))
    _record_stop_log_probs(mb, rows, full_mask, s_tok, t_tok)
    return loss


def stop_token_ids(method: Method) -> list[int]:
    """The token ids that end a response: the engine's EOS set (tokenizer + generation config)."""
    ids = getattr(getattr(method.trainer, "engine", None), "eos_ids", None)
    if not ids:
        eos = method.trainer.tokenizer.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(int(i) for i in ids)


def _record_stop_log_probs(mb: MicroBatch, rows, mask, s_tok, t_tok) -> None:
    """Length-drift diagnostic: on *failed* responses that the student ended with EOS, the student's
    and the teacher's log-probability of that EOS (a teacher that reads "your answer is wrong" and
    does not want to stop teaches the student not to stop)."""
    ended = mb.batch_extras.get("ended_eos")
    if ended is None or ended.numel() == 0:
        return
    keep = ended[mb.indices][rows] & ~mb.success[rows].bool()
    if not bool(keep.any()):
        return
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    at = torch.arange(last.numel(), device=last.device)
    mb.stats.setdefault("stop", []).append((s_tok.detach()[at, last][keep], t_tok.detach()[at, last][keep]))


def teacher_gain(gains: list[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
    """mean log q(y|x,C) - log pi(y|x) on successes minus the same on failures."""
    if not gains:
        return None
    g = torch.cat([x for x, _ in gains])
    s = torch.cat([y for _, y in gains]).bool()
    if not bool(s.any()) or bool(s.all()):
        return None
    return float(g[s].mean() - g[~s].mean())


def reference_feedback(batch: RolloutBatch) -> list[Feedback]:
    """SDFT / OPSD: every response's teacher reads the data set's reference solution."""
    return [Feedback(demonstration=batch.problem_of(i).reference) for i in range(batch.num_responses)]
