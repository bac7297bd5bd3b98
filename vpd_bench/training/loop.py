"""The training loop as named stages:

    generate -> verify -> build feedback and teacher prompts -> score + loss -> update student
             -> update teacher (EMA / VPD's E-step) -> log, checkpoint, evaluate

Every method runs through the same stages on the same rollout batch; a method file only
supplies its teacher context, its loss and its teacher update (``vpd_bench.method``).
"""
from __future__ import annotations

import logging
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vpd_bench import losses as L
from vpd_bench.rollout.batch import RolloutBatch
from vpd_bench.config import feedback_label, to_yaml
from vpd_bench.training.distributed import context as dist_context
from vpd_bench.rollout.engine import HFEngine
from vpd_bench.errors import UserError
from vpd_bench.evaluation.policy import evaluate_policy, safe_verify
from vpd_bench.training.feedback import CombinedFeedback
from vpd_bench.method import MicroBatch, build_method, teacher_gain
from vpd_bench.models.loading import LoadedModel, load_model
from vpd_bench.evaluation.results import RunResult, git_info, read_results, versions, write_results
from vpd_bench.rollout.scoring import micro_batches, pack, response_logits, token_log_probs
from vpd_bench.training.store import RunStore, load_weights
from vpd_bench.training.teacher_prompt import TeacherPrompt, build_teacher_prompt, encode_prompt, render_prompt
from vpd_bench.training.teachers import FrozenTeacher, build_teacher
from vpd_bench.evaluation.results import RESULTS_FILE

log = logging.getLogger("vpd_bench")


def _adamw(params, **kw):
    """AdamW with the fused kernel where the device and dtype have one (about 6x faster optimizer
    steps on CPU, measured in benchmarks/), else the standard implementation."""
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kw)


class FeedbackContext:
    """What feedback sources may use: thresholds, seeds, and the policy for self-critique."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.success_threshold = float(trainer.cfg.train.success_threshold)
        self.allow_self_demonstration = bool(trainer.cfg.teacher_prompt.allow_self_demonstration)
        # configs saved before session 25 lack the key: they showed the message to every response
        self.feedback_on_success = bool(trainer.cfg.teacher_prompt.get("feedback_on_success", True))
        # what ended a response: a sibling shown as a demonstration is shown without it
        self.stop_strings = tuple(str(s) for s in (trainer.cfg.rollout.get("stop") or ()))
        self.seed = int(trainer.cfg.seed)

    def encode_prompt(self, text: str) -> list[int]:
        return self.trainer.encode_prompt(text)

    def generate_texts(self, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[str]:
        t = self.trainer
        gen = t.engine.generate(prompts, 1, max_new_tokens, temperature=float(t.cfg.rollout.temperature),
                                seed=seed)
        return [t.tokenizer.decode(r, skip_special_tokens=True) for r in gen.response_ids]


class Trainer:
    def __init__(self, cfg, run_dir: str | Path, loaded: LoadedModel | None = None, progress: bool = True):
        self.cfg = cfg
        self.dist = dist_context()         # one process: rank 0 of 1, every hook below is the identity
        self.progress = progress and self.dist.is_main
        self.store = RunStore(run_dir) if self.dist.is_main else self.dist.follower_store(run_dir)
        torch.manual_seed(int(cfg.seed))
        random.seed(int(cfg.seed))
        loaded = loaded or load_model(cfg.model)
        self.model_info = loaded.info
        self.tokenizer = loaded.tokenizer
        self.model = self.dist.place(self._maybe_lora(loaded.model))
        self.model.train()
        from vpd_bench.tasks import build_task
        self.task = build_task(cfg)
        self.train_problems = self.task.train_problems()
        if not self.train_problems:
            raise UserError(f"task '{cfg.task.name}' has no training problems")
        from vpd_bench.training.splits import hold_out_validation      # the last training problems, never trained on (eval.split)
        self.train_problems, self.validation_problems = hold_out_validation(
            self.train_problems, int(cfg.eval.get("validation_problems", 0)), str(cfg.eval.get("split", "heldout")))
        self.chat = bool(cfg.model.chat) and cfg.task.prompt_format == "chat" and cfg.setting != "cold_start"
        self.engine = self._build_engine()
        self.feedback = CombinedFeedback(cfg.feedback)
        self.feedback_context = FeedbackContext(self)
        self.method = build_method(cfg, self)
        self.dist.adapt_method(self.method)
        strategy = self.method.teacher_strategy
        self.teacher = build_teacher(strategy, self.model, cfg.method.get("teacher_tau", 0.0)) if strategy else None
        self.reference = FrozenTeacher(self.model) if getattr(self.method, "needs_reference", False) else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = _adamw(params, lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay),
                                betas=tuple(cfg.train.adam_betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.wall_time = 0.0
        self.skipped_updates = 0       # optimizer steps skipped for a non-finite gradient norm
        self.nonfinite_streak = 0
        self.tokens_generated = 0
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.dist.barrier()                # every rank has read the run store before rank 0 writes

    # -- construction helpers -------------------------------------------------------------------
    def _maybe_lora(self, model):
        lcfg = self.cfg.train.lora
        if not lcfg.enabled:
            return model
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise UserError("train.lora.enabled=true needs peft: pip install peft") from None
        target = lcfg.target_modules
        target = target if isinstance(target, str) else list(target)
        return get_peft_model(model, LoraConfig(r=int(lcfg.r), lora_alpha=int(lcfg.alpha),
                                                lora_dropout=float(lcfg.dropout), target_modules=target))

    def _build_engine(self):
        ecfg = self.cfg.engine
        if ecfg.name == "hf":
            return HFEngine(self.model, self.tokenizer, bool(ecfg.prompt_sharing), bool(ecfg.drop_finished),
                            bool(self.cfg.train.bf16_autocast), ecfg.get("dtype"))
        if ecfg.name == "vllm":
            from vpd_bench.rollout.vllm import VLLMEngine
            return VLLMEngine.from_config(self.cfg, self.model, self.tokenizer, rank=self.dist.rank,
                                          distributed=self.dist.enabled)
        raise UserError(f"unknown engine '{ecfg.name}' (hf, vllm)")

    def _lr_factor(self, step: int) -> float:
        t = self.cfg.train
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        if t.lr_schedule == "constant":
            return 1.0
        frac = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        if t.lr_schedule == "linear":
            return 1.0 - frac
        if t.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        raise UserError(f"train.lr_schedule must be constant, linear or cosine, got {t.lr_schedule!r}")

    def encode_prompt(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, render_prompt(self.tokenizer, text, self.chat))

    # -- stage 1: generate ------------------------------------------------------------------------
    def sample_problems(self, step: int) -> list:
        """Prompts for a step: an epoch-wise seeded shuffle, so step s always gets the same prompts."""
        B, n = int(self.cfg.train.prompts_per_step), len(self.train_problems)
        out = []
        for j in range((step - 1) * B, step * B):
            epoch, pos = divmod(j, n)
            order = list(range(n))
            random.Random(int(self.cfg.seed) * 1_000_003 + epoch).shuffle(order)
            out.append(self.train_problems[order[pos]])
        return self.dist.shard(out, allow_empty=False)   # this rank's slice

    def generate(self, step: int) -> RolloutBatch:
        return self.rollout(self.sample_problems(step), step)

    def rollout(self, problems: list, step: int) -> RolloutBatch:
        """G = train.group_size responses to each problem, sampled with the rollout settings and the
        step's seed."""
        texts = [self.task.render_prompt(p) for p in problems]
        prompt_texts = [render_prompt(self.tokenizer, t, self.chat) for t in texts]
        prompt_ids = [encode_prompt(self.tokenizer, t) for t in prompt_texts]
        r = self.cfg.rollout
        G = int(self.cfg.train.group_size)
        gen = self.engine.generate(prompt_ids, G, int(r.max_new_tokens), temperature=float(r.temperature),
                                   top_p=float(r.top_p), top_k=int(r.top_k), stop=list(r.stop),
                                   seed=int(self.cfg.seed) * 1_000_003 + step)
        batch = RolloutBatch(step=step, group_size=G, problems=problems, prompt_texts=prompt_texts,
                             prompt_ids=prompt_ids)
        batch.response_ids = gen.response_ids
        batch.rollout_logp = gen.logprobs
        batch.finish_reasons = gen.finish_reasons
        batch.response_texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in gen.response_ids]
        self.tokens_generated += self.dist.sum_int(sum(len(x) for x in gen.response_ids))
        return batch

    # -- stage 2: verify -------------------------------------------------------------------------
    def verify(self, batch: RolloutBatch) -> None:
        problems = [batch.problem_of(i) for i in range(batch.num_responses)]
        verdicts = safe_verify(self.task, problems, batch.response_texts, "train")
        batch.verdicts = verdicts
        batch.rewards = torch.tensor([float(v.reward) for v in verdicts])
        batch.statuses = [v.status for v in verdicts]
        batch.verdict_feedback = [v.feedback or "" for v in verdicts]

    # -- stage 3: feedback and teacher prompts ---------------------------------------------------
    def build_teacher_context(self, batch: RolloutBatch) -> None:
        fbs = self.method.teacher_feedback(batch)
        n = batch.num_responses
        if fbs is None:
            batch.teacher_mask = torch.zeros(n, dtype=torch.bool)
            batch.teacher_prompt_ids = [None] * n
            batch.teacher_prompt_texts = [None] * n
            batch.teacher_truncated = [False] * n
            return
        batch.feedback = fbs
        prompts = self.teacher_prompts(batch, fbs)
        batch.teacher_prompt_texts = [p.text for p in prompts]
        batch.teacher_prompt_ids = [p.ids for p in prompts]
        batch.teacher_truncated = [p.truncated for p in prompts]
        batch.teacher_mask = torch.tensor([p.ids is not None and len(batch.response_ids[i]) > 0
                                           for i, p in enumerate(prompts)], dtype=torch.bool)

    def teacher_prompts(self, batch: RolloutBatch, fbs: list) -> list[TeacherPrompt]:
        """The teacher prompt of each response from its feedback (``ids`` None: no teacher signal)."""
        tp = self.cfg.teacher_prompt
        return [build_teacher_prompt(self.task.render_prompt(batch.problem_of(i)), fbs[i], tp, self.tokenizer,
                                     self.chat, int(tp.max_length), tp.truncation) for i in range(batch.num_responses)]

    # -- stage 4+5: score, loss, update the student ----------------------------------------------
    def _micro_batch(self, batch: RolloutBatch, idx: list[int], old_logp=None) -> MicroBatch:
        device = next(self.model.parameters()).device
        responses = [batch.response_ids[i] for i in idx]
        R = max(1, max(len(r) for r in responses))
        student = pack([batch.prompt_ids_of(i) for i in idx], responses, self.pad_id, device, width=R)
        rollout = torch.zeros(len(idx), R)
        for j, i in enumerate(idx):
            lp = batch.rollout_logp[i]
            rollout[j, :len(lp)] = torch.tensor(lp)
        rows = batch.teacher_mask[idx]
        teacher = None
        temp, bf16 = float(self.cfg.rollout.temperature), bool(self.cfg.train.bf16_autocast)
        if self.teacher is not None and bool(rows.any()):
            sel = [i for i, keep in zip(idx, rows.tolist()) if keep]
            teacher = pack([batch.teacher_prompt_ids[i] for i in sel], [batch.response_ids[i] for i in sel],
                           self.pad_id, device, width=R)
        adv = batch.extras.get("advantages")
        return MicroBatch(
            indices=idx, student=student, rollout_logp=rollout.to(device), rewards=batch.rewards[idx],
            success=batch.success(float(self.cfg.train.success_threshold))[idx], teacher_rows=rows, teacher=teacher,
            student_logits_fn=lambda: response_logits(self.model, student, temp, bf16),
            teacher_logits_fn=(lambda: self.teacher.logits(teacher, temp, bf16)) if teacher is not None else None,
            reference_logits_fn=(lambda: self.reference.logits(student, temp, bf16)) if self.reference else None,
            old_logp=old_logp, advantages=adv[idx] if adv is not None else None, batch_extras=batch.extras)

    def update_student(self, batch: RolloutBatch) -> dict:
        prep = self.method.prepare(batch)
        self.dist.sync_normalizers(batch)     # loss normalisers count every rank's slice
        mbs = micro_batches(list(range(batch.num_responses)), int(self.cfg.train.micro_batch_size))
        old = {}
        epochs = max(1, int(self.method.ppo_epochs))
        if epochs > 1:          # the behaviour policy's log-probs, once, before any update
            with torch.no_grad():
                for idx in mbs:
                    mb = self._micro_batch(batch, idx)
                    old[tuple(idx)] = mb.student_token_logp().detach()
        losses, ent_sum, ent_n, stats, grad_norm = [], 0.0, 0.0, {}, 0.0
        for epoch in range(epochs):
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for idx in mbs:
                mb = self._micro_batch(batch, idx, old.get(tuple(idx)))
                loss = self.method.loss(mb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {batch.step}; lower train.lr or check the data")
                loss.backward()
                total += float(loss.detach())
                if epoch == 0:
                    with torch.no_grad():
                        mask = mb.response_mask
                        ent_sum += float((L.token_entropy(mb.student_logits().detach()) * mask).sum())
                        ent_n += float(mask.sum())
                    for k, v in mb.stats.items():
                        stats.setdefault(k, []).extend(v)
                del mb
            self.method.before_optimizer_step()
            grad_norm = self.optimizer_step()
            losses.append(total)
        self.scheduler.step()
        out = {"loss": sum(losses) / len(losses), "grad_norm": grad_norm, "entropy": ent_sum / max(ent_n, 1.0), **prep}
        for key in ("divergence", "clip_frac"):
            if key in stats:
                num, den = sum(a for a, _ in stats[key]), sum(b for _, b in stats[key])
                out[key] = num / den if den else None
        for key in ("divergence", "clip_frac"):
            out.setdefault(key, None)        # every health key is present in every row (null if n/a)
        out["teacher_gain"] = teacher_gain(stats.get("gain", []))
        stop = stats.get("stop", [])
        out["stop_logp_student"] = float(torch.cat([a for a, _ in stop]).mean()) if stop else None
        out["stop_logp_teacher"] = float(torch.cat([b for _, b in stop]).mean()) if stop else None
        return out

    def optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.dist.sync_gradients(params)
        clip = float(self.cfg.train.grad_clip)
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if not bool(torch.isfinite(norm)):
            # an inf/nan gradient would turn every weight into nan through the clip's scale:
            # skip this update (the weights stay as they were), say so, and stop if it persists
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            self.nonfinite_streak += 1
            log.warning("non-finite gradient norm (%s) at step %d: update skipped (%d so far)",
                        float(norm), self.step, self.skipped_updates)
            if self.nonfinite_streak >= 3:
                raise FloatingPointError(f"non-finite gradients in {self.nonfinite_streak} updates in a row (step "
                                         f"{self.step}); lower train.lr (or method.estep_lr), set train.grad_clip, "
                                         f"or train in float32 (train.bf16_autocast=false)")
            return float(norm)
        self.nonfinite_streak = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def sync_engine(self) -> dict:
        """Push the current weights into a rollout engine that keeps its own copy (vLLM) and return
        its parity-probe metrics; the HF engine shares the trainer's model and has nothing to do."""
        sync = getattr(self.engine, "sync_weights", None)
        return (sync(self.model) or {}) if sync is not None else {}

    @contextmanager
    def learning_rate(self, lr: float | None):
        """Temporarily run the optimizer at another learning rate (VPD's E-step)."""
        saved = [g["lr"] for g in self.optimizer.param_groups]
        if lr is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = float(lr)
        try:
            yield
        finally:
            for g, v in zip(self.optimizer.param_groups, saved):
                g["lr"] = v

    def sequence_log_probs(self, model, prompts, responses, length_norm: str = "sum") -> torch.Tensor:
        """log p(response | prompt) per sequence (sum or mean over tokens); grad follows the caller."""
        device = next(model.parameters()).device
        packed = pack(prompts, responses, self.pad_id, device)
        logits = response_logits(model, packed, float(self.cfg.rollout.temperature), bool(self.cfg.train.bf16_autocast))
        tok = token_log_probs(logits, packed.response_ids)
        return L.sequence_log_prob(tok, packed.response_mask, length_norm)

    # -- one iteration ------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        t0 = time.perf_counter()
        batch = self.generate(step)
        t_gen = time.perf_counter()
        self.verify(batch)
        t_ver = time.perf_counter()
        self.build_teacher_context(batch)
        metrics = self.update_student(batch)
        t_upd = time.perf_counter()
        metrics.update(self.method.after_update(batch, step))
        metrics.update(self.sync_engine())
        # a method's diagnostics (VPD's E-step probe) are an instrument, not part of the algorithm:
        # reported as diagnostics_s and kept out of the step time and the wall-clock budget
        diag = float(metrics.pop("diagnostics_s", 0.0) or 0.0)
        t_end = time.perf_counter() - diag
        self.wall_time += t_end - t0
        success = batch.success(float(self.cfg.train.success_threshold)).float()
        r = batch.rewards.view(-1, batch.group_size)
        has_teacher = self.teacher is not None
        metrics.update({
            "step": step,
            "reward_mean": float(batch.rewards.mean()),
            "pass_rate": float(success.mean()),
            "no_signal_frac": float((r.max(1).values == r.min(1).values).float().mean()),
            "masked_teacher_frac": float(1 - batch.teacher_mask.float().mean()) if has_teacher else None,
            "teacher_trunc_frac": (sum(batch.teacher_truncated) / batch.num_responses) if has_teacher else None,
            "response_len": float(batch.response_lengths().mean()),
            **_length_profile(batch),
            "lr": self.optimizer.param_groups[0]["lr"],
            "step_time_s": t_end - t0, "generate_s": t_gen - t0, "verify_s": t_ver - t_gen,
            "update_s": t_upd - t_ver, "teacher_update_s": t_end - t_upd, "diagnostics_s": diag,
            "wall_time_s": self.wall_time, "tokens_generated": self.tokens_generated,
            "skipped_updates": self.skipped_updates,
        })
        self._record_samples(batch)
        self.last_batch = batch
        return metrics

    def _record_samples(self, batch: RolloutBatch) -> None:
        n = min(batch.num_responses, int(self.cfg.train.samples_per_step))
        for i in range(n):
            fb = batch.feedback[i] if batch.feedback else None
            self.store.samples.append({
                "step": batch.step, "index": i, "problem_id": batch.problem_of(i).id,
                "prompt": batch.prompt_texts[i // batch.group_size], "response": batch.response_texts[i],
                "reward": float(batch.rewards[i]), "status": batch.statuses[i],
                "feedback": batch.verdict_feedback[i],
                "teacher_demonstration": fb.demonstration if fb else None,
                "teacher_feedback": fb.text if fb else None,
                "teacher_prompt": batch.teacher_prompt_texts[i] if batch.teacher_prompt_texts else None,
                "finish_reason": batch.finish_reasons[i]})

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict:
        ecfg = self.cfg.eval
        validation = str(ecfg.get("split", "heldout")) == "validation"
        problems = list(self.validation_problems) if validation else self.task.eval_problems()
        if int(ecfg.num_problems) > 0:
            problems = problems[:int(ecfg.num_problems)]
        t0 = time.perf_counter()
        problems = self.dist.shard(problems)
        records: list[dict] = []
        metrics = evaluate_policy(self.engine, self.encode_prompt, self.task, problems, ecfg,
                                  seed=int(self.cfg.seed) * 7_000_003 + 999, stop=list(self.cfg.rollout.stop),
                                  step=step, records=records)
        metrics = self.dist.merge_eval(metrics)     # problem-weighted means over the ranks' shards
        records = [r for part in self.dist.gather_objects(records) for r in part]
        row = {"step": step, "wall_time_s": self.wall_time, "eval_time_s": time.perf_counter() - t0,
               "metrics": metrics}
        self.store.evals.truncate_after(step - 1)
        self.store.evals.append(row)
        self.store.eval_samples.truncate_after(step - 1)
        for r in records:
            self.store.eval_samples.append(r)
        self._probe_teacher(step)
        return metrics

    def _probe_teacher(self, step: int) -> None:
        n = int(self.cfg.eval.get("teacher_probe", 0) or 0)
        if n <= 0:
            return
        if self.dist.enabled:
            log.warning("eval.teacher_probe runs in one process only: skipped")
            return
        if getattr(self, "_teacher_probe", None) is None:
            from vpd_bench.training.teacher_probe import TeacherProbe
            self._teacher_probe = TeacherProbe(self, n)
        row = self._teacher_probe.measure(step)
        if row is not None:
            self.store.teacher_probe.truncate_after(step - 1)
            self.store.teacher_probe.append(row)

    # -- checkpoints ------------------------------------------------------------------------------------
    def checkpoint(self, step: int) -> None:
        state = {
            "step": step, "wall_time": self.wall_time, "tokens_generated": self.tokens_generated,
            "skipped_updates": self.skipped_updates,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher else {},
            "method": self.method.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            # the logs up to this step: a resumed run rebuilds them from here, so a damaged or
            # truncated JSONL file cannot lose steps the model state already holds
            "logs": {name: list(jl.rows) for name, jl in self._logs().items()},
            "git": dict(getattr(self, "git", None) or {}),      # the code that trained up to here
        }
        self.store.flush()
        self.store.save_checkpoint(step, state, keep=int(self.cfg.train.keep_checkpoints), model=self.model,
                                   tokenizer=self.tokenizer)

    def restore(self) -> bool:
        path = self.store.latest_checkpoint()
        if path is None:
            return False
        state = self.store.load_checkpoint(path)
        if "model" in state:                    # a checkpoint of an earlier version: weights in state.pt
            self.model.load_state_dict(state["model"])
        else:
            load_weights(self.model, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.teacher:
            self.teacher.load_state_dict(state["teacher"])
        self.method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.step, self.wall_time, self.tokens_generated = state["step"], state["wall_time"], state["tokens_generated"]
        self.skipped_updates = int(state.get("skipped_updates", 0))     # absent in checkpoints before it existed
        self._checkpoint_git = state.get("git") or None      # absent in checkpoints before it existed
        saved = state.get("logs") or {}
        for name, jl in self._logs().items():
            if name in saved:                   # the checkpoint's copy is authoritative
                jl.rows = list(saved[name])
            jl.truncate_after(self.step)
        self.sync_engine()
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    def _logs(self) -> dict:
        st = self.store
        return {"metrics": st.metrics, "samples": st.samples, "evals": st.evals, "eval_samples": st.eval_samples,
                "teacher_probe": st.teacher_probe}

    def _missing_steps(self) -> list[int]:
        logged = {r.get("step") for r in self.store.metrics.rows}
        return [s for s in range(1, self.step + 1) if s not in logged]

    # -- the run ------------------------------------------------------------------------------------------
    def result_record(self, status: str) -> RunResult:
        cfg = self.cfg
        final_metrics = self.store.metrics.rows[-1] if self.store.metrics.rows else {}
        return RunResult(
            run={"method": cfg.method.name, "task": cfg.task.name, "feedback": feedback_label(cfg),
                 "model": cfg.model.name, "seed": int(cfg.seed), "preset": cfg.get("preset_name"),
                 "run_dir": str(self.store.dir), "setting": cfg.setting, "task_details": self.task.describe(),
                 "model_details": {k: v for k, v in self.model_info.items() if k != "load_time_s"}},
            config=OmegaConf.to_container(cfg, resolve=True), status=status, versions=versions(), git=getattr(self, "git", None) or git_info(),
            engine=OmegaConf.to_container(cfg.engine, resolve=True),
            sampling={**OmegaConf.to_container(cfg.rollout, resolve=True), "group_size": int(cfg.train.group_size)},
            steps_completed=self.step, wall_time_s=self.wall_time, tokens_generated=self.tokens_generated,
            eval_history=self.store.evals.rows,
            final=self.store.evals.rows[-1]["metrics"] if self.store.evals.rows else {},
            train_final={k: final_metrics.get(k) for k in ("reward_mean", "pass_rate")},
            higher_is_better={"pass@1": True, "pass@k": True, "avg@k": True, "greedy": True},
        )

    def run(self, resume: bool = False) -> RunResult:
        cfg = self.cfg
        if resume:
            if not self.restore():
                if any(jl.rows for jl in self._logs().values()):
                    log.warning("no checkpoint in %s: its logs cannot be matched to a model state; starting afresh "
                                "from step 0", self.store.dir)
                    for jl in self._logs().values():
                        jl.rows = []
                else:
                    log.info("no checkpoint in %s: starting from step 0", self.store.dir)
        elif self.store.latest_checkpoint() is not None or self.store.metrics.rows:
            raise UserError(f"{self.store.dir} already holds a run; pass --resume to continue it, "
                            f"or choose another --out")
        # the code this run executes: read when it starts, not when it ends (the checkout may move on
        # while a long sweep runs); a resumed run that continues under another revision lists both
        self.git = git_info()
        previous = previous_result(self.store.dir) if resume else None
        earlier = (getattr(self, "_checkpoint_git", None) or (previous.git if previous is not None else None)
                   if self.step > 0 else None)
        if earlier and earlier.get("revision") == self.git.get("revision") and earlier.get("resumed_from"):
            self.git["resumed_from"] = earlier["resumed_from"]       # an earlier change of code stays on record
        elif earlier and earlier.get("revision") not in (None, self.git.get("revision")):
            self.git["resumed_from"] = dict(earlier)                  # nested: each earlier revision in turn
            log.warning("resuming %s at step %d under git revision %s, but its checkpoint was written at %s: the "
                        "first %d steps ran other code. results.json records both (git.resumed_from). If the change "
                        "touches training, rewards or scoring, delete the run folder and start it afresh",
                        self.store.dir, self.step, str(self.git.get("revision"))[:12],
                        str(earlier.get("revision"))[:12], self.step)
        self.store.remove_leftovers()
        self.store.write_config(to_yaml(cfg))
        steps = int(cfg.train.steps)
        evaluate = int(cfg.eval.num_problems) >= 0 and int(cfg.eval.samples) + int(bool(cfg.eval.greedy)) > 0
        if evaluate and self.step == 0 and not self.store.evals.rows:
            self.evaluate(0)
            self.store.flush()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, initial=self.step, desc=f"{cfg.method.name}/{cfg.task.name}", unit="step",
                       dynamic_ncols=True, disable=None)   # disable=None: no bar when not a terminal
        tb = self._tensorboard()
        last_saved = self.step
        try:
            for step in range(self.step + 1, steps + 1):
                metrics = self.dist.reduce_metrics(self.train_step(step))
                self.step = step
                if evaluate and int(cfg.eval.every) > 0 and step % int(cfg.eval.every) == 0 and step < steps:
                    metrics.update({f"eval/{k}": v for k, v in self.evaluate(step).items()})
                self.store.metrics.append(metrics)
                self._log_step(metrics, bar, tb)
                if step % int(cfg.train.checkpoint_every) == 0 or step == steps:
                    if step == steps and evaluate:
                        self.evaluate(step)
                    self.checkpoint(step)
                    last_saved = step
                else:
                    self.store.flush()
        except KeyboardInterrupt:
            if self.step > last_saved:
                log.warning("interrupted: saving a checkpoint at step %d", self.step)
                self.checkpoint(self.step)
            if self.dist.is_main:
                write_results(self.store.results_path, self.result_record("partial"))
            raise
        finally:
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
        missing = self._missing_steps()
        if missing:
            log.error("metrics.jsonl lacks the records of steps %s: results.json is marked partial", missing[:10])
        result = self.result_record("partial" if missing else "complete")
        if self.dist.is_main:
            write_results(self.store.results_path, result)
            if int(cfg.train.keep_checkpoints) == 0:      # sweeps that only need the numbers
                self.store.remove_checkpoints()
        return result

    def _log_step(self, m: dict, bar, tb) -> None:
        def f(x, nd=3):
            return "-" if x is None else f"{x:.{nd}f}"
        line = (f"step {m['step']}/{self.cfg.train.steps} loss {f(m['loss'], 4)} reward {f(m['reward_mean'])} "
                f"pass {f(m['pass_rate'])} len {f(m['response_len'], 1)} gnorm {f(m['grad_norm'])} "
                f"{m['step_time_s']:.1f}s")
        if m.get("estep_loss") is not None:
            line += f" | E-step loss {f(m['estep_loss'], 4)} delta {f(m['delta'], 4)}"
        if self.dist.is_main:
            with open(self.store.dir / "train.log", "a") as fh:
                fh.write(line + "\n")
        if bar is not None and not bar.disable:
            bar.set_postfix(loss=f(m["loss"], 4), reward=f(m["reward_mean"]), refresh=False)
            bar.update(1)
            bar.write(line)
        else:
            log.info(line)
        if tb is not None:
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "step":
                    tb.add_scalar(k, v, m["step"])

    def _tensorboard(self):
        if not self.cfg.train.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.tensorboard=true needs tensorboard: pip install 'vpd-bench[tensorboard]'") from None
        return SummaryWriter(str(self.store.dir / "tb"))


def _length_profile(batch: RolloutBatch) -> dict:
    """Length drift: quantiles of the response length and the share cut at the token limit."""
    lengths = batch.response_lengths().float()
    q = torch.quantile(lengths, torch.tensor([0.1, 0.5, 0.9])).tolist() if lengths.numel() else [None] * 3
    reasons = batch.finish_reasons or []
    return {"response_len_p10": q[0], "response_len_p50": q[1], "response_len_p90": q[2],
            "cut_frac": (sum(r == "length" for r in reasons) / len(reasons)) if reasons else None}


def previous_result(run_dir: Path):
    p = Path(run_dir) / RESULTS_FILE
    try:
        return read_results(p) if p.exists() else None
    except (ValueError, KeyError):
        return None
