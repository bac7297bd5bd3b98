"""The paper's claims, each marked from the runs of a report: *holds*, *does not hold* or *not
testable at this scale*, with the paired estimate and 95% interval behind the mark.

Every claim is a paired difference oriented so that a positive value is what the claim says
(``vpd - grpo`` for "VPD beats GRPO", ``grpo - vpd`` for "GRPO beats VPD from a cold start"),
matched by seed and, where the runs have ``eval_samples.jsonl``, by held-out problem
(``leaderboard.paired_change``: the crossed bootstrap over seeds x problems, else a t-interval over
seeds). The mark follows one stated rule (``mark``):

- *holds*: the interval lies above 0;
- *does not hold*: the interval lies below 0, or it holds 0 but excludes the size of the paper's
  own difference (when the paper gives one): the data rule out the effect as the paper reports it;
- *not testable at this scale*: fewer than two paired seeds, a side without runs, or an interval
  that holds 0 and is too wide to exclude the paper's difference (under-powered, said out loud).

The paper's figures (arXiv 2605.15113) come from larger models and other tasks; they are the
yardstick of the rule, not a prediction for a 135M model on arithmetic.
"""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpd_bench.evaluation.results import FEEDBACK_FREE, TASK_ORDER, RunRecord, _as_float, _order
from vpd_bench.evaluation.stats import t_interval
from vpd_bench.report.leaderboard import (CI_NONE, DEFAULT_METRIC, ECHO_FLAG, _echo_share, _per_seed, _sample_metric,
                                          headline_feedback, paired_change, summarize_run)

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable at this scale"

CLAIM_COLUMNS = ["claim", "task", "feedback", "comparison", "estimate", "ci_low", "ci_high", "ci_method", "n_seeds",
                 "paper_effect", "mark", "why"]

RULE = ("holds: the paired 95% interval lies above 0. does not hold: it lies below 0, or it holds 0 but "
        "excludes the paper's own difference. not testable at this scale: fewer than 2 paired seeds, a side "
        "without runs, or an interval that holds 0 and still reaches the paper's difference (under-powered).")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    paper: str                      # the paper's figures behind the claim
    paper_effect: float | None      # the paper's difference as a fraction (4.5 points -> 0.045); None: not given


CLAIMS = [
    Claim("positive_control", "GRPO raises the held-out score over its start (the instrument can see learning)",
          "not a claim of the paper: the harness's positive control", None),
    Claim("vpd_vs_grpo", "VPD beats GRPO",
          "SciKnowEval (Qwen3-1.7B): VPD 74.3 vs GRPO 69.8", 0.045),
    Claim("vpd_vs_sdpo", "VPD beats SDPO",
          "SciKnowEval (Qwen3-1.7B): VPD 74.3 vs SDPO 66.3", 0.080),
    Claim("teacher_grows", "VPD's trained teacher reads feedback better over training; SDPO's passive one does not",
          "the paper's mechanism; measured by the teacher probe's log q(y*|x,C) - log pi(y*|x) (nats per token)",
          None),
    Claim("sdpo_late_decline", "SDPO degrades late (its final score falls below its middle one)",
          "the paper: SDPO degrades late on science", None),
    Claim("sdpo_below_grpo", "SDPO ends below GRPO",
          "SciKnowEval (Qwen3-1.7B): GRPO 69.8 vs SDPO 66.3", 0.035),
    Claim("student_prior", "VPD's moving (student) prior beats a fixed (initial) one",
          "SciKnowEval: prior = student 74.3 vs initial 67.8", 0.065),
    Claim("estep_5_vs_1", "VPD with an E-step every F = 5 iterations beats F = 1",
          "SciKnowEval: F = 5 74.3 vs F = 1 70.2", 0.041),
    Claim("estep_5_vs_10", "VPD with an E-step every F = 5 iterations beats F = 10",
          "SciKnowEval: F = 5 74.3 vs F = 10 69.3", 0.050),
    Claim("cold_start_grpo", "GRPO beats VPD from a cold start (a base model)",
          "the paper's cold-start stress test", None),
]
CLAIM_BY_KEY = {c.key: c for c in CLAIMS}


def mark(lo: float, hi: float, n_seeds: int, paper_effect: float | None) -> tuple[str, str]:
    """(mark, why) of a claim whose paired difference (positive = as claimed) has the interval
    [lo, hi] over ``n_seeds`` paired seeds. See the module docstring for the rule."""
    if n_seeds < 2:
        return UNTESTABLE, f"{n_seeds} paired seed{'s' if n_seeds != 1 else ''}: an interval needs at least 2"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return UNTESTABLE, "no interval (the seeds' differences are identical)"
    if lo > 0:
        return HOLDS, "the interval lies above 0"
    if hi < 0:
        return FAILS, "the interval lies below 0: the opposite is significant"
    if paper_effect is not None and hi < paper_effect:
        return FAILS, f"the interval holds 0 and excludes the paper's difference (+{paper_effect:.3f})"
    if paper_effect is not None:
        return UNTESTABLE, f"the interval holds 0 and reaches the paper's difference (+{paper_effect:.3f}): under-powered"
    return UNTESTABLE, "the interval holds 0 (the paper gives no size to rule out): under-powered"


# ----------------------------------------------------------------------------------------------
# picking the runs of one side of a comparison


def _bracket(label: str) -> tuple[str, dict[str, str]]:
    """``vpd[estep_every=5,prior=student]`` -> ("vpd", {"estep_every": "5", "prior": "student"})."""
    m = re.fullmatch(r"([^\[]+)\[(.*)\]", label)
    if not m:
        return label, {}
    values = {}
    for part in m.group(2).split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            values[k.strip()] = v.strip()
    return m.group(1), values


def _groups(runs: list[RunRecord]) -> dict[tuple[str, str, str], list[RunRecord]]:
    out: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in runs:
        out[r.key].append(r)
    return out


def task_headline(groups, task: str) -> str | None:
    """The headline feedback source of ``task`` (``leaderboard.headline_feedback``): counted over the
    complete runs of plain method labels, so a feedback ablation with fewer seeds never takes the
    comparison's place."""
    counts: dict[str, int] = defaultdict(int)
    for (t, fb, label), members in groups.items():
        if t == task and not _bracket(label)[1]:
            counts[fb] += sum(1 for r in members if not r.is_partial)
    return headline_feedback(counts)


def _side(groups, task: str, method: str, feedback: str | None = None,
          **variant: str) -> tuple[str | None, list[RunRecord]]:
    """(feedback, runs) of one side: the runs of ``task`` whose method label is ``method`` (with
    ``variant`` given: a grid label ``method[...]`` holding exactly those values among its own).
    With several feedback folders: ``feedback`` if given, else the task's headline source
    (``task_headline``), else the folder with the most runs."""
    def matches(label: str) -> bool:
        base, values = _bracket(label)
        if base != method:
            return False
        if not variant:
            return not values
        return all(values.get(k) == str(v) for k, v in variant.items())

    def at_defaults(label: str, members: list[RunRecord]) -> bool:
        """The plain method (no bracket) whose runs' own config holds every value of ``variant``:
        e.g. the comparison's ``vpd`` runs are the ``prior=student`` / ``estep_every=5`` side of an
        ablation that ran only the other values (``vpd[prior=initial]``)."""
        base, values = _bracket(label)
        return base == method and not values and bool(variant) and _runs_hold(members, variant)

    found = {fb: members for (t, fb, m), members in groups.items() if t == task and matches(m)}
    if not found and variant:           # no run labelled with these values: the plain runs, if at them
        found = {fb: members for (t, fb, m), members in groups.items() if t == task and at_defaults(m, members)}
    if not found:
        return None, []
    if feedback is not None:
        return (feedback, found[feedback]) if feedback in found else (None, [])
    headline = task_headline(groups, task)
    if headline in found:
        return headline, found[headline]
    fb = sorted(found, key=lambda f: (-len(found[f]), f))[0]
    return fb, found[fb]


def _runs_hold(members: list[RunRecord], values: dict) -> bool:
    """Whether there are runs and every one's own config holds every value (``{"prior": "student"}``)."""
    return bool(members) and all(str(_config_value(r.config, k)) == str(v) for r in members for k, v in values.items())


def _config_value(config: dict, key: str):
    """A run's value of ``key`` (``prior``, ``method.prior``): the method section first, then any section."""
    if "." in key:
        section, name = key.split(".", 1)
        return (config.get(section) or {}).get(name) if isinstance(config.get(section), dict) else None
    for section in ("method", *[k for k, v in config.items() if isinstance(v, dict) and k != "method"]):
        block = config.get(section)
        if isinstance(block, dict) and key in block:
            return block[key]
    return None


def _label(method: str, variant: dict) -> str:
    return method + ("[" + ",".join(f"{k}={v}" for k, v in variant.items()) + "]" if variant else "")


# ----------------------------------------------------------------------------------------------
# per-seed scores


def _seed_scores(members: list[RunRecord], metric: str, at: str = "final") -> dict[Any, tuple[float, dict | None]]:
    """{seed: (score, per-problem scores or None)} at the run's ``final``, ``initial`` (step 0) or
    ``middle`` evaluation (the one nearest half the final step, neither the first nor the last)."""
    summaries = [summarize_run(run, metric) for run in members]
    if at != "middle":                    # the leaderboard's own per-seed table
        i = 0 if at == "initial" else 1
        return {k: (v[i], v[i + 2]) for k, v in _per_seed(members, summaries, metric).items() if v[i] is not None}
    out = {}
    for i, (run, s) in enumerate(zip(members, summaries)):
        inner = [e for e in run.eval_history if s["final"] is not None and 0 < e["step"] < s["final_step"]]
        if not inner:
            continue
        entry = min(inner, key=lambda e: (abs(e["step"] - s["final_step"] / 2), e["step"]))
        value = _as_float(entry["metrics"].get(s["metric_used"]))
        if value is None:
            continue
        sm = _sample_metric(metric, s["metric_used"])
        out[run.seed if run.seed is not None else f"run{i}"] = (value, run.problem_scores(sm, entry["step"]) if sm else None)
    return out


def _paired(a: dict, b: dict) -> tuple[float, float, float, str, int]:
    """Mean paired difference b - a over the seeds both sides have."""
    pairs = [(k, a[k][0], b[k][0], a[k][1], b[k][1]) for k in b if k in a]
    return paired_change(pairs)


def _row(claim: Claim, task: str, feedback: str, comparison: str, est, lo, hi, how, n, why_prefix: str = "",
         override: tuple[str, str] | None = None) -> dict:
    m, why = override or mark(lo, hi, n, claim.paper_effect)
    return {"claim": claim.key, "text": claim.text, "paper": claim.paper, "task": task, "feedback": feedback,
            "comparison": comparison, "estimate": est, "ci_low": lo, "ci_high": hi, "ci_method": how, "n_seeds": n,
            "paper_effect": claim.paper_effect, "mark": m, "why": (why_prefix + why) if why_prefix else why}


def _missing(claim: Claim, task: str, comparison: str, what: str) -> dict:
    return _row(claim, task, "", comparison, math.nan, math.nan, math.nan, CI_NONE, 0,
                override=(UNTESTABLE, f"no runs of {what} in {task}"))


def _compare(claim, groups, task, metric, better, worse, better_variant=None, worse_variant=None) -> dict:
    """A claim that ``better`` ends above ``worse`` on ``task`` (final scores, paired)."""
    bv, wv = better_variant or {}, worse_variant or {}
    fb_b, runs_b = _side(groups, task, better, **bv)
    # two variants of one method must read the same feedback; two methods that both read feedback
    # are compared on the same source where the worse side has it (else on its own headline one)
    fb_w, runs_w = None, []
    if fb_b is not None and fb_b not in FEEDBACK_FREE:
        fb_w, runs_w = _side(groups, task, worse, fb_b, **wv)
    if not runs_w and not (bv or wv):
        fb_w, runs_w = _side(groups, task, worse, **wv)
    comparison = f"{_label(better, bv)} \u2212 {_label(worse, wv)}"
    if not runs_b or not runs_w:
        return _missing(claim, task, comparison, _label(better, bv) if not runs_b else _label(worse, wv))
    est, lo, hi, how, n = _paired(_seed_scores(runs_w, metric), _seed_scores(runs_b, metric))
    feedback = fb_b if fb_b == fb_w else f"{fb_b} vs {fb_w}"
    return _with_echo(_row(claim, task, feedback, comparison, est, lo, hi, how, n), runs_b, runs_w, metric)


def _with_echo(row: dict, runs_b: list[RunRecord], runs_w: list[RunRecord], metric: str) -> dict:
    """Say so in ``why`` when either side's final responses echo the verifier's message at least
    ECHO_FLAG of the time (leaderboard ``echo_final``): part of the difference may be one side
    repeating the feedback rather than answering worse (docs/report.md). The mark is unchanged."""
    greedy = metric == "greedy"
    b, w = _echo_share(runs_b, greedy), _echo_share(runs_w, greedy)
    if max(x for x in (b, w, 0.0) if x is not None) >= ECHO_FLAG:
        names = row["comparison"].split(" \u2212 ")
        names = names if len(names) == 2 else ["first side", "second side"]
        shown = ", ".join(f"{side} {x:.2f}" for side, x in zip(names, (b, w)) if x is not None)
        row["why"] += (f"; feedback echo in the final responses ({shown}): part of the difference may be a side "
                       f"repeating the verifier's message (`vpd-bench rescore --echo`)")
    return row


def _at_setting(groups, task: str, method: str, setting: str) -> tuple[str, dict[str, list[RunRecord]]]:
    """One side of a comparison at a grid setting (a label's bracket, ``[distill_stop=false]``):
    ``(label, {feedback: runs})`` of the runs labelled exactly ``method<setting>``, or else of the
    plain ``method`` runs whose own config holds every value of the setting (SDPO's default teacher
    is ``ema``, so plain ``sdpo`` is the other side of ``vpd[teacher=ema]``); ``{}`` when neither."""
    label = method + setting
    exact = {fb: members for (t, fb, m), members in groups.items() if t == task and m == label}
    if exact:
        return label, exact
    values = _bracket(label)[1]
    plain = {fb: members for (t, fb, m), members in groups.items()
             if t == task and m == method and _runs_hold(members, values)}
    return (f"{method} (at {setting[1:-1]})", plain) if plain else (label, {})


def _shared_settings(groups, task: str, a: str, b: str) -> list[str]:
    """The grid settings (a label's bracket, ``[distill_stop=false]``) either method ran on ``task``:
    the candidates at which the two can be compared; ``_compare_at_setting`` drops those where one
    side has no runs (neither labelled alike nor plain with that value in its config)."""
    def settings(method):
        return {label[len(method):] for (t, _fb, label) in groups
                if t == task and _bracket(label)[0] == method and _bracket(label)[1]}
    return sorted(settings(a) | settings(b))


def _compare_at_setting(claim, groups, task, metric, better, worse, setting: str) -> dict | None:
    """``better`` against ``worse`` at one setting (each side as ``_at_setting`` finds it), on the
    feedback source they share (the headline one where both have it); None when they share none."""
    lb, runs_b = _at_setting(groups, task, better, setting)
    lw, runs_w = _at_setting(groups, task, worse, setting)
    common = set(runs_b) & set(runs_w)
    if not common:
        return None
    headline = task_headline(groups, task)
    fb = headline if headline in common else sorted(common)[0]
    est, lo, hi, how, n = _paired(_seed_scores(runs_w[fb], metric), _seed_scores(runs_b[fb], metric))
    return _with_echo(_row(claim, task, fb, f"{lb} \u2212 {lw}", est, lo, hi, how, n), runs_b[fb], runs_w[fb],
                      metric)


def _probe_change(series: list[dict] | None) -> float | None:
    """The teacher probe's log-ratio at a run's last probe minus at its first (step 0)."""
    points = [(row.get("step"), _as_float(row.get("probe_logratio"))) for row in series or []]
    points = [(s, v) for s, v in points if s is not None and v is not None]
    if len(points) < 2 or points[0][0] != 0:
        return None
    return points[-1][1] - points[0][1]


def _teacher_grows(claim, groups, task, probes: dict) -> dict:
    comparison = "probe log-ratio change (last \u2212 first): vpd, and vpd \u2212 sdpo"
    fb_v, runs_v = _side(groups, task, "vpd")
    fb_s, runs_s = _side(groups, task, "sdpo", fb_v)
    if not runs_v or not runs_s:
        return _missing(claim, task, comparison, "vpd" if not runs_v else f"sdpo ({fb_v})")
    change_v = {r.seed: c for r in runs_v if (c := _probe_change(probes.get(r.run_dir))) is not None}
    change_s = {r.seed: c for r in runs_s if (c := _probe_change(probes.get(r.run_dir))) is not None}
    seeds = sorted(set(change_v) & set(change_s), key=str)
    diffs = [change_v[s] - change_s[s] for s in seeds]
    est, lo, hi = t_interval(diffs) if len(diffs) >= 2 else (sum(diffs) / len(diffs) if diffs else math.nan,
                                                             math.nan, math.nan)
    v_est, v_lo, v_hi = t_interval(change_v.values()) if len(change_v) >= 2 else (math.nan, math.nan, math.nan)
    if not seeds:
        return _row(claim, task, fb_v, comparison, math.nan, math.nan, math.nan, CI_NONE, 0,
                    override=(UNTESTABLE, "no seed has the teacher probe at step 0 and later in both vpd and sdpo"))
    m_diff, why_diff = mark(lo, hi, len(seeds), None)
    m_vpd, _ = mark(v_lo, v_hi, len(change_v), None)
    vpd_text = (f"vpd's own change {v_est:+.3f} [{v_lo:+.3f}, {v_hi:+.3f}] over {len(change_v)} seeds"
                if not math.isnan(v_lo) else f"vpd's own change over {len(change_v)} seed(s): no interval")
    if m_diff == HOLDS and m_vpd == HOLDS:
        verdict = (HOLDS, f"vpd's change exceeds sdpo's and is itself above 0 ({vpd_text})")
    elif m_diff == FAILS or m_vpd == FAILS:
        verdict = (FAILS, f"{'vpd gains less than sdpo' if m_diff == FAILS else 'vpd loses'} ({vpd_text})")
    else:
        verdict = (UNTESTABLE, f"{why_diff}; {vpd_text}")
    how = "t-interval over seeds" if not math.isnan(lo) else CI_NONE
    return _row(claim, task, fb_v, comparison, est, lo, hi, how, len(seeds), override=verdict)


def _late_decline(claim, groups, task, metric) -> dict:
    comparison = "sdpo middle \u2212 sdpo final"
    fb, runs = _side(groups, task, "sdpo")
    if not runs:
        return _missing(claim, task, comparison, "sdpo")
    est, lo, hi, how, n = _paired(_seed_scores(runs, metric, "final"), _seed_scores(runs, metric, "middle"))
    return _row(claim, task, fb, comparison, est, lo, hi, how, n)


def evaluate_claims(runs: list[RunRecord], metric: str = DEFAULT_METRIC) -> list[dict]:
    """One row per claim and task where the claim can be asked (columns ``CLAIM_COLUMNS`` plus the
    claim's ``text`` and ``paper``). A claim with no runs on either side in any task gets one
    *not testable* row so the table always lists every claim."""
    from vpd_bench.report.figures import _probe_runs
    groups = _groups(runs)
    probes = {r.run_dir: r.train_metrics for r in _probe_runs(runs)}     # teacher_probe.jsonl, read once
    tasks = sorted({r.task for r in runs}, key=lambda t: _order(t, TASK_ORDER))
    c = CLAIM_BY_KEY
    rows: list[dict] = []

    def present(task, method, **variant) -> bool:
        return bool(_side(groups, task, method, **variant)[1])

    for task in tasks:
        cold = task == "cold_start"
        if present(task, "grpo"):
            fb, g = _side(groups, task, "grpo")
            est, lo, hi, how, n = _paired(_seed_scores(g, metric, "initial"), _seed_scores(g, metric, "final"))
            rows.append(_row(c["positive_control"], task, fb, "grpo final \u2212 initial", est, lo, hi, how, n))
        # The method comparisons are asked on every task, the cold start included: it is the regime where the
        # base model's teacher reads a passing sibling (results/cpu/README.md §1d), so "VPD >= SDPO and GRPO on a
        # feedback-rich task" is asked there too, beside the paper's own cold-start claim (GRPO beats VPD).
        if present(task, "vpd") and (present(task, "grpo") or present(task, "sdpo")):
            rows.append(_compare(c["vpd_vs_grpo"], groups, task, metric, "vpd", "grpo"))
            rows.append(_compare(c["vpd_vs_sdpo"], groups, task, metric, "vpd", "sdpo"))
            rows.append(_teacher_grows(c["teacher_grows"], groups, task, probes))
        if present(task, "sdpo"):
            rows.append(_late_decline(c["sdpo_late_decline"], groups, task, metric))
            if present(task, "grpo"):
                rows.append(_compare(c["sdpo_below_grpo"], groups, task, metric, "grpo", "sdpo"))
        for key, better, worse in (("vpd_vs_grpo", "vpd", "grpo"), ("vpd_vs_sdpo", "vpd", "sdpo"),
                                   ("sdpo_below_grpo", "grpo", "sdpo")):
            # the method comparisons again at every setting both methods ran alike
            for setting in _shared_settings(groups, task, better, worse):
                row = _compare_at_setting(c[key], groups, task, metric, better, worse, setting)
                if row is not None:
                    rows.append(row)
        if present(task, "vpd", prior="student") or present(task, "vpd", prior="initial"):
            rows.append(_compare(c["student_prior"], groups, task, metric, "vpd", "vpd",
                                 {"prior": "student"}, {"prior": "initial"}))
        if any(present(task, "vpd", estep_every=f) for f in (1, 5, 10)):
            rows.append(_compare(c["estep_5_vs_1"], groups, task, metric, "vpd", "vpd",
                                 {"estep_every": "5"}, {"estep_every": "1"}))
            rows.append(_compare(c["estep_5_vs_10"], groups, task, metric, "vpd", "vpd",
                                 {"estep_every": "5"}, {"estep_every": "10"}))
        if cold and (present(task, "grpo") or present(task, "vpd")):
            rows.append(_compare(c["cold_start_grpo"], groups, task, metric, "grpo", "vpd"))
    asked = {r["claim"] for r in rows}
    for claim in CLAIMS:
        if claim.key not in asked:
            rows.append(_row(claim, "", "", "", math.nan, math.nan, math.nan, CI_NONE, 0,
                             override=(UNTESTABLE, "no task in these runs has the runs this claim compares")))
    order = {claim.key: i for i, claim in enumerate(CLAIMS)}
    rows.sort(key=lambda r: (order[r["claim"]], _order(r["task"], TASK_ORDER) if r["task"] else (99, "")))
    return rows


# ----------------------------------------------------------------------------------------------
# output


def _num(x: float | None, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _interval(lo: float, hi: float) -> str:
    return "n/a" if math.isnan(lo) or math.isnan(hi) else f"[{_num(lo)}, {_num(hi)}]"


def claim_cells(row: dict) -> list[str]:
    interval = _interval(row["ci_low"], row["ci_high"])
    return [row["text"], row["task"] or "\u2014", row["comparison"] or "\u2014", _num(row["estimate"]), interval,
            str(row["n_seeds"]), row["mark"], row["why"]]


CLAIM_HEADER = ["claim", "task", "difference (positive = as claimed)", "estimate", "95% interval", "seeds", "mark",
                "why"]


def claims_markdown(rows: list[dict], metric: str) -> str:
    lines = [f"# The paper's claims, marked from these runs ({metric})", "", f"Rule: {RULE}", "",
             "| " + " | ".join(CLAIM_HEADER) + " |", "|" + "---|" * len(CLAIM_HEADER)]
    for row in rows:
        cells = claim_cells(row)
        cells[6] = f"**{cells[6]}**"
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", "The paper's figures each claim is measured against:", ""]
    for claim in CLAIMS:
        lines.append(f"- {claim.text}: {claim.paper}.")
    return "\n".join(lines) + "\n"


def write_rows_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    """One CSV line per row in ``columns`` order; NaN and None are written as empty cells."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if (isinstance(row[k], float) and math.isnan(row[k])) else
                        ("" if row[k] is None else row[k]) for k in columns])


def write_claims_csv(rows: list[dict], path: Path) -> None:
    write_rows_csv(rows, CLAIM_COLUMNS, path)
