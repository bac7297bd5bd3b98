"""The task interface: what a task family hands the backbone.

A task provides problems (a training split and a held-out split), renders the prompt text,
and verifies responses. The verifier returns a :class:`Verdict`; its ``feedback`` is built
from *training-side* information only, so held-out tests never leak into training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

STATUSES = ("pass", "fail", "timeout", "error", "format")


@dataclass
class Problem:
    id: str
    prompt: str                       # the problem as the student sees it (user message, or raw text)
    answer: Any = None                # whatever the verifier needs (tests, gold answer, ...)
    reference: str | None = None      # a reference solution (SDFT / OPSD demonstrations)
    hint: str | None = None           # a hint that helps without giving the answer
    meta: dict = field(default_factory=dict)


@dataclass
class Verdict:
    reward: float                     # in [0, 1]
    status: str                       # one of STATUSES
    feedback: str = ""                # judge-style text from training-side information only
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown verifier status {self.status!r}; expected one of {STATUSES}")
        if not 0.0 <= float(self.reward) <= 1.0:
            raise ValueError(f"reward must lie in [0, 1], got {self.reward}")


class Task:
    """Base class of a task family. Subclasses register with ``@register_task("name")``."""

    name: str = "base"
    # a user's own held-out problems (``task.eval_file``): a ``tasks.eval_file.HeldOutFile`` whose
    # rows replace the held-out split, or None
    eval_file = None

    def __init__(self, cfg):
        self.cfg = cfg

    # -- data -------------------------------------------------------------------------------
    def train_problems(self) -> list[Problem]:
        raise NotImplementedError

    def eval_problems(self) -> list[Problem]:
        raise NotImplementedError

    # -- prompts ----------------------------------------------------------------------------
    def render_prompt(self, problem: Problem) -> str:
        """Prompt text. For ``prompt_format: chat`` the backbone wraps it in the chat template;
        for ``raw`` (cold start) it is fed to the model as is."""
        return problem.prompt

    # -- verification -----------------------------------------------------------------------
    def verify(self, problem: Problem, response: str, split: str = "train") -> Verdict:
        """Score one response. ``split="train"`` uses training-side checks (and may give
        feedback); ``split="eval"`` uses the held-out checks."""
        raise NotImplementedError

    def verify_batch(self, problems: Sequence[Problem], responses: Sequence[str],
                     split: str = "train") -> list[Verdict]:
        """Score many responses; tasks with slow verifiers (code) run them in parallel."""
        return [self.verify(p, r, split) for p, r in zip(problems, responses)]

    # -- metadata recorded with results ------------------------------------------------------
    def describe(self) -> dict:
        return {"name": self.name}


TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls
    return deco
