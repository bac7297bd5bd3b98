"""The validation split: training problems held back from every run (eval.split)."""
from __future__ import annotations

import logging

from vpd_bench.errors import UserError

log = logging.getLogger("vpd_bench")

SPLITS = ("heldout", "validation")
VALIDATION_SHARE = 4        # the validation split takes at most 1/4 of a task's training problems


def hold_out_validation(problems: list, n: int, split: str = "heldout") -> tuple[list, list]:
    """(training problems, validation problems): the last ``n`` of the task's training problems
    (in the task's own seeded order) are held back, at most a quarter of them. Every run holds them
    back, whatever ``split`` (the split its evaluations score), so a tuning run and a comparison
    run train on the same problems."""
    if split not in SPLITS:
        raise UserError(f"eval.split must be one of {', '.join(SPLITS)}, got {split!r}")
    problems = list(problems)
    n = max(0, int(n))
    k = min(n, len(problems) // VALIDATION_SHARE)
    if k < n:
        log.warning("eval.validation_problems=%d: the task has %d training problems; holding back %d "
                    "(at most 1/%d of them)", n, len(problems), k, VALIDATION_SHARE)
    if split == "validation" and k == 0:
        raise UserError("eval.split=validation needs eval.validation_problems > 0 and a task with at least "
                        f"{VALIDATION_SHARE} training problems (it has {len(problems)})")
    cut = len(problems) - k
    return problems[:cut], problems[cut:]
