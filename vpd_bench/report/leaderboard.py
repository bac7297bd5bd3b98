"""Per-run numbers and the leaderboard: scores, paired intervals against the start and the
baseline, the smallest detectable difference, provenance, and the markdown/CSV tables."""
from __future__ import annotations

import csv
import datetime
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from vpd_bench.errors import UserError
from vpd_bench.evaluation.echo import final_echo_share
from vpd_bench.evaluation.stats import mean_stderr, min_detectable_effect, paired_bootstrap, t_interval
from vpd_bench.evaluation.results import (
    FEEDBACK_FREE, FEEDBACK_ORDER, METHOD_ORDER, ReportWarning, RunRecord, SAMPLES_FILE, TASK_ORDER,
    _as_float, _order, load_run, load_runs)

DEFAULT_METRIC = "pass@1"

# Keys in an eval's "metrics" that describe the evaluation rather than score it.
NON_SCORE_KEYS = frozenset({"k", "n", "n_problems", "num_problems", "n_samples"})

CONFIDENCE = 0.95

# The SDPO default: the headline feedback source of a task whose runs favour none (see headline_feedback).
HEADLINE_FEEDBACK = "env+sibling"


def headline_feedback(counts: dict[str, int]) -> str | None:
    """A task's headline feedback source, from ``{feedback: runs}`` counted over the plain labels of
    the methods that read feedback: the source with the most runs, which is the one the task's
    comparison ran on (``env+sibling`` on the arithmetic, ``sibling`` on the cold start, where the
    feedback ablations add fewer seeds of the other sources). Ties go to ``env+sibling``, then to
    the feedback order. Feedback-free folders (``none``, ``reference``) and ``noisy`` (an ablation
    of a clean source) never head a task; None when nothing else ran."""
    usable = {f: n for f, n in counts.items() if n > 0 and f not in FEEDBACK_FREE and f != "noisy"}
    if not usable:
        return None
    return sorted(usable, key=lambda f: (-usable[f], f != HEADLINE_FEEDBACK, _order(f, FEEDBACK_ORDER), f))[0]


def score_of(metrics: dict, metric: str = DEFAULT_METRIC) -> tuple[float | None, str | None]:
    """(value, metric name used) for one evaluation. The requested metric when present; for the
    default ``pass@1`` a task without it falls back to its first score (``k``, ``n_problems`` and
    similar descriptors are skipped)."""
    if metric in metrics:
        return _as_float(metrics[metric]), metric
    if metric == DEFAULT_METRIC:
        for name, value in metrics.items():
            if name not in NON_SCORE_KEYS and _as_float(value) is not None:
                return _as_float(value), name
    return None, None


def summarize_run(run: RunRecord, metric: str = DEFAULT_METRIC, budget_steps: int | None = None,
                  budget_wall_s: float | None = None) -> dict:
    """The numbers one run contributes to the leaderboard.

    final: score of the last evaluation; initial: score at step 0; best: best score over the
    evaluations with step <= budget_steps and wall_time_s <= budget_wall_s (an evaluation with no
    recorded wall time is outside any wall budget); train_reward: reward_mean of the last
    training step that logged one (results.json's train_final as fallback).
    """
    scored = []
    for entry in run.eval_history:
        value, used = score_of(entry["metrics"], metric)
        if value is not None:
            scored.append((entry, value, used))
    higher = bool(run.higher_is_better.get(metric, True))
    out: dict[str, Any] = {"final": None, "final_step": None, "initial": None, "best": None,
                           "best_step": None, "metric_used": None, "train_reward": None}
    if scored:
        last_entry, out["final"], out["metric_used"] = scored[-1]
        out["final_step"] = last_entry["step"]
        out["initial"] = next((v for e, v, _ in scored if e["step"] == 0), None)

        def within(entry: dict) -> bool:
            if budget_steps is not None and entry["step"] > budget_steps:
                return False
            if budget_wall_s is not None and (entry["wall_time_s"] is None or entry["wall_time_s"] > budget_wall_s):
                return False
            return True

        eligible = [(e, v) for e, v, _ in scored if within(e)]
        if eligible:
            pick = max if higher else min
            best_entry, out["best"] = pick(eligible, key=lambda ev: ev[1])
            out["best_step"] = best_entry["step"]
    for row in reversed(run.train_metrics):
        reward = _as_float(row.get("reward_mean"))
        if reward is not None:
            out["train_reward"] = reward
            break
    else:
        out["train_reward"] = _as_float(((run.results or {}).get("train_final") or {}).get("reward_mean"))
    return out


def available_metrics(runs: list[RunRecord]) -> list[str]:
    """The score names the runs' held-out evaluations carry (``k``, ``n_problems`` and similar
    descriptors left out), sorted with pass@1 first."""
    names = {name for r in runs for e in r.eval_history for name, v in e["metrics"].items()
             if name not in NON_SCORE_KEYS and _as_float(v) is not None}
    return sorted(names, key=lambda n: (n != DEFAULT_METRIC, n))


def check_metric(runs: list[RunRecord], metric: str) -> None:
    """Raise UserError when ``metric`` is none of the runs' held-out metrics (listing them). The
    default pass@1 is accepted when absent: it falls back to each run's first score (score_of)."""
    available = available_metrics(runs)
    if available and metric not in available and metric != DEFAULT_METRIC:
        raise UserError(f"unknown metric {metric!r}: the runs' held-out evaluations have "
                        + ", ".join(available) + " (give one with --metric)")


# The leaderboard's first columns are fixed (issue #11 section 4); the rest follow.
LEADERBOARD_COLUMNS = (
    "task", "method", "feedback", "n_seeds", "initial", "final", "delta", "delta_ci_low", "delta_ci_high",
    "ci_method", "baseline", "vs_baseline", "vs_baseline_ci_low", "vs_baseline_ci_high", "vs_baseline_ci_method",
    "vs_baseline_n_seeds", "significant", "verdict", "n_problems", "n_samples", "mde",
    "rank", "metric", "n_runs", "n_partial", "n_no_eval",
    "final_mean", "final_stderr", "best_mean", "best_stderr", "best_n_seeds",
    "initial_mean", "initial_stderr", "train_reward_mean", "train_reward_stderr",
    "steps_completed_mean", "wall_time_s_mean", "seeds", "revisions", "echo_final", "flags", "higher_is_better",
    "settings",
)

CI_BOOTSTRAP = "bootstrap(seeds x problems)"
CI_BOOTSTRAP_PROBLEMS = "bootstrap(problems)"   # one seed: the problems are all there is to resample
CI_T = "t(seeds)"
CI_NONE = "n/a"


def paired_change(pairs: list[tuple[Any, float, float, dict[str, float] | None, dict[str, float] | None]],
                  confidence: float = CONFIDENCE) -> tuple[float, float, float, str, int]:
    """(estimate, low, high, method, n_pairs) of the mean paired difference ``b - a``.

    ``pairs`` holds one (seed, a, b, a_by_problem, b_by_problem) per seed that has both sides:
    a and b are the seed's scores, the dicts the per-problem scores (None without
    eval_samples.jsonl). When every seed has per-problem scores on both sides, the differences
    are matched by problem id and the interval is ``paired_bootstrap`` over seeds x problems;
    otherwise it is the t-interval of the seeds' differences. That interval is NaN (method
    ``n/a``) with one seed, and also when every seed's difference is the same: a zero-width
    t-interval would claim certainty the few seeds cannot give (scores on a handful of problems
    take few distinct values, so equal differences are common)."""
    if not pairs:
        return math.nan, math.nan, math.nan, CI_NONE, 0
    if all(pa and pb for _, _, _, pa, pb in pairs):
        problems = sorted(set().union(*(set(pa) & set(pb) for _, _, _, pa, pb in pairs)))
        if problems:
            table = [[pb[p] - pa[p] if p in pa and p in pb else math.nan for p in problems]
                     for _, _, _, pa, pb in pairs]
            est, lo, hi = paired_bootstrap(table, confidence=confidence)
            if not math.isnan(est):
                return est, lo, hi, (CI_BOOTSTRAP if len(pairs) > 1 else CI_BOOTSTRAP_PROBLEMS), len(pairs)
    diffs = [b - a for _, a, b, _, _ in pairs]
    est, lo, hi = t_interval(diffs, confidence=confidence)
    if len(pairs) < 2 or max(diffs) - min(diffs) < 1e-12:
        return est, math.nan, math.nan, CI_NONE, len(pairs)
    return est, lo, hi, CI_T, len(pairs)


def _sample_metric(metric: str, used: str | None) -> str | None:
    """The per-problem score matching the leaderboard's metric, or None when it cannot be formed
    from the samples (a task whose pass@1 fell back to another score)."""
    return metric if used == metric and metric in ("pass@1", "avg@k", "greedy", "pass@k") else None


def _per_seed(members: list[RunRecord], summaries: list[dict], metric: str) -> dict:
    """{seed: (initial, final, initial_by_problem, final_by_problem)} for the runs with a final score."""
    out = {}
    for i, (run, s) in enumerate(zip(members, summaries)):
        if s["final"] is None:
            continue
        key = run.seed if run.seed is not None else f"run{i}"
        sm = _sample_metric(metric, s["metric_used"])
        initial_p = run.problem_scores(sm, 0) if sm and s["initial"] is not None else None
        final_p = run.problem_scores(sm, s["final_step"]) if sm else None
        out[key] = (s["initial"], s["final"], initial_p, final_p)
    return out


# flag a row whose final held-out responses echo the verifier's message this often (docs/report.md)
ECHO_FLAG = 0.10


def _echo_share(members: list[RunRecord], greedy: bool) -> float | None:
    """Mean over seeds of the share of final held-out responses (greedy ones for the greedy
    metric) that echo the verifier's sentences (vpd_bench/evaluation/echo.py); None when no member
    logged a verifier message. A training log the echo check cannot read leaves that
    run out, as unreadable input lines are left out elsewhere in the report."""
    shares = []
    for r in members:
        try:
            share = final_echo_share(r.run_dir, greedy=greedy)
        except UserError:
            share = None
        if share is not None:
            shares.append(share)
    return sum(shares) / len(shares) if shares else None


def _verdict(lo: float, hi: float, higher: bool, baseline: str, n_pairs: int) -> tuple[bool | None, str]:
    if math.isnan(lo) or math.isnan(hi):
        return None, ("n/a (1 paired seed)" if n_pairs < 2 else "n/a (seeds' differences identical: no interval)")
    if lo > 0 or hi < 0:
        better = (lo > 0) == higher
        return True, f"{'better' if better else 'worse'} than {baseline}"
    return False, "no significant difference"


_METHOD_DEFAULTS: dict[str, Any] = {}


def _method_defaults(method: str, task: dict) -> dict | None:
    """The ``method`` section a run of ``method`` gets with no override, read from this version's
    ``conf/method/`` (its ``defaults`` chain merged) and resolved against the run's own ``task``
    section (``alpha: ${task.distill_alpha}``); None for a method this version does not know."""
    from omegaconf import OmegaConf

    from vpd_bench.config import CONF_DIR

    def load(name: str, depth: int = 0):
        path = CONF_DIR / "method" / f"{name}.yaml"
        if depth > 8 or not path.is_file():
            return None
        node = OmegaConf.load(path)
        parents = [d for d in (node.pop("defaults", None) or []) if isinstance(d, str) and d != "_self_"]
        merged = OmegaConf.create()
        for parent in parents:
            base = load(parent, depth + 1)
            if base is None:
                return None
            merged = OmegaConf.merge(merged, base)
        return OmegaConf.merge(merged, node)

    if method not in _METHOD_DEFAULTS:
        try:
            _METHOD_DEFAULTS[method] = load(method)
        except Exception:             # an unreadable file: no defaults to compare with
            _METHOD_DEFAULTS[method] = None
    raw = _METHOD_DEFAULTS[method]
    if raw is None:
        return None
    try:
        both = OmegaConf.create({"method": raw, "task": task if isinstance(task, dict) else {}})
        return OmegaConf.to_container(both.method, resolve=True)
    except Exception:                 # an interpolation the run's task cannot resolve
        return None


def _setting_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def run_settings(run: RunRecord) -> str:
    """What a reader needs to know was compared: the run's learning rate, every ``method.*`` value
    that differs from the method's defaults (``vpd-bench tune`` choices, sweeps, overrides), and the
    evaluated split when it is not the held-out one. E.g. ``lr=1e-05, beta=0.01``."""
    config = run.config or ((run.results or {}).get("config") or {})
    if not isinstance(config, dict):
        return ""
    parts = []
    lr = (config.get("train") or {}).get("lr") if isinstance(config.get("train"), dict) else None
    if lr is not None:
        parts.append(f"lr={_setting_value(lr)}")
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    defaults = _method_defaults(str(method.get("name")), config.get("task")) if method.get("name") else None
    if defaults is not None:
        for key, value in method.items():
            if key != "name" and key in defaults and defaults[key] != value:
                parts.append(f"{key}={_setting_value(value)}")
            elif key not in defaults:
                parts.append(f"{key}={_setting_value(value)}")
    split = (config.get("eval") or {}).get("split") if isinstance(config.get("eval"), dict) else None
    if split not in (None, "heldout"):
        parts.append(f"eval.split={split}")
    return ", ".join(parts)


def build_leaderboard(runs: list[RunRecord], metric: str = DEFAULT_METRIC, budget_steps: int | None = None,
                      budget_wall_s: float | None = None, baseline: str | None = "grpo") -> list[dict]:
    """One row per task x feedback x method. Columns: LEADERBOARD_COLUMNS.

    initial / final: mean over seeds of the step-0 and the last held-out score (``*_stderr``: the
    standard error of that mean, NaN with one seed). delta: the mean paired change final - initial
    with its 95% interval (``paired_change``: bootstrap over seeds x problems when every run has
    eval_samples.jsonl, else a t-interval over seeds; ``ci_method`` says which). vs_baseline: the
    paired difference of final scores against ``baseline`` (same task; matched by seed and by
    problem id), with its interval; ``significant`` is True when that interval excludes 0 and
    ``verdict`` says which way. ``baseline=None`` (or "none") leaves those columns empty. mde: the
    smallest detectable difference of two rates near this row's final score with n = problems x
    samples x seeds (``vpd_bench.evaluation.stats.min_detectable_effect``). Rows are grouped by task and
    ranked within it by mean final score (a ranking, not a test)."""
    if budget_steps is not None and budget_steps < 0:
        raise UserError(f"--budget-steps must be >= 0, got {budget_steps}")
    if budget_wall_s is not None and budget_wall_s < 0:
        raise UserError(f"--budget-wall must be >= 0 seconds, got {budget_wall_s}")
    if baseline is not None and str(baseline).lower() in ("", "none"):
        baseline = None
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[run.key].append(run)

    rows = []
    seeds_of: dict[tuple, dict] = {}
    for (task, feedback, method), members in groups.items():
        summaries = [summarize_run(r, metric, budget_steps, budget_wall_s) for r in members]
        final = mean_stderr(s["final"] for s in summaries)
        best = mean_stderr(s["best"] for s in summaries)
        initial = mean_stderr(s["initial"] for s in summaries)
        reward = mean_stderr(s["train_reward"] for s in summaries)
        steps = mean_stderr(r.steps_completed for r in members)
        wall = mean_stderr(r.wall_time_s for r in members)
        used = sorted({s["metric_used"] for s in summaries if s["metric_used"]})
        n_partial = sum(r.is_partial for r in members)
        n_no_eval = sum(s["final"] is None for s in summaries)
        flags = []
        if n_partial:
            flags.append(f"{n_partial} partial")
        if n_no_eval:
            flags.append(f"{n_no_eval} without {metric if len(used) <= 1 else 'score'}")
        if len(used) > 1:
            flags.append("mixed metrics: " + ", ".join(used))
        if any("duplicate seed" in r.notes for r in members):
            flags.append("duplicate seeds")
        echo = _echo_share(members, greedy=metric == "greedy")
        if echo is not None and echo >= ECHO_FLAG:
            flags.append(f"echo {echo:.2f}")
        higher = all(bool(r.higher_is_better.get(metric, True)) for r in members)
        per_seed = _per_seed(members, summaries, metric)
        seeds_of[(task, feedback, method)] = per_seed
        pairs = [(k, a, b, pa, pb) for k, (a, b, pa, pb) in per_seed.items() if a is not None]
        d_est, d_lo, d_hi, d_how, _ = paired_change(pairs)
        shapes = [r.eval_shape() for r, s in zip(members, summaries) if s["final"] is not None]
        n_problems = min((n for n, _ in shapes if n), default=None)
        n_samples = min((k for _, k in shapes if k), default=None)
        n_seeds = sum(s["final"] is not None for s in summaries)
        mde = (min_detectable_effect(final[0], n_problems * n_samples * n_seeds)
               if n_problems and n_samples and n_seeds and not math.isnan(final[0]) else math.nan)
        rows.append({
            "task": task, "feedback": feedback, "method": method, "rank": None,
            "metric": used[0] if len(used) == 1 else (", ".join(used) if used else metric),
            "n_runs": len(members), "n_seeds": n_seeds,
            "n_partial": n_partial, "n_no_eval": n_no_eval,
            "initial": initial[0], "final": final[0],
            "delta": d_est, "delta_ci_low": d_lo, "delta_ci_high": d_hi, "ci_method": d_how,
            "baseline": None, "vs_baseline": math.nan, "vs_baseline_ci_low": math.nan,
            "vs_baseline_ci_high": math.nan, "vs_baseline_ci_method": CI_NONE, "vs_baseline_n_seeds": 0,
            "significant": None, "verdict": "", "n_problems": n_problems, "n_samples": n_samples, "mde": mde,
            "final_mean": final[0], "final_stderr": final[1],
            "best_mean": best[0], "best_stderr": best[1],
            "best_n_seeds": sum(s["best"] is not None for s in summaries),
            "initial_mean": initial[0], "initial_stderr": initial[1],
            "train_reward_mean": reward[0], "train_reward_stderr": reward[1],
            "steps_completed_mean": steps[0], "wall_time_s_mean": wall[0],
            "seeds": sorted(r.seed for r in members if r.seed is not None),
            "revisions": ", ".join(sorted({r.revision for r in members})),
            "echo_final": math.nan if echo is None else echo,
            "flags": "; ".join(flags), "higher_is_better": higher,
            "settings": " | ".join(dict.fromkeys(run_settings(r) for r in members if run_settings(r))),
        })

    if baseline is not None:
        _compare_to_baseline(rows, seeds_of, baseline)

    def group_key(row: dict) -> tuple:
        return _order(row["task"], TASK_ORDER)

    def goodness(row: dict) -> float:
        if math.isnan(row["final_mean"]):
            return math.inf
        return -row["final_mean"] if row["higher_is_better"] else row["final_mean"]

    rows.sort(key=lambda r: (group_key(r), goodness(r), _order(r["method"], METHOD_ORDER),
                             _order(r["feedback"], FEEDBACK_ORDER)))
    # Competition ranking: tied means share a rank (1, 1, 3).
    for row in rows:
        if math.isnan(row["final_mean"]):
            continue
        peers = [r for r in rows if group_key(r) == group_key(row) and not math.isnan(r["final_mean"])]
        row["rank"] = 1 + sum(goodness(r) < goodness(row) for r in peers)
    return rows


def _compare_to_baseline(rows: list[dict], seeds_of: dict, baseline: str) -> None:
    """Fill the vs_baseline columns: per task, the paired difference of final scores of each row
    against the baseline method's row (its feedback-free row when it has several)."""
    for task in {r["task"] for r in rows}:
        candidates = [r for r in rows if r["task"] == task and r["method"] == baseline and r["n_seeds"]]
        if not candidates:
            for r in rows:
                if r["task"] == task:
                    r["verdict"] = f"n/a (no {baseline} runs in {task})"
            continue
        base = sorted(candidates, key=lambda r: (r["feedback"] not in FEEDBACK_FREE, -r["n_seeds"],
                                                 _order(r["feedback"], FEEDBACK_ORDER)))[0]
        base_seeds = seeds_of[(task, base["feedback"], baseline)]
        for r in rows:
            if r["task"] != task:
                continue
            r["baseline"] = f"{baseline} ({base['feedback']})"
            if r is base:
                r["verdict"] = "baseline"
                continue
            mine = seeds_of[(task, r["feedback"], r["method"])]
            pairs = [(k, base_seeds[k][1], mine[k][1], base_seeds[k][3], mine[k][3]) for k in mine if k in base_seeds]
            est, lo, hi, how, n = paired_change(pairs)
            r.update(vs_baseline=est, vs_baseline_ci_low=lo, vs_baseline_ci_high=hi, vs_baseline_ci_method=how,
                     vs_baseline_n_seeds=n)
            if not pairs:
                r["verdict"] = f"n/a (no seed shared with {baseline})"
                continue
            r["significant"], r["verdict"] = _verdict(lo, hi, r["higher_is_better"], baseline, n)


# ----------------------------------------------------------------------------------------------
# tables


def _fmt(mean: float, stderr: float = math.nan, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if stderr is None or math.isnan(stderr):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} \u00b1 {stderr:.{digits}f}"


def _fmt_wall(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _budget_text(budget_steps: int | None, budget_wall_s: float | None) -> str:
    parts = []
    if budget_steps is not None:
        parts.append(f"step \u2264 {budget_steps}")
    if budget_wall_s is not None:
        parts.append(f"training wall-clock \u2264 {_fmt_wall(budget_wall_s)}")
    return " and ".join(parts) if parts else "the full run"


def _fmt_change(est: float, lo: float, hi: float, digits: int = 3) -> str:
    """"+0.021 [-0.083, +0.125]"; the interval reads "n/a" where it is undefined."""
    if est is None or math.isnan(est):
        return "n/a"
    ci = "n/a" if (lo is None or math.isnan(lo) or math.isnan(hi)) else f"{lo:+.{digits}f}, {hi:+.{digits}f}"
    return f"{est:+.{digits}f} [{ci}]"


def _winners(rows: list[dict]) -> set[int]:
    """Indices of the rows whose 95% interval against the baseline lies entirely on the better
    side of 0: the only cells the tables mark (bold)."""
    return {i for i, row in enumerate(rows) if row["significant"] and row["verdict"].startswith("better")}


def _table_cells(row: dict) -> list[str]:
    method = row["method"] + (" \u2020" if row["n_partial"] else "")
    vs = "(baseline)" if row["verdict"] == "baseline" else _fmt_change(
        row["vs_baseline"], row["vs_baseline_ci_low"], row["vs_baseline_ci_high"])
    return [row["task"], method, row["feedback"],
            str(row["n_seeds"]) + (f"/{row['n_runs']}" if row["n_runs"] != row["n_seeds"] else ""),
            _fmt(row["initial_mean"], row["initial_stderr"]), _fmt(row["final_mean"], row["final_stderr"]),
            _fmt_change(row["delta"], row["delta_ci_low"], row["delta_ci_high"]), row["ci_method"],
            vs, row["verdict"] or "\u2014",
            _fmt(row["best_mean"], row["best_stderr"]),
            _fmt(row["train_reward_mean"], row["train_reward_stderr"]),
            "n/a" if math.isnan(row["steps_completed_mean"]) else f"{row['steps_completed_mean']:.0f}",
            _fmt_wall(row["wall_time_s_mean"]), row["flags"], row.get("settings", "")]


FINAL_COL, VS_COL = 5, 8   # positions of the final score and the baseline comparison in _table_cells


def _table_header(metric: str, baseline: str | None = None) -> list[str]:
    return ["task", "method", "feedback", "seeds", f"initial {metric}", f"final {metric}",
            "\u0394 final \u2212 initial [95% CI]", "CI", f"vs {baseline or 'baseline'} [95% CI]", "verdict",
            f"best {metric} \u2264 budget", "train reward (final)", "steps", "wall-clock", "flags", "settings"]


def _mde_lines(rows: list[dict]) -> list[str]:
    """Per task: the smallest detectable difference at the task's mean final score with
    n = problems x samples x seeds (the smallest such n among the task's rows)."""
    out = []
    for task in sorted({r["task"] for r in rows}, key=lambda t: _order(t, TASK_ORDER)):
        mine = [r for r in rows if r["task"] == task and r["n_problems"] and r["n_samples"] and r["n_seeds"]]
        finals = [r["final_mean"] for r in mine if not math.isnan(r["final_mean"])]
        if not mine or not finals:
            continue
        low = min(mine, key=lambda r: r["n_problems"] * r["n_samples"] * r["n_seeds"])
        n = low["n_problems"] * low["n_samples"] * low["n_seeds"]
        p = sum(finals) / len(finals)
        out.append(f"{task}: {min_detectable_effect(p, n):.3f} (p = {p:.3f}, n = {low['n_problems']} problems "
                   f"\u00d7 {low['n_samples']} samples \u00d7 {low['n_seeds']} seeds = {n})")
    return out


MDE_FORMULA = ("MDE = (z_0.975 + z_0.80) \u00b7 \u221a(2 p (1 \u2212 p) / n) "
               "\u2248 2.80 \u00b7 \u221a(2 p (1 \u2212 p) / n): the smallest difference between two methods a two-sided "
               "5% test detects with 80% power, p = the task's mean final score, n = problems \u00d7 samples \u00d7 seeds; "
               "a difference smaller than this is not evidence either way")


def _counted(values) -> str:
    """``"abc1234 (4 runs), def5678 (1 run)"``: each distinct value with its run count, sorted."""
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return ", ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in sorted(counts.items()))


def provenance(runs: list[RunRecord]) -> dict[str, str]:
    """Header facts: git revision(s) with their dirty state and run counts, preset(s), the
    evaluation's problems x samples, and the CPU kernel path(s) the runs' numbers came from."""
    dirty = sum(bool(r.git.get("dirty")) for r in runs)
    rev_text = _counted(r.revision for r in runs)
    if dirty:
        rev_text += f"; {dirty} run{'s' if dirty != 1 else ''} from a working tree with uncommitted changes (+dirty)"
    presets = sorted({r.preset for r in runs if r.preset})
    shapes: dict[str, set] = defaultdict(set)
    for r in runs:
        n, k = r.eval_shape()
        if n or k:
            shapes[r.task].add(f"{n if n else '?'} \u00d7 {k if k else '?'}")
    shape_text = "; ".join(f"{t}: {', '.join(sorted(v))}" for t, v in sorted(shapes.items(), key=lambda kv: _order(kv[0], TASK_ORDER)))
    with_samples = sum(r.sample_table() is not None for r in runs)
    if not runs:
        samples_text = "no runs"
    elif with_samples == len(runs):
        samples_text = f"all {len(runs)} runs have {SAMPLES_FILE}: intervals bootstrap over seeds and held-out problems"
    else:
        samples_text = (f"{with_samples} of {len(runs)} runs have {SAMPLES_FILE}; a row with a run without it falls "
                        "back to a t-interval over seeds (column CI)")
    paths = [r.kernel_path or "not recorded" for r in runs]
    kernel_text = _counted(paths)
    if len(set(paths)) > 1:
        kernel_text += ("; runs on different paths are equally valid samples but not bit-identical: a seed "
                        "samples other responses once a near-tie in the logits is drawn")
    return {"revisions": rev_text or "unknown", "presets": ", ".join(presets) or "unknown",
            "shape": shape_text or "unknown", "samples": samples_text, "kernels": kernel_text or "unknown"}


def _stats_explanation(baseline: str | None) -> str:
    base = (f"vs {baseline}: the paired difference of final scores (method \u2212 {baseline}), matched by seed "
            f"(and by held-out problem when eval_samples.jsonl exists), with its 95% interval; bold marks only a method "
            f"whose interval lies entirely above 0 (verdict \u201cbetter than {baseline}\u201d); otherwise the verdict "
            f"is \u201cno significant difference\u201d." if baseline else
            "No baseline comparison (--baseline none): nothing is marked.")
    return ("\u0394 is final \u2212 initial paired per seed, with a 95% interval: CI = "
            f"{CI_BOOTSTRAP} (crossed bootstrap over seeds and held-out problems, from eval_samples.jsonl), "
            f"{CI_T} (t-interval over the seeds' paired differences; runs without eval_samples.jsonl) or n/a "
            f"(one seed, or seeds whose differences are all equal, without per-problem samples). {base}")


def leaderboard_markdown(rows: list[dict], metric: str, budget_steps: int | None = None,
                         budget_wall_s: float | None = None, generated: str | None = None,
                         baseline: str | None = "grpo", runs: list[RunRecord] | None = None) -> str:
    generated = generated or _now()
    lines = ["# vpd-bench leaderboard", "",
             f"Generated {generated}. Held-out metric: `{metric}`. Budget for *best*: {_budget_text(budget_steps, budget_wall_s)}."]
    if runs is not None:
        prov = provenance(runs)
        lines += ["", f"- Git revision(s): {prov['revisions']}", f"- Preset(s): {prov['presets']}",
                  f"- Held-out problems \u00d7 samples per evaluation: {prov['shape']}",
                  f"- Per-problem samples: {prov['samples']}",
                  f"- CPU kernel path(s) (`versions.numerics.cpu_capability`): {prov['kernels']}"]
    mde = _mde_lines(rows)
    if mde:
        lines += ["- Smallest detectable difference (MDE): " + "; ".join(mde) + ".", f"  {MDE_FORMULA}."]
    lines += ["", "Initial / final cells are mean \u00b1 standard error over seeds (no \u00b1 with one seed). "
              "Seeds = runs with a score / runs. " + _stats_explanation(baseline)
              + " Rows are sorted by mean final score within each task (not a test). \u2020: includes partial runs."
              " Settings: each row's learning rate and the method values that differ from the method's defaults"
              " (e.g. chosen by `vpd-bench tune`), so the table says what was compared.", ""]
    header = _table_header(metric, baseline)
    lines.append("| " + " | ".join(header) + " |")
    text_cols = {0, 1, 2, 7, 9, len(header) - 2, len(header) - 1}
    lines.append("|" + "|".join("---" if i in text_cols else "---:" for i in range(len(header))) + "|")
    top = _winners(rows)
    for i, row in enumerate(rows):
        cells = [c.replace("|", "\\|") for c in _table_cells(row)]
        if i in top:
            cells[FINAL_COL] = f"**{cells[FINAL_COL]}**"
            cells[VS_COL] = f"**{cells[VS_COL]}**"
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| " + " | ".join(["(no runs)"] + [""] * (len(header) - 1)) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(LEADERBOARD_COLUMNS))
        writer.writeheader()
        for row in rows:
            out = {}
            for key in LEADERBOARD_COLUMNS:
                value = row[key]
                if isinstance(value, float) and math.isnan(value):
                    value = ""
                elif key == "seeds":
                    value = " ".join(map(str, value))
                elif value is None:
                    value = ""
                out[key] = value
            writer.writerow(out)


def summary_table(runs_dir, metric: str = "pass@1", baseline: str = "grpo") -> str:
    """A compact plain-text (markdown) leaderboard of a runs folder (or of a list of run folders), for the end of `vpd-bench run`:
    task, method, feedback, seeds, initial, final, delta [95% CI] and vs baseline [95% CI], with a
    verdict column and a footer naming the interval method. Works on runs without
    eval_samples.jsonl (t-interval over seeds) and with one seed (intervals n/a). Damaged input is
    skipped silently here (the full report lists it); an unknown metric raises UserError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)
        if isinstance(runs_dir, (list, tuple)):      # the run folders of one invocation
            runs = [load_run(d) for d in runs_dir]
            runs_dir = ", ".join(str(d) for d in runs_dir)
        else:
            runs = load_runs(runs_dir)
    check_metric(runs, metric)
    if baseline is not None and str(baseline).lower() in ("", "none"):
        baseline = None
    rows = build_leaderboard(runs, metric, baseline=baseline)
    if not rows:
        return f"No runs found under {runs_dir}.\n"
    header = ["task", "method", "feedback", "seeds", "initial", "final", "\u0394 [95% CI]",
              f"vs {baseline} [95% CI]" if baseline else "vs baseline", "verdict"]
    body = []
    for row in rows:
        vs = ("(baseline)" if row["verdict"] == "baseline" else
              _fmt_change(row["vs_baseline"], row["vs_baseline_ci_low"], row["vs_baseline_ci_high"]))
        body.append([row["task"], row["method"] + (" \u2020" if row["n_partial"] else ""), row["feedback"],
                     str(row["n_seeds"]), _fmt(row["initial_mean"]), _fmt(row["final_mean"]),
                     _fmt_change(row["delta"], row["delta_ci_low"], row["delta_ci_high"]), vs,
                     row["verdict"] or "\u2014"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    numeric = {3, 4, 5, 6, 7}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in numeric else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    out = [line(header), "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2)
                                        for i, w in enumerate(widths)) + "|"]
    out += [line(b) for b in body]
    methods = sorted({r["ci_method"] for r in rows} | {r["vs_baseline_ci_method"] for r in rows if r["baseline"]})
    out.append("")
    out.append(f"Held-out {metric}; initial/final: mean over seeds; \u0394 = final \u2212 initial paired per seed. "
               f"95% intervals: {', '.join(methods)}" + ("" if baseline else "; no baseline comparison")
               + ". \u2020: includes partial runs.")
    mde = _mde_lines(rows)
    if mde:
        out.append("Smallest detectable difference (5% two-sided, 80% power): " + "; ".join(mde) + ".")
    return "\n".join(out) + "\n"

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
