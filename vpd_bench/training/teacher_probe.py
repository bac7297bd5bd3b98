"""The teacher probe: does the network get better at reading feedback? (the paper's mechanism,
measured directly; issue 13 §3).

A fixed set of probe items is built once, with the initial weights, from training problems: the
student's greedy response to the problem, kept when it *fails*, the verifier's feedback C on it,
and a gold continuation y* (the data set's reference solution, else a line ending in
``\\boxed{answer}``). At every evaluation, with the current weights, the probe logs

- ``probe_logratio``: the mean over items of the per-token mean of
  ``log q(y* | x, C) - log pi(y* | x)``: how much reading the feedback raises the probability of
  the right answer;
- ``teacher_pass``: the greedy pass rate of the network reading the teacher prompt (x and C);
- ``student_pass``: its greedy pass rate on the plain prompts of the same problems.

It probes the shared network (the student's weights) reading the teacher prompt: for VPD that is
the teacher; for a method whose teacher is a separate copy (EMA, frozen) it measures the network
that copy follows. Forward passes and greedy decoding only: it uses no random numbers and does
not change training. Items go to ``teacher_probe_items.json`` in the run folder (so a resumed run
probes the same items), one row per evaluation to ``teacher_probe.jsonl``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from vpd_bench.rollout.batch import Feedback
from vpd_bench.evaluation.results import atomic_write_text
from vpd_bench.training.teacher_prompt import build_teacher_prompt

log = logging.getLogger("vpd_bench")

ITEMS_FILE = "teacher_probe_items.json"


def gold_continuation(problem) -> str:
    if problem.reference:
        return str(problem.reference)
    return f"The final answer is \\boxed{{{problem.answer}}}."


def _greedy(trainer, prompts: list[list[int]]) -> list[str]:
    t = trainer
    gen = t.engine.generate(prompts, 1, int(t.cfg.rollout.max_new_tokens), greedy=True, seed=0,
                            stop=list(t.cfg.rollout.stop))
    return [t.tokenizer.decode(r, skip_special_tokens=True) for r in gen.response_ids]


def _teacher_prompt(trainer, problem, feedback: str):
    t, tp = trainer, trainer.cfg.teacher_prompt
    return build_teacher_prompt(t.task.render_prompt(problem), Feedback(text=feedback), tp, t.tokenizer, t.chat,
                                int(tp.max_length), "left" if tp.truncation == "error" else tp.truncation)


def build_items(trainer, n_items: int, max_problems: int | None = None) -> list[dict]:
    """Probe items from the first training problems whose greedy student response fails."""
    t = trainer
    problems = list(t.train_problems)[:max_problems or 4 * n_items]
    texts = _greedy(t, [t.encode_prompt(t.task.render_prompt(p)) for p in problems])
    verdicts = t.task.verify_batch(problems, texts, split="train")
    items = []
    for p, text, v in zip(problems, texts, verdicts):
        if v.reward >= float(t.cfg.train.success_threshold) or not (v.feedback or "").strip():
            continue
        items.append({"problem_id": p.id, "response": text, "feedback": v.feedback, "gold": gold_continuation(p)})
        if len(items) >= n_items:
            break
    return items


class TeacherProbe:
    def __init__(self, trainer, n_items: int):
        self.t = trainer
        self.n_items = int(n_items)
        self.items: list[dict] | None = None
        self.by_id = {p.id: p for p in trainer.train_problems}

    def _load_or_build(self) -> list[dict]:
        path = Path(self.t.store.dir) / ITEMS_FILE
        if path.exists():
            return json.loads(path.read_text())
        items = build_items(self.t, self.n_items)
        if self.t.dist.is_main:
            atomic_write_text(path, json.dumps(items, indent=1) + "\n")
        if len(items) < self.n_items:
            log.warning("teacher probe: only %d of %d probe items (the initial model fails few training problems "
                        "with feedback)", len(items), self.n_items)
        return items

    @torch.no_grad()
    def measure(self, step: int) -> dict | None:
        t = self.t
        if self.items is None:
            self.items = self._load_or_build()
        items = [it for it in self.items if it["problem_id"] in self.by_id]
        if not items:
            return None
        problems = [self.by_id[it["problem_id"]] for it in items]
        student_prompts = [t.encode_prompt(t.task.render_prompt(p)) for p in problems]
        teacher = [_teacher_prompt(t, p, it["feedback"]) for p, it in zip(problems, items)]
        keep = [i for i, tp in enumerate(teacher) if tp.ids is not None]
        gold = [t.tokenizer.encode(items[i]["gold"], add_special_tokens=False) for i in keep]
        was_training = t.model.training
        t.model.eval()
        try:
            q = t.sequence_log_probs(t.model, [teacher[i].ids for i in keep], gold, "mean")
            pi = t.sequence_log_probs(t.model, [student_prompts[i] for i in keep], gold, "mean")
        finally:
            t.model.train(was_training)
        teacher_texts = _greedy(t, [teacher[i].ids for i in keep])
        student_texts = _greedy(t, [student_prompts[i] for i in keep])
        kept = [problems[i] for i in keep]
        tv = t.task.verify_batch(kept, teacher_texts, split="eval")
        sv = t.task.verify_batch(kept, student_texts, split="eval")
        row = {"step": int(step), "n_items": len(keep),
               "probe_logratio": float((q - pi).mean()),
               "teacher_pass": sum(v.reward >= 1.0 for v in tv) / len(keep),
               "student_pass": sum(v.reward >= 1.0 for v in sv) / len(keep)}
        return row
