"""debug: synthetic prompts with an instant verifier, for smoke tests of the loop and methods."""
from __future__ import annotations

import random

from .base import Problem, Task, Verdict, register_task


@register_task("debug")
class DebugTask(Task):
    def _problems(self, n: int, offset: int) -> list[Problem]:
        rng = random.Random(self.cfg.task.split_seed * 1000 + offset)
        alphabet = self.cfg.task.alphabet
        out = []
        for i in range(n):
            ch = rng.choice(alphabet)
            out.append(Problem(
                id=f"debug-{offset + i}",
                prompt=f"Write a short word that contains the letter '{ch}'.",
                answer=ch,
                reference=f"{ch}{ch}",
                hint=f"The letter is '{ch}'.",
            ))
        return out

    def train_problems(self):
        return self._problems(self.cfg.task.num_train, 0)

    def eval_problems(self):
        return self._problems(self.cfg.task.num_eval, 100_000)

    def verify(self, problem, response, split="train"):
        if not response.strip():
            return Verdict(0.0, "format", "Your answer was empty.")
        if problem.answer in response:
            return Verdict(1.0, "pass", "Correct.")
        return Verdict(0.0, "fail", f"Your answer does not contain the letter '{problem.answer}'.")
