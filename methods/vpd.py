"""VPD: Variational Policy Distillation (Li, Nijkamp, Yavuz, Joty, arXiv 2605.15113).

Learning from feedback as variational EM. The reward-tilted policy
    pi*(y|x)  proportional to  pi_prior(y|x) exp(r(x, y) / beta)
is approximated by the feedback-reading teacher q(y | x, C), which is the *same network* as the
student, reading a prompt that also holds the feedback C.

M-step (every iteration): the student distils from the teacher on its own rollouts: exactly the
SDPO loss, with the teacher = the live shared weights under stop-gradient (no copy).

E-step (every F iterations): the teacher learns to read feedback. Each response has its own
feedback, so there are no chosen/rejected pairs; an unpaired preference loss (BCO) is used:
    rho_i = beta * ( log q(y_i | x, C_i)  -  sg[ log pi_prior(y_i | x) ] )
    L_E   = - mean_success log sigmoid(rho_i - delta) - mean_failure log sigmoid(-(rho_i - delta))
with delta a detached running mean of the batch-mean implicit reward, updated with the E-step's
own batch before the loss is computed (as BCO does). The prior is the current
student, scored with the weights as they are when the E-step starts (the adaptive trust region:
the teacher moves only within reach of the student); ``prior: initial`` is the ablation.
"""
from __future__ import annotations

import copy
import time

import torch

from vpd_bench import losses as L
from vpd_bench.errors import UserError
from vpd_bench.method import Packed, register_method, response_logits, score_dtype, token_log_probs

from .sdpo import SDPO


# M-step teachers VPD accepts: the E-step must reach the weights the M-step teacher reads
MSTEP_TEACHERS = ("trained", "live", "ema", "trust_region")


@register_method("vpd")
class VPD(SDPO):
    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self.delta: float | None = None     # BCO shift; the first E-step sets it to its own batch mean
        self.buffer: list[list[dict]] = []  # one list of E-step items per recent iteration
        self.initial_prior = None
        self._diag_s = 0.0                  # time spent in the E-step probe (diagnostics) since last reported
        if self.mcfg.teacher not in MSTEP_TEACHERS:
            raise UserError(f"method.teacher={self.mcfg.teacher} cannot be VPD's M-step teacher: the E-step trains "
                            f"the shared weights, which a frozen copy never reads. Use one of "
                            f"{', '.join(MSTEP_TEACHERS)} (trained = the live shared weights, the method as published; "
                            f"ema = a slow copy that follows them, an ablation)")
        if self.mcfg.prior == "initial":    # the fixed-reference ablation keeps one frozen copy
            self.initial_prior = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        elif self.mcfg.prior != "student":
            raise ValueError(f"method.prior must be 'student' or 'initial', got {self.mcfg.prior!r}")
        self.estep_samples = str(self.mcfg.get("estep_samples", "all"))
        if self.estep_samples not in ("all", "successes"):
            raise UserError(f"method.estep_samples must be 'all' or 'successes', got {self.estep_samples!r}")
        self.delta_timing = str(self.mcfg.get("delta_timing", "before_loss"))
        if self.delta_timing not in ("before_loss", "after_loss"):
            raise UserError(f"method.delta_timing must be 'before_loss' (the method: delta moves with this E-step's "
                            f"batch before its loss) or 'after_loss' (delta moves after it: no forward-only pass), "
                            f"got {self.delta_timing!r}")
        self.prior_timing = str(self.mcfg.get("prior_timing", "estep"))
        if self.prior_timing not in ("estep", "rollout"):
            raise UserError(f"method.prior_timing must be 'estep' (the method: the prior is scored with the weights at "
                            f"the E-step's start) or 'rollout' (the M-step's student log-probs of the response's own "
                            f"iteration are kept: no prior pass), got {self.prior_timing!r}")
        if self.prior_timing == "rollout" and self.mcfg.prior != "student":
            raise UserError("method.prior_timing=rollout keeps the student's log-probs; with method.prior=initial the "
                            "prior is the frozen copy: leave prior_timing=estep")
        self._rollout_prior: dict[int, float] = {}   # response index -> log pi(y|x) from this iteration's M-step
        self.fused = bool(self.mcfg.get("estep_fused", False))
        if self.fused and self.prior_timing != "estep":
            raise UserError("method.prior_timing=rollout has nothing to save with method.estep_fused=true (the fused "
                            "E-step takes the prior from the M-step's student forward already); leave prior_timing=estep")
        if self.fused and self.delta_timing != "before_loss":
            raise UserError("method.delta_timing=after_loss has nothing to save with method.estep_fused=true (the fused "
                            "E-step takes delta from the M-step's forward passes); leave delta_timing=before_loss")
        self.keep_graph = str(self.mcfg.get("estep_fused_graph", "recompute")) == "keep"
        if self.fused:
            self._check_fusable()
        self._fused_parts: list | None = None    # (log q with graph, log prior, success) per micro-batch
        self._fused_grads = None                 # the fused E-step's gradient, applied after the M-step
        self._fused_stats: dict = {}

    def _check_fusable(self):
        m, why = self.mcfg, []
        if m.estep_buffer != "current":
            why.append("method.estep_buffer=current (the window holds rollouts the M-step no longer scores)")
        if int(m.estep_epochs) != 1:
            why.append("method.estep_epochs=1")
        if m.prior != "student":
            why.append("method.prior=student")
        if m.teacher not in ("trained", "live"):
            why.append("method.teacher=trained")
        if self.estep_samples != "all":
            why.append("method.estep_samples=all")
        if self.trainer.dist.enabled:
            why.append("one process")
        if why:
            raise UserError("method.estep_fused=true needs " + ", ".join(why) + "; or set method.estep_fused=false")

    # -- the M-step: SDPO's loss with the live teacher (method.teacher = trained) ---------------------
    # With estep_fused, on E-step iterations the M-step's teacher forward gives the E-step's
    # log q(y|x,C) and its student forward gives log pi(y|x), both at the weights *before* the
    # M-step update (the exact variant takes them after it): delta and the prior cost no pass of
    # their own. estep_fused_graph=keep also keeps the teacher forward's graph for the E-step's
    # backward (no second teacher forward, but the whole batch's activations wait in memory);
    # recompute (default) re-runs the teacher forward one micro-batch at a time (docs/method.md).

    def prepare(self, batch):
        out = super().prepare(batch)
        fuse = self.fused and batch.step % int(self.mcfg.estep_every) == 0
        self._fused_parts = [] if fuse else None
        return out

    def loss(self, mb):
        if self._fused_parts is None or mb.teacher is None:
            loss = super().loss(mb)
            if self.prior_timing == "rollout":
                self._keep_rollout_prior(mb)
            return loss
        t = self.trainer
        norm, rows = self.mcfg.length_norm, mb.teacher_rows
        if self.keep_graph:     # the teacher forward keeps its graph until the E-step's backward
            graph = response_logits(t.model, mb.teacher, float(t.cfg.rollout.temperature),
                                    bool(t.cfg.train.bf16_autocast))
            mb._cache["t"] = graph.detach()                 # the M-step reads the teacher under stop-gradient
            loss = super().loss(mb)
        else:                   # only the values: the E-step re-runs this forward with a graph
            loss = super().loss(mb)
            graph = mb.teacher_logits()
        q = L.sequence_log_prob(token_log_probs(graph, mb.teacher.response_ids), mb.teacher.response_mask, norm)
        prior = L.sequence_log_prob(mb.student_token_logp()[rows].detach(), mb.response_mask[rows], norm)
        self._fused_parts.append((q, prior, mb.success[rows], None if self.keep_graph else mb.teacher,
                                  mb.student.input_ids.numel()))
        return loss

    def _keep_rollout_prior(self, mb):
        """prior_timing=rollout: the M-step's student forward (at this iteration's weights, before its
        update) gives each response's log pi(y|x); kept for the E-step, which then runs no prior pass.
        A second PPO epoch would score updated weights: only the first value of a response is kept."""
        lp = L.sequence_log_prob(mb.student_token_logp().detach(), mb.response_mask, self.mcfg.length_norm)
        for j, i in enumerate(mb.indices):
            self._rollout_prior.setdefault(int(i), float(lp[j]))

    def before_optimizer_step(self):
        parts, self._fused_parts = self._fused_parts, None
        if parts is None:
            return
        if not parts:
            self.warn_once("estep-empty", "E-step buffer is empty (no response had feedback): E-step skipped")
            self._fused_stats = {"estep_loss": None, "delta": self.delta, "estep_size": 0}
            return
        q = torch.cat([p[0] for p in parts])
        prior = torch.cat([p[1] for p in parts])
        success = torch.cat([p[2] for p in parts]).bool()
        n, n_success = int(success.numel()), int(success.sum())
        if n_success in (0, n):
            self.warn_once("estep-one-class", "E-step buffer holds only one class "
                                              f"({'successes' if n_success else 'failures'}): using that term alone")
        beta = float(self.mcfg.beta)
        rho = L.implicit_reward(q, prior, beta)
        rho_mean = float(rho.detach().double().mean())
        self.delta = L.update_running_delta(self.delta, rho_mean, float(self.mcfg.delta_momentum))
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        if self.keep_graph:
            loss, _ = L.bco_loss(rho, success, self.delta)
            self._fused_grads = torch.autograd.grad(loss, params, allow_unused=True)
            total = float(loss.detach())
        else:
            # one micro-batch at a time, at the same (pre-update) weights: the teacher forward is
            # re-run with a graph, each share's gradient is added up, and nothing waits in memory
            # but that sum (delta and the class counts are known now, so the shares are exact)
            t, norm = self.trainer, self.mcfg.length_norm
            grads, total, n_failure = None, 0.0, n - n_success
            for _, mb_prior, mb_success, packed, budget in parts:
                # teacher prompts are longer than student prompts: rows are re-chunked so that no
                # chunk holds more padded tokens than the M-step micro-batch's student forward
                step = max(1, int(budget) // packed.input_ids.shape[1])
                for lo in range(0, packed.input_ids.shape[0], step):
                    chunk = _rows(packed, slice(lo, lo + step))
                    logits = response_logits(t.model, chunk, float(t.cfg.rollout.temperature),
                                             bool(t.cfg.train.bf16_autocast))
                    mb_q = L.sequence_log_prob(token_log_probs(logits, chunk.response_ids), chunk.response_mask, norm)
                    share = self._bco_share(L.implicit_reward(mb_q, mb_prior[lo:lo + step], beta),
                                            mb_success[lo:lo + step].bool(), self.delta, n_success, n_failure)
                    g = torch.autograd.grad(share, params, allow_unused=True)
                    grads = list(g) if grads is None else [a if b is None else (b if a is None else a.add_(b))
                                                           for a, b in zip(grads, g)]
                    total += float(share.detach())
                    del logits, mb_q, share, g
            self._fused_grads = tuple(grads)
        self._fused_stats = {"estep_loss": total, "delta": self.delta, "estep_rho_mean": rho_mean,
                             "estep_size": n, "estep_success_frac": n_success / n}

    def _apply_fused_estep(self) -> dict:
        """The E-step's own optimizer step (at estep_lr), with the gradient taken before the M-step's."""
        t, grads, self._fused_grads = self.trainer, self._fused_grads, None
        params = [p for p in t.model.parameters() if p.requires_grad]
        before = self._probe()
        t.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        with t.learning_rate(self.mcfg.estep_lr):
            t.optimizer_step()
        return {**self._fused_stats, **self._probe_stats(before, self._probe())}

    # -- diagnostics: what an E-step does to the student ------------------------------------------
    def _probe(self) -> dict | None:
        """Greedy pass rate and mean length of the student on a fixed set of probe prompts (the
        validation problems, else the first training problems). The teacher shares the student's
        weights and optimizer state, so an E-step moves the student too: this measures how much.
        Greedy decoding uses no random numbers, so training is unchanged by it."""
        n = int(self.mcfg.get("estep_probe", 0) or 0)
        t = self.trainer
        if n <= 0 or getattr(t.engine, "name", "hf") != "hf" or t.dist.enabled:
            return None
        t0 = time.perf_counter()
        try:
            return self._probe_run(t, n)
        finally:     # instrument time: reported as diagnostics_s, kept out of the step time
            self._diag_s += time.perf_counter() - t0

    def _probe_run(self, t, n) -> dict:
        problems = list(getattr(t, "validation_problems", None) or t.train_problems)[:n]
        prompts = [t.encode_prompt(t.task.render_prompt(p)) for p in problems]
        gen = t.engine.generate(prompts, 1, int(t.cfg.rollout.max_new_tokens), greedy=True, seed=0,
                                stop=list(t.cfg.rollout.stop))
        texts = [t.tokenizer.decode(r, skip_special_tokens=True) for r in gen.response_ids]
        verdicts = t.task.verify_batch(problems, texts, split="eval")
        return {"pass": sum(v.reward >= 1.0 for v in verdicts) / len(verdicts),
                "len": sum(len(r) for r in gen.response_ids) / len(gen.response_ids)}

    def _probe_stats(self, before, after) -> dict:
        diag, self._diag_s = self._diag_s, 0.0
        if before is None or after is None:
            return {}
        return {"diagnostics_s": diag,"estep_probe_pass_before": before["pass"], "estep_probe_pass_after": after["pass"],
                "estep_probe_len_before": before["len"], "estep_probe_len_after": after["len"]}

    def after_update(self, batch, step):
        if self.fused:
            out = {}
            if step % int(self.mcfg.estep_every) == 0:
                out = self._apply_fused_estep() if self._fused_grads is not None else dict(self._fused_stats)
                self._fused_stats = {}
            self.trainer.teacher.after_step()
            return out
        self._remember(batch)
        out = self.e_step() if step % int(self.mcfg.estep_every) == 0 else {}
        # a teacher that keeps its own weights (ema) follows the shared ones, E-step included;
        # for the published method (trained: the live weights) this does nothing
        self.trainer.teacher.after_step()
        return out

    def _remember(self, batch):
        """E-step buffer: responses that have a teacher prompt (feedback), with their outcome."""
        success = batch.success(self.cfg.train.success_threshold)
        only_successes = self.estep_samples == "successes"
        prior, self._rollout_prior = self._rollout_prior, {}
        items = [{"prompt": batch.prompt_ids_of(i), "response": batch.response_ids[i],
                  "teacher_prompt": batch.teacher_prompt_ids[i], "success": bool(success[i]),
                  **({"prior": prior[i]} if i in prior else {})}
                 for i in range(batch.num_responses)
                 if bool(batch.teacher_mask[i]) and batch.response_ids[i] and (bool(success[i]) or not only_successes)]
        window = int(self.mcfg.estep_every) if self.mcfg.estep_buffer == "window" else 1
        self.buffer = (self.buffer + [items])[-window:]

    def _teacher_log_probs(self, items, mb, norm):
        """log q(y | x, C) per response of one E-step micro-batch; grad follows the caller."""
        t = self.trainer
        return t.sequence_log_probs(t.model, [items[i]["teacher_prompt"] for i in mb],
                                    [items[i]["response"] for i in mb], norm)

    def e_step(self) -> dict:
        items = [it for its in self.buffer for it in its]
        n_success = sum(it["success"] for it in items)
        n_failure = len(items) - n_success
        if not items:
            self.warn_once("estep-empty", "E-step buffer is empty (no response had feedback): E-step skipped")
            return {"estep_loss": None, "delta": self.delta, "estep_size": 0}
        if n_success == 0 or n_failure == 0:
            self.warn_once("estep-one-class", "E-step buffer holds only one class "
                                              f"({'successes' if n_failure == 0 else 'failures'}): using that term alone")
        t = self.trainer
        probe_before = self._probe()
        beta, norm = float(self.mcfg.beta), self.mcfg.length_norm
        mbs = self._estep_micro_batches(items)
        # log pi_prior(y|x) with the weights as they are now, before any E-step update;
        # prior_timing=rollout (a choice, docs/method.md): the values the M-step's student forward
        # gave at each response's own iteration, so no pass here
        prior_model = self.initial_prior if self.initial_prior is not None else t.model
        priors = []
        param = next(t.model.parameters())
        for mb in mbs:
            if self.prior_timing == "rollout" and all("prior" in items[i] for i in mb):
                priors.append(torch.tensor([items[i]["prior"] for i in mb], dtype=score_dtype(param.dtype),
                                           device=param.device))
                continue
            with torch.no_grad():
                priors.append(t.sequence_log_probs(prior_model, [items[i]["prompt"] for i in mb],
                                                   [items[i]["response"] for i in mb], norm))
        # BCO's delta: the running mean of the implicit reward, updated with this E-step's batch
        # *before* the loss. One micro-batch: its graph-carrying forward gives the mean (no extra
        # pass); several: a forward-only pass over the buffer first. delta_timing=after_loss (a
        # choice, docs/method.md): the loss uses the running mean as the previous E-steps left it,
        # and this batch's mean, read off the first epoch's graph-carrying forwards, moves it
        # afterwards; the first E-step (no running mean yet) stays exact.
        lagged = self.delta_timing == "after_loss" and self.delta is not None
        graph, rho_mean = None, None
        if not lagged:
            if len(mbs) == 1:
                graph = self._teacher_log_probs(items, mbs[0], norm)
                rhos = [L.implicit_reward(graph.detach(), priors[0], beta)]
            else:
                with torch.no_grad():
                    rhos = [L.implicit_reward(self._teacher_log_probs(items, mb, norm), prior, beta)
                            for mb, prior in zip(mbs, priors)]
            rho_mean = self._batch_mean(rhos, mbs)
            self.delta = L.update_running_delta(self.delta, rho_mean, float(self.mcfg.delta_momentum))
        total = 0.0
        epochs = int(self.mcfg.estep_epochs)
        first_rhos = []
        with t.learning_rate(self.mcfg.estep_lr):
            for epoch in range(epochs):
                t.optimizer.zero_grad(set_to_none=True)
                for mb, prior in zip(mbs, priors):
                    teacher = graph if graph is not None else self._teacher_log_probs(items, mb, norm)
                    graph = None                 # a second epoch scores the updated weights again
                    rho = L.implicit_reward(teacher, prior, beta)
                    if lagged and epoch == 0:
                        first_rhos.append(rho.detach())
                    success = torch.tensor([items[i]["success"] for i in mb])
                    loss = self._bco_share(rho, success, self.delta, n_success, n_failure)
                    loss.backward()
                    total += float(loss.detach())
                t.optimizer_step()
        if lagged:
            rho_mean = self._batch_mean(first_rhos, mbs)
            self.delta = L.update_running_delta(self.delta, rho_mean, float(self.mcfg.delta_momentum))
        return {"estep_loss": total / epochs, "delta": self.delta, "estep_rho_mean": rho_mean,
                "estep_size": len(items), "estep_success_frac": n_success / len(items),
                **self._probe_stats(probe_before, self._probe())}

    def _batch_mean(self, rhos, mbs) -> float:
        """Mean implicit reward over the whole E-step batch (all processes)."""
        rho_sum, rho_n = self._global_sum([sum(float(r.double().sum()) for r in rhos),
                                           float(sum(len(mb) for mb in mbs))])
        return rho_sum / max(rho_n, 1.0)

    # Two hooks that multi-process training replaces (vpd_bench/training/distributed.py): which E-step
    # micro-batches this process runs, and summing a statistic over processes.
    def _estep_micro_batches(self, items) -> list[list[int]]:
        return self._token_budget_batches(items, int(self.trainer.cfg.train.micro_batch_size),
                                          by_group=self.mcfg.get("estep_batching", "group") == "group")

    @staticmethod
    def _global_sum(values: list[float]) -> list[float]:
        return values

    @staticmethod
    def _token_budget_batches(items, micro_batch_size: int, by_group: bool = False) -> list[list[int]]:
        """E-step micro-batches holding no more padded tokens than an M-step micro-batch of the
        same responses: teacher prompts are longer than student prompts, so a plain count of
        rows would raise peak memory above the M-step's (benchmarks/README.md).

        ``by_group=False`` (``method.estep_batching=length``): rows are taken shortest first across
        the whole buffer, so that each micro-batch pads little. ``by_group=True`` (``group``, the
        default): the rows of one group (the same student prompt, i.e. the same problem and
        iteration's samples) stay together, groups taken shortest first, and a micro-batch holds
        whole groups wherever they fit. The teacher prompts of a group share the problem and the
        demonstration, so ``response_logits`` runs that common prefix once (and the prior pass
        runs the group's identical student prompt once), where rows of different problems share
        only the system prompt. Same rows, same budget, same loss up to float rounding (the
        E-step's class means are over the whole buffer); fewer tokens through the model."""
        if not items:
            return []
        student_len = max(len(it["prompt"]) + len(it["response"]) for it in items)
        budget = micro_batch_size * student_len

        def width(j):
            return len(items[j]["teacher_prompt"]) + len(items[j]["response"])

        if by_group:
            groups: dict[tuple, list[int]] = {}
            for j in range(len(items)):
                groups.setdefault(tuple(items[j]["prompt"]), []).append(j)
            units = sorted((sorted(rows, key=width) for rows in groups.values()),
                           key=lambda rows: (width(rows[-1]), rows[0]))
        else:
            units = [[j] for j in sorted(range(len(items)), key=width)]
        batches, current, widest = [], [], 0
        for unit in units:
            unit_widest = max(width(j) for j in unit)
            if current and (len(current) + len(unit)) * max(widest, unit_widest) > budget:
                batches.append(current)         # the unit does not fit beside what is there: a new micro-batch
                current, widest = [], 0
            for j in unit:                      # a unit wider than the budget on its own is split in order
                if current and (len(current) + 1) * max(widest, width(j)) > budget:
                    batches.append(current)
                    current, widest = [], 0
                current.append(j)
                widest = max(widest, width(j))
        return batches + [current] if current else batches

    @staticmethod
    def _bco_share(rho, success, delta, n_success, n_failure):
        """This micro-batch's share of L_E: per-class means are over the whole buffer, so each
        class term is weighted by (its count here) / (its count in the buffer)."""
        loss = rho.sum() * 0.0
        for cls, n_total in ((True, n_success), (False, n_failure)):
            sel = success == cls
            if n_total and bool(sel.any()):
                part, _ = L.bco_loss(rho[sel], success[sel], delta)
                loss = loss + part * (int(sel.sum()) / n_total)
        return loss

    def state_dict(self):
        return {"delta": self.delta, "buffer": self.buffer,
                "initial_prior": self.initial_prior.state_dict() if self.initial_prior is not None else None}

    def load_state_dict(self, state):
        self.delta = state.get("delta")
        self.buffer = state.get("buffer", [])
        if self.initial_prior is not None and state.get("initial_prior") is not None:
            self.initial_prior.load_state_dict(state["initial_prior"])


def _rows(packed: Packed, rows: slice) -> Packed:
    """Some rows of a packed batch (prompt_width unchanged)."""
    return Packed(packed.input_ids[rows], packed.attention_mask[rows], packed.position_ids[rows],
                  packed.response_ids[rows], packed.response_mask[rows], packed.prompt_width)
