"""Every ablation against the run it changes: ``ablations.csv`` / ``ablations.md``.

The claims table asks the paper's questions; this table answers the harness's own: for each group of
runs that differs from a method's plain runs in one declared way, the paired difference of its final
(and middle) held-out score against them, matched by seed and by held-out problem like the claims
(``leaderboard.paired_change``). Two kinds of rows:

- a *variant* (a grid label ``sdpo[distill_stop=false]``, ``vpd[prior=initial]``, ``sdpo[p=0.3]``)
  against the plain label of the same method on the same task, in the same feedback folder; where
  that folder has no plain runs (``noisy``: its variants are the only runs there), against the plain
  runs on the clean source the runs corrupt (their ``feedback.sources``: ``sibling`` in
  ``cpu_cold_noise``; ``env+sibling`` by default), else on the task's headline source;
- a *feedback source* (plain ``sdpo`` in ``env``, ``sibling``, ``self_critique``...) against the same
  method on the task's headline source (``claims.task_headline``: the source with the most plain runs,
  ``env+sibling`` on the arithmetic, ``sibling`` on the cold start).

Positive = the ablation scores higher than the runs it is compared with. Only complete runs count.
With per-problem samples the interval is the crossed bootstrap over seeds x problems; one seed then
gives an interval over held-out problems only (``bootstrap(problems)``), blind to seed-to-seed
variation, and without per-problem samples one seed gives an estimate and no interval.
"""
from __future__ import annotations

import math
from pathlib import Path

from vpd_bench.evaluation.results import FEEDBACK_FREE, TASK_ORDER, RunRecord, _order
from vpd_bench.report.claims import (_bracket, _groups, _interval, _num, _paired, _seed_scores, task_headline,
                                     write_rows_csv)
from vpd_bench.report.robustness import corrupted_source

COLUMNS = ["task", "method", "feedback", "against", "against_feedback", "n_seeds", "final_mean", "against_final_mean",
           "diff_final", "ci_low", "ci_high", "ci_method", "diff_middle", "middle_ci_low", "middle_ci_high",
           "middle_ci_method"]
HEADER = ["task", "ablation", "feedback", "against", "seeds", "final", "against", "difference (final)", "95% interval",
          "interval over", "difference (middle)", "95% interval (middle)"]


def _mean(scores: dict, keys) -> float:
    values = [scores[k][0] for k in keys if k in scores]
    return sum(values) / len(values) if values else math.nan


def _clean_source(members: list[RunRecord]) -> str | None:
    """The feedback folder a group of noisy runs corrupts (``robustness.corrupted_source``); None
    when the runs do not say or disagree."""
    found = {corrupted_source(run) for run in members}
    return found.pop() if len(found) == 1 else None


def ablation_table(runs: list[RunRecord], metric: str) -> list[dict]:
    """One row per ablation group that has a reference group with at least one seed in common."""
    complete = [r for r in runs if not r.is_partial]
    groups = _groups(complete)
    rows = []
    headline = {task: task_headline(groups, task) for task, _, _ in groups}
    for (task, feedback, label), members in groups.items():
        base, values = _bracket(label)
        if values:
            ref_key = (task, feedback, base)
            if ref_key not in groups and feedback not in FEEDBACK_FREE:
                clean = _clean_source(members)
                ref_key = (task, clean if (task, clean, base) in groups else headline[task], base)
        elif feedback not in FEEDBACK_FREE and headline[task] is not None and feedback != headline[task]:
            ref_key = (task, headline[task], label)
        else:
            continue
        if ref_key not in groups:
            continue
        ref = groups[ref_key]
        final_a, final_b = _seed_scores(ref, metric), _seed_scores(members, metric)
        est, lo, hi, how, n = _paired(final_a, final_b)
        if n == 0:
            continue
        mid_a, mid_b = _seed_scores(ref, metric, "middle"), _seed_scores(members, metric, "middle")
        m_est, m_lo, m_hi, m_how, _ = _paired(mid_a, mid_b)
        seeds = [k for k in final_b if k in final_a]
        rows.append({"task": task, "method": label, "feedback": feedback, "against": ref_key[2],
                     "against_feedback": ref_key[1], "n_seeds": n, "final_mean": _mean(final_b, seeds),
                     "against_final_mean": _mean(final_a, seeds), "diff_final": est, "ci_low": lo, "ci_high": hi,
                     "ci_method": how, "diff_middle": m_est, "middle_ci_low": m_lo, "middle_ci_high": m_hi,
                     "middle_ci_method": m_how})
    rows.sort(key=lambda r: (_order(r["task"], TASK_ORDER), r["against"], r["method"], r["feedback"]))
    return rows


def ablation_cells(row: dict) -> list[str]:
    return [row["task"], row["method"], row["feedback"], f"{row['against']} ({row['against_feedback']})",
            str(row["n_seeds"]), _num(row["final_mean"], signed=False), _num(row["against_final_mean"], signed=False),
            _num(row["diff_final"]), _interval(row["ci_low"], row["ci_high"]), row["ci_method"], _num(row["diff_middle"]),
            _interval(row["middle_ci_low"], row["middle_ci_high"])]


def ablations_markdown(rows: list[dict], metric: str) -> str:
    lines = [f"# Ablations against the runs they change ({metric})", "",
             "Each row pairs an ablation (a variant label, or a feedback source other than the task's headline one: "
             "the source with the most plain runs) with the same method's plain runs, by seed and held-out problem; "
             "noisy variants pair with the clean source they corrupt. Positive = the "
             "ablation scores higher. Middle = the evaluation nearest half the final step. With one seed the interval, "
             "where there is one, is over held-out problems only (bootstrap(problems)): blind to seed-to-seed variation.",
             "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in ablation_cells(row)) + " |")
    if not rows:
        lines.append("| (no ablation has a seed in common with the runs it changes) |" + " |" * (len(HEADER) - 1))
    return "\n".join(lines) + "\n"


def write_ablations_csv(rows: list[dict], path: Path) -> None:
    write_rows_csv(rows, COLUMNS, path)
