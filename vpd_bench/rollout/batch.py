"""The rollout batch every stage shares (in the spirit of verl's DataProto).

B prompts x G responses, ordered group by group: response i belongs to prompt i // G.
Stages fill it in order: generate -> verify -> feedback/teacher prompts -> score/loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Feedback:
    """Language feedback C about one response: a demonstration and/or a feedback text."""
    demonstration: str | None = None
    text: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.demonstration or self.text)


@dataclass
class RolloutBatch:
    step: int
    group_size: int
    problems: list                      # B task Problems
    prompt_texts: list[str]             # B rendered student prompts (chat template applied)
    prompt_ids: list[list[int]]         # B token ids; shared by the G samples of the prompt
    response_ids: list[list[int]] = field(default_factory=list)      # N = B*G
    response_texts: list[str] = field(default_factory=list)
    rollout_logp: list[list[float]] = field(default_factory=list)    # per sampled token
    finish_reasons: list[str] = field(default_factory=list)          # eos | stop | length
    # verify
    rewards: torch.Tensor | None = None          # [N] float
    statuses: list[str] = field(default_factory=list)
    verdict_feedback: list[str] = field(default_factory=list)
    verdicts: list = field(default_factory=list)
    # feedback and teacher prompts
    feedback: list[Feedback] = field(default_factory=list)
    teacher_prompt_texts: list[str | None] = field(default_factory=list)
    teacher_prompt_ids: list[list[int] | None] = field(default_factory=list)
    teacher_mask: torch.Tensor | None = None      # [N] bool: response has a teacher signal
    teacher_truncated: list[bool] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    # -- derived views ------------------------------------------------------------------------
    @property
    def num_responses(self) -> int:
        return len(self.response_ids)

    @property
    def group_ids(self) -> torch.Tensor:
        return torch.arange(self.num_responses) // self.group_size

    def problem_of(self, i: int):
        return self.problems[i // self.group_size]

    def prompt_ids_of(self, i: int) -> list[int]:
        return self.prompt_ids[i // self.group_size]

    def success(self, threshold: float) -> torch.Tensor:
        return self.rewards >= threshold

    def response_lengths(self) -> torch.Tensor:
        return torch.tensor([len(r) for r in self.response_ids], dtype=torch.float32)
