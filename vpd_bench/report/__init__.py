"""The reporting layer: read a runs tree, build the leaderboard, draw the figures, write the report.

A runs tree is ``<runs>/<task>/<method>/<feedback>/seed<k>/`` with ``config.yaml``,
``metrics.jsonl`` (one object per training step), ``eval.jsonl`` (one object per held-out
evaluation) and ``results.json`` (see ``vpd_bench.evaluation.results``). Any of these may be missing or
damaged: such runs are loaded, flagged and reported, never a reason to stop.

Public entry points:
  load_runs(runs_dir)                  -> list[RunRecord]
  build_leaderboard(runs, metric, ...) -> list[dict], one row per task x feedback x method
  write_report(runs_dir, out_dir, ...) -> dict {file name relative to out_dir: Path}

``docs/report.md`` describes the outputs and how to read them.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import math
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpd_bench.errors import UserError
from vpd_bench.evaluation.stats import mean_stderr, min_detectable_effect, paired_bootstrap, t_interval

DEFAULT_METRIC = "pass@1"
# Keys in an eval's "metrics" that describe the evaluation rather than score it.
NON_SCORE_KEYS = frozenset({"k", "n", "n_problems", "num_problems", "n_samples"})
RUN_FILES = ("results.json", "metrics.jsonl", "eval.jsonl")
SAMPLES_FILE = "eval_samples.jsonl"   # one row per held-out problem x sample x evaluation (optional)
PASS_REWARD = 1.0                     # a sample passes when its reward reaches this
CONFIDENCE = 0.95

METHOD_ORDER = ("grpo", "dr_grpo", "sdpo", "sdft", "opsd", "grpo_sdpo", "vpd")
TASK_ORDER = ("debug", "code", "math", "sciqa", "cold_start")
FEEDBACK_ORDER = ("none", "reference", "env", "sibling", "env+sibling", "self_critique", "hint", "noisy")
# Feedback labels of methods whose teacher reads no feedback about the rollout (the run store files
# them so): "none" for RLVR (grpo, dr_grpo), "reference" for the fixed-context distillers (sdft,
# opsd). Such runs are the baselines of every feedback source of their task in the figures.
FEEDBACK_FREE = ("none", "reference")
# The SDPO default; the feedback source the final-score bar chart shows when a task has several.
HEADLINE_FEEDBACK = "env+sibling"
FEEDBACK_ALIASES = {"env_sibling": "env+sibling", "env-sibling": "env+sibling", "sibling+env": "env+sibling"}

# Okabe & Ito (2008) colour-blind-safe palette, keyed by method name so that a method has the
# same colour, line style and marker in every figure. VPD, the method under study, gets the
# most salient colour; yellow (#F0E442) is avoided because it vanishes on white.
METHOD_STYLE: dict[str, tuple[str, str, str]] = {
    "grpo": ("#0072B2", "-", "o"),        # blue
    "dr_grpo": ("#56B4E9", "--", "s"),    # sky blue
    "sdpo": ("#009E73", "-", "^"),        # bluish green
    "sdft": ("#CC79A7", "-.", "v"),       # reddish purple
    "opsd": ("#E69F00", ":", "D"),        # orange
    "grpo_sdpo": ("#555555", "--", "P"),  # dark grey
    "vpd": ("#D55E00", "-", "*"),         # vermillion
}
# Methods not in the table above (sweep variants such as ``vpd[estep_every=1]``, new methods) take
# these in sorted-name order within one report, so each keeps one look across that report's figures.
_EXTRA_STYLES = [("#882255", "-", "X"), ("#117733", "--", "h"), ("#332288", ":", "p"),   # Paul Tol's
                 ("#999933", "-.", "d"), ("#AA4499", "-", "<"), ("#44AA99", "--", ">")]   # muted set

# (metrics.jsonl key, axis label with unit, panel title, (lowest, highest) value the signal can take).
# Drawn per method as the mean across seeds.
HEALTH_SIGNALS = (
    ("teacher_gain", "success \u2212 failure (nats)", "Teacher gain: log q \u2212 log \u03c0", (None, None)),
    ("masked_teacher_frac", "fraction of responses", "Masked-teacher fraction", (0.0, 1.0)),
    ("entropy", "nats / token", "Student entropy", (0.0, None)),
    ("response_len", "tokens", "Response length", (0.0, None)),
    ("divergence", "per-token divergence (nats)", "Teacher-student divergence", (0.0, None)),
    ("no_signal_frac", "fraction of groups", "No-signal groups", (0.0, 1.0)),
)
UNIT_INTERVAL = (0.0, 1.0)   # rewards and held-out scores

READING_GUIDE = """\
<ul>
<li><b>Leaderboard.</b> One row per task &times; method &times; feedback source. <i>Initial</i> is
the step-0 (untrained) evaluation and <i>final</i> the last held-out evaluation of each run, as the mean
over seeds &plusmn; the standard error of that mean (std with ddof=1 over &radic;n; only the value with one
seed). <i>&Delta;</i> is final &minus; initial paired per seed, with a 95% interval: a crossed bootstrap
over seeds and held-out problems when the runs wrote <code>eval_samples.jsonl</code> (per problem, the
score is the fraction of its sampled responses that pass; a problem's change is compared with the same
problem), otherwise a t-interval over the seeds' paired changes; the <i>CI</i> column says which, and
<i>n/a</i> means one seed, or seeds whose changes are all equal (no spread to estimate the noise
from), without per-problem samples. <i>vs baseline</i> is the paired difference of
final scores against the baseline method of the task (default GRPO), on the same seeds and problems, with
its 95% interval. <b>Bold</b> marks a method only where that interval lies entirely above 0; otherwise the
verdict reads &ldquo;no significant difference&rdquo;: the evaluation cannot tell the methods apart, whatever
the order of the means. The header's <i>smallest detectable difference</i> says how large a difference
the number of problems &times; samples &times; seeds could detect at all. <i>Best &le; budget</i> is each
run's best held-out evaluation at a step and training wall-clock within the budget (step 0 counts),
averaged over seeds: an oracle checkpoint choice on the evaluation split and so an optimistic number.
<i>Train reward</i> is the batch reward of the last training step. Feedback <code>none</code> (GRPO,
Dr.GRPO) and <code>reference</code> (SDFT, OPSD) mark methods that read no feedback about their
rollouts.</li>
<li><b>&dagger; partial.</b> A row marked &dagger; includes runs that stopped before their last step
(or have no <code>results.json</code>); their last evaluation is earlier than the others'. The runs
table lists every run with its status.</li>
<li><b>Curves.</b> Lines are the mean over seeds, shaded bands &plusmn; one standard error (drawn where
at least two seeds have a value). A point is drawn only where at least half of a method's seeds
have a value, so a short run does not make the mean jump. Wall-clock curves interpolate each
seed between its evaluations and are drawn over the time every seed of the method covers. The
tokens-generated curves place each evaluation at the training rollout tokens generated by then, which,
unlike wall-clock, does not depend on how busy a shared machine was. A signal logged at a single step is
drawn as points.</li>
<li><b>Health signals.</b> Teacher gain should keep rising for VPD and plateau for a passive
teacher (SDPO); a masked-teacher fraction near 1 means most responses got no teacher signal; falling
entropy with collapsing response length is the usual sign of collapse; no-signal groups are
GRPO's dead batches.</li>
<li>Colours, line styles and markers are fixed per method across all figures (colour-blind-safe
Okabe&ndash;Ito palette).</li>
</ul>
"""


class ReportWarning(UserWarning):
    """A damaged or incomplete input the report skipped or flagged."""


@dataclass
class RunRecord:
    """Everything the report knows about one run folder."""
    run_dir: Path
    task: str
    method: str
    feedback: str
    seed: int | None
    status: str                     # complete | partial | failed
    eval_history: list[dict] = field(default_factory=list)   # sorted by step, one entry per step
    train_metrics: list[dict] = field(default_factory=list)  # metrics.jsonl rows, sorted by step
    config: dict = field(default_factory=dict)
    results: dict | None = None
    steps_completed: int | None = None
    wall_time_s: float | None = None
    higher_is_better: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)           # why the run is flagged
    warnings: list[str] = field(default_factory=list)        # damaged input that was skipped
    _samples: Any = field(default=False, repr=False, compare=False)  # eval_samples.jsonl, read lazily

    @property
    def is_partial(self) -> bool:
        return self.status != "complete"

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_history)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.task, self.feedback, self.method

    @property
    def label(self) -> str:
        seed = "?" if self.seed is None else self.seed
        return f"{self.task}/{self.method}/{self.feedback}/seed{seed}"

    @property
    def git(self) -> dict:
        git = (self.results or {}).get("git")
        return git if isinstance(git, dict) else {}

    @property
    def revision(self) -> str:
        """Short git revision the run was made from, "+dirty" when the tree had uncommitted changes;
        "unknown" when results.json records none."""
        rev = self.git.get("revision")
        if not rev:
            return "unknown"
        return str(rev)[:7] + ("+dirty" if self.git.get("dirty") else "")

    @property
    def preset(self) -> str | None:
        run = (self.results or {}).get("run")
        value = run.get("preset") if isinstance(run, dict) else None
        return None if value in (None, "") else str(value)

    def eval_shape(self) -> tuple[int | None, int | None]:
        """(held-out problems, sampled responses per problem) of the run's last evaluation, from
        eval.jsonl's ``n_problems`` and ``k`` (eval_samples.jsonl when those are missing)."""
        for entry in reversed(self.eval_history):
            m = entry["metrics"]
            n, k = _as_int(m.get("n_problems", m.get("num_problems"))), _as_int(m.get("k", m.get("n_samples")))
            if n is not None or k is not None:
                return n, k
        table = self.sample_table()
        if table:
            last = table[max(table)]
            ks = [len([x for x in v if x[0] != "greedy"]) for v in last.values()]
            return len(last), (max(ks) if ks else None)
        return None, None

    def sample_table(self) -> dict[int, dict[str, list[tuple[Any, float]]]] | None:
        """eval_samples.jsonl as {step: {problem_id: [(sample, reward), ...]}}, read once; None when
        the run has no such file (runs made before it was written). Later rows for the same
        step, problem and sample (a resumed run re-evaluating) replace earlier ones."""
        if self._samples is False:
            path = self.run_dir / SAMPLES_FILE
            if not path.is_file():
                self._samples = None
            else:
                table: dict[int, dict[str, dict[Any, float]]] = defaultdict(lambda: defaultdict(dict))
                for row in read_jsonl(path, self.warnings):
                    step, reward = _as_int(row.get("step")), _as_float(row.get("reward"))
                    pid, sample = row.get("problem_id"), row.get("sample")
                    if step is None or reward is None or pid is None or sample is None:
                        continue
                    table[step][str(pid)][sample] = reward
                self._samples = {st: {pid: list(v.items()) for pid, v in probs.items()} for st, probs in table.items()}
        return self._samples

    def problem_scores(self, metric: str, step: int) -> dict[str, float] | None:
        """Per held-out problem score at one evaluation step, from eval_samples.jsonl: pass@1 is the
        fraction of the sampled (non-greedy) responses that pass (reward >= 1), avg@k their mean
        reward, greedy whether the greedy response passes, pass@k the unbiased pass@k. None when the
        run has no samples for that step or the metric cannot be computed from samples."""
        table = self.sample_table()
        if not table or step not in table:
            return None
        out: dict[str, float] = {}
        for pid, samples in table[step].items():
            sampled = [r for s, r in samples if s != "greedy"]
            greedy = [r for s, r in samples if s == "greedy"]
            if metric == "pass@1" and sampled:
                out[pid] = sum(r >= PASS_REWARD for r in sampled) / len(sampled)
            elif metric == "avg@k" and sampled:
                out[pid] = sum(sampled) / len(sampled)
            elif metric == "greedy" and greedy:
                out[pid] = float(greedy[-1] >= PASS_REWARD)
            elif metric == "pass@k" and sampled:
                out[pid] = float(any(r >= PASS_REWARD for r in sampled))
        return out or None


# ----------------------------------------------------------------------------------------------
# loading


def _warn(record_warnings: list[str], message: str) -> None:
    record_warnings.append(message)
    warnings.warn(message, ReportWarning, stacklevel=3)


def read_jsonl(path: Path, problems: list[str] | None = None) -> list[dict]:
    """Rows of a JSONL file. A line that is not a JSON object is skipped with a ReportWarning that
    names the file and the 1-based line number (and is appended to ``problems``)."""
    problems = [] if problems is None else problems
    rows: list[dict] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                _warn(problems, f"{path}:{lineno}: skipped corrupt line ({err.msg} at column {err.colno})")
                continue
            if not isinstance(row, dict):
                _warn(problems, f"{path}:{lineno}: skipped line that is not a JSON object")
                continue
            rows.append(row)
    return rows


def canonical_feedback(name: Any) -> str:
    """Folder and config spellings of a feedback source mapped to the CLI name (env_sibling -> env+sibling)."""
    name = str(name)
    return FEEDBACK_ALIASES.get(name, name)


def _as_float(value: Any) -> float | None:
    """A finite float, or None for null / NaN / inf / non-numbers (bool is not a number here)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _as_int(value: Any) -> int | None:
    x = _as_float(value)
    return None if x is None else int(x)


def _find_run_dirs(root: Path) -> list[Path]:
    """Folders that hold a run: a ``seed<k>`` folder, or any folder with a run file in it.
    A run folder is not searched further (its checkpoints are not runs)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if re.fullmatch(r"seed\d+", here.name) or any(f in filenames for f in RUN_FILES):
            found.append(here)
            dirnames[:] = []
        else:
            dirnames.sort()
    return sorted(found)


def _load_yaml(path: Path, problems: list[str]) -> dict:
    try:
        import yaml
        data = yaml.safe_load(path.read_text())
    except Exception as err:  # noqa: BLE001 - any unreadable config is reported, not fatal
        _warn(problems, f"{path}: unreadable config ({type(err).__name__}: {err})")
        return {}
    return data if isinstance(data, dict) else {}


def _normalise_evals(entries: list, source: Path, problems: list[str]) -> list[dict]:
    by_step: dict[int, dict] = {}
    for i, entry in enumerate(entries, start=1):
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        step = _as_int(entry.get("step")) if isinstance(entry, dict) else None
        if not isinstance(metrics, dict) or step is None:
            _warn(problems, f"{source}: evaluation #{i} has no step or metrics; skipped")
            continue
        # A resumed run may re-evaluate a step: the later entry wins.
        by_step[step] = {"step": step, "wall_time_s": _as_float(entry.get("wall_time_s")), "metrics": metrics}
    return [by_step[s] for s in sorted(by_step)]


def _effective_feedback(config: dict) -> str | None:
    """The feedback label the run store files a run under, from its resolved config: "none" for a
    method without a teacher, "reference" for a teacher reading the data set's reference."""
    method = config.get("method")
    if not isinstance(method, dict):
        return None
    if "teacher" not in method:
        return "none"
    if method.get("context") == "reference":
        return "reference"
    return None


def _identity(folder: dict, run_info: dict, config: dict) -> tuple[str, str, str]:
    """(task, method, feedback) of a run.

    results.json's ``run`` and config.yaml record what was asked for; the folder
    ``<task>/<method>/<feedback>/seed<k>`` records what the run store made of it, which is more
    specific in two ways the report needs: the method folder carries a sweep's grid label
    (``vpd[estep_every=1]``), and the feedback folder says ``none`` / ``reference`` for methods
    that read no feedback even though the config still names a feedback source.
    """
    def from_config(group: str) -> str | None:
        value = config.get(group)
        value = value.get("name") if isinstance(value, dict) else value
        return None if value in (None, "") else str(value)

    def first(*values) -> str | None:
        return next((str(v) for v in values if v not in (None, "")), None)

    task = first(run_info.get("task"), from_config("task"), folder.get("task")) or "unknown"

    asked_method = first(run_info.get("method"), from_config("method"))
    folder_method = folder.get("method")
    if asked_method and folder_method and (folder_method == asked_method or folder_method.startswith(asked_method + "[")):
        method = folder_method
    else:
        method = asked_method or folder_method or "unknown"

    asked_feedback = first(run_info.get("feedback"), from_config("feedback"))
    asked_feedback = canonical_feedback(asked_feedback) if asked_feedback else None
    folder_feedback = canonical_feedback(folder["feedback"]) if folder.get("feedback") else None
    if folder_feedback and (folder_feedback == asked_feedback or folder_feedback in FEEDBACK_FREE or not asked_feedback):
        feedback = folder_feedback
    else:
        feedback = _effective_feedback(config) or asked_feedback or folder_feedback or "unknown"
    return task, method, feedback


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Load one run folder. Identity: see ``_identity``."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    notes: list[str] = []

    seed_match = re.fullmatch(r"seed(\d+)", run_dir.name)
    folder_seed = int(seed_match.group(1)) if seed_match else None
    # The store's layout <task>/<method>/<feedback>/seed<k>, read from the absolute path so that
    # RUNS_DIR may be any level of the tree (or one run folder).
    parts = run_dir.resolve().parts
    folder = dict(zip(("task", "method", "feedback"), parts[-4:-1])) if seed_match and len(parts) >= 4 else {}

    config: dict = {}
    if (run_dir / "config.yaml").is_file():
        config = _load_yaml(run_dir / "config.yaml", problems)

    results: dict | None = None
    results_path = run_dir / "results.json"
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text())
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as err:
            _warn(problems, f"{results_path}: unreadable results.json ({err}); run treated as partial")
            results = None
    run_info = (results or {}).get("run") or {}
    if not isinstance(run_info, dict):
        run_info = {}
    task, method, feedback = _identity(folder, run_info, config)

    seed = _as_int(run_info.get("seed"))
    if seed is None:
        seed = _as_int(config.get("seed")) if folder_seed is None else folder_seed

    train_metrics: list[dict] = []
    if (run_dir / "metrics.jsonl").is_file():
        rows = read_jsonl(run_dir / "metrics.jsonl", problems)
        train_metrics = sorted((r for r in rows if _as_int(r.get("step")) is not None),
                               key=lambda r: _as_int(r["step"]))

    eval_entries: list = []
    eval_source = run_dir / "eval.jsonl"
    if eval_source.is_file():
        eval_entries = read_jsonl(eval_source, problems)
    if not eval_entries and results and isinstance(results.get("eval_history"), list):
        eval_entries, eval_source = results["eval_history"], results_path
    eval_history = _normalise_evals(eval_entries, eval_source, problems)

    status = str((results or {}).get("status") or "partial")
    if status not in ("complete", "partial", "failed"):
        notes.append(f"unknown status {status!r}")
        status = "partial"
    if results is None:
        notes.append("no results.json (still running or stopped)")
    elif status != "complete":
        notes.append(status)
    if not eval_history:
        notes.append("no held-out evaluation")

    steps = _as_int((results or {}).get("steps_completed"))
    if steps is None and train_metrics:
        steps = _as_int(train_metrics[-1].get("step"))
    wall = _as_float((results or {}).get("wall_time_s"))
    if wall is None and train_metrics:
        wall = _as_float(train_metrics[-1].get("wall_time_s"))

    return RunRecord(
        run_dir=run_dir, task=task, method=method, feedback=feedback, seed=seed, status=status,
        eval_history=eval_history, train_metrics=train_metrics, config=config, results=results,
        steps_completed=steps, wall_time_s=wall,
        higher_is_better=dict((results or {}).get("higher_is_better") or {}),
        notes=notes, warnings=problems)


def load_runs(runs_dir: str | os.PathLike) -> list[RunRecord]:
    """Every run under ``runs_dir`` (which may itself be a single run folder), sorted by
    task, feedback, method and seed. Damaged files produce ReportWarnings, not exceptions."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"runs folder not found: {root} (give the folder `vpd-bench run` wrote to, default runs/)")
    runs = [load_run(d) for d in _find_run_dirs(root)]
    seen: dict[tuple, RunRecord] = {}
    for run in runs:
        ident = (*run.key, run.seed)
        if ident in seen:
            msg = f"{run.run_dir}: same task/method/feedback/seed as {seen[ident].run_dir}; both are counted"
            run.notes.append("duplicate seed")
            _warn(run.warnings, msg)
        seen[ident] = run
    return sorted(runs, key=lambda r: (*_sort_key(r.task, r.feedback, r.method), r.seed if r.seed is not None else -1))


# ----------------------------------------------------------------------------------------------
# per-run numbers and the leaderboard


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    base = re.split(r"[\[(]", value, maxsplit=1)[0]     # vpd[estep_every=1] sorts with vpd, noisy(0.3) with noisy
    return (order.index(base) if base in order else len(order), value)


def _sort_key(task: str, feedback: str, method: str) -> tuple:
    return _order(task, TASK_ORDER), _order(feedback, FEEDBACK_ORDER), _order(method, METHOD_ORDER)


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
    "steps_completed_mean", "wall_time_s_mean", "seeds", "revisions", "flags", "higher_is_better", "settings",
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


def provenance(runs: list[RunRecord]) -> dict[str, str]:
    """Header facts: git revision(s) with their dirty state and run counts, preset(s), and the
    evaluation's problems x samples."""
    revs: dict[str, int] = defaultdict(int)
    for r in runs:
        revs[r.revision] += 1
    dirty = sum(bool(r.git.get("dirty")) for r in runs)
    rev_text = ", ".join(f"{rev} ({n} run{'s' if n != 1 else ''})" for rev, n in sorted(revs.items()))
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
    return {"revisions": rev_text or "unknown", "presets": ", ".join(presets) or "unknown",
            "shape": shape_text or "unknown", "samples": samples_text}


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
                  f"- Per-problem samples: {prov['samples']}"]
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


# ----------------------------------------------------------------------------------------------
# figures


_assigned_styles: dict[str, tuple[str, str, str]] = {}


def assign_styles(methods) -> None:
    """Give every method outside METHOD_STYLE its own style from _EXTRA_STYLES (sorted by name;
    beyond six the colours repeat with another line style). Called once per report."""
    _assigned_styles.clear()
    extra = sorted({m for m in methods if m not in METHOD_STYLE}, key=lambda m: _order(m, METHOD_ORDER))
    dashes = ["-", "--", ":", "-."]
    for i, method in enumerate(extra):
        colour, ls, marker = _EXTRA_STYLES[i % len(_EXTRA_STYLES)]
        if i >= len(_EXTRA_STYLES):
            ls = dashes[(dashes.index(ls) + i // len(_EXTRA_STYLES)) % len(dashes)]
        _assigned_styles[method] = (colour, ls, marker)


def method_style(method: str) -> dict:
    """Colour, line style and marker of a method, the same in every figure of a report (fixed for
    the known methods, see METHOD_STYLE)."""
    if method in METHOD_STYLE:
        colour, ls, marker = METHOD_STYLE[method]
    elif method in _assigned_styles:
        colour, ls, marker = _assigned_styles[method]
    else:
        colour, ls, marker = _EXTRA_STYLES[sum(map(ord, method)) % len(_EXTRA_STYLES)]
    return {"color": colour, "linestyle": ls, "marker": marker}


_RC = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 9, "figure.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "lines.linewidth": 1.6, "lines.markersize": 4, "svg.fonttype": "none",
    "savefig.dpi": 200, "axes.titlepad": 4, "axes.formatter.useoffset": False,
}


def _sorted_methods(methods) -> list[str]:
    return sorted(set(methods), key=lambda m: _order(m, METHOD_ORDER))


def _pick_unit(largest: float, units: tuple[tuple[float, str, float], ...]) -> tuple[str, float]:
    """(name, divisor) of the first unit whose bound exceeds ``largest`` (the last one otherwise)."""
    for bound, name, scale in units:
        if largest < bound:
            return name, scale
    return units[-1][1], units[-1][2]


def _wall_unit(max_seconds: float) -> tuple[str, float]:
    return _pick_unit(max_seconds, ((120, "s", 1.0), (7200, "min", 60.0), (math.inf, "h", 3600.0)))


def _grid(n_panels: int, max_cols: int = 3, panel_w: float = 3.4, panel_h: float = 2.6):
    ncols = min(max_cols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    width = max(panel_w * ncols, 6.4)              # room for the figure title and legend
    return nrows, ncols, (width, panel_h * nrows + 0.9)


def _new_figure(n_panels: int, **kwargs):
    from matplotlib.figure import Figure
    nrows, ncols, size = _grid(n_panels, **kwargs)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, list(axes[:n_panels])


def _method_legend(fig, methods: list[str], markers: bool = True) -> None:
    from matplotlib.lines import Line2D
    handles = []
    for m in methods:
        st = method_style(m)
        handles.append(Line2D([], [], color=st["color"], linestyle=st["linestyle"],
                              marker=st["marker"] if markers else None, label=m))
    _figure_legend(fig, handles)


def _figure_legend(fig, handles) -> None:
    """One legend for the whole figure, below the panels, in as few and as even rows as fit."""
    # Rough width of an entry in inches at 9 pt: handle and padding, then ~0.075 in per character.
    total = sum(0.6 + 0.075 * len(h.get_label()) for h in handles)
    rows = max(1, math.ceil(total / (0.92 * fig.get_figwidth())))
    fig.legend(handles=handles, loc="outside lower center", ncols=math.ceil(len(handles) / rows), frameon=False)


def _mean_band(series: list[tuple[np.ndarray, np.ndarray]], interpolate: bool = False):
    """Mean and standard error across seeds on the union of the seeds' x values.

    Each seed is (x, y) with x increasing. Without ``interpolate`` a point is kept where at least
    half of the seeds have a value there. With ``interpolate`` each seed is interpolated linearly
    between its own points (never extrapolated) and a point is kept only where every seed covers
    it: seeds end at different wall-clock times, and a mean over a changing set of seeds jumps.
    The standard error is NaN where fewer than two seeds have a value.
    """
    series = [(x, y) for x, y in series if len(x)]
    if interpolate and any(len(x) >= 2 for x, _ in series):
        # A seed with a single evaluation has no span to interpolate over; it would cut the curve to one point.
        series = [(x, y) for x, y in series if len(x) >= 2]
    if not series:
        return np.array([]), np.array([]), np.array([])
    grid = np.unique(np.concatenate([x for x, _ in series]))
    matrix = np.full((len(series), len(grid)), np.nan)
    for i, (x, y) in enumerate(series):
        ok = ~np.isnan(y)
        x, y = x[ok], y[ok]
        if not len(x):
            continue
        if interpolate and len(x) >= 2:
            matrix[i] = np.interp(grid, x, y, left=np.nan, right=np.nan)
        else:
            matrix[i, np.searchsorted(grid, x)] = y
    present = ~np.isnan(matrix)
    count = present.sum(axis=0)
    keep = count >= (len(series) if interpolate else max(1, math.ceil(len(series) / 2)))
    safe = np.where(present, matrix, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = safe.sum(axis=0) / count
        dev = np.where(present, matrix - mean, 0.0)
        stderr = np.where(count >= 2, np.sqrt((dev ** 2).sum(axis=0) / np.maximum(count - 1, 1)) / np.sqrt(count), np.nan)
    return grid[keep], mean[keep], stderr[keep]


def _plot_band(ax, method: str, x, mean, stderr, markers: bool) -> np.ndarray:
    """Draw the mean line and the +- s.e. band; return every y value drawn (for _tidy_y)."""
    st = method_style(method)
    if len(x) == 1:
        # A line through one point draws nothing: a single logged value is a marker (with its s.e.).
        markers = True
        if not np.isnan(stderr[0]):
            ax.errorbar(x, mean, yerr=stderr, color=st["color"], capsize=2.5, linewidth=1.0, linestyle="none")
    ax.plot(x, mean, color=st["color"], linestyle=st["linestyle"],
            marker=st["marker"] if markers else None, label=method)
    lo = np.where(np.isnan(stderr), mean, mean - stderr)
    hi = np.where(np.isnan(stderr), mean, mean + stderr)
    if np.any(~np.isnan(stderr)):
        ax.fill_between(x, lo, hi, color=st["color"], alpha=0.18, linewidth=0)
    return np.concatenate([mean, lo, hi])


def _tidy_y(ax, drawn: list[np.ndarray], bounds: tuple[float | None, float | None]) -> None:
    """Keep the y axis inside what the quantity can take (no negative fractions), give a flat
    line a sensible range instead of matplotlib's +-0.04, and write tiny or huge tick values in
    full on each tick rather than as an offset above the axis, where it collides with the title."""
    from matplotlib.ticker import FuncFormatter
    values = np.concatenate(drawn) if drawn else np.array([])
    values = values[np.isfinite(values)]
    if not values.size:
        return
    lo_bound, hi_bound = bounds
    vmin, vmax = float(values.min()), float(values.max())
    if vmax - vmin < 1e-12:
        pad = 0.05 if (lo_bound, hi_bound) == UNIT_INTERVAL else max(abs(vmin) * 0.05, 1e-3)
        ax.set_ylim(vmin - pad, vmax + pad)
    bottom, top = ax.get_ylim()
    margin = 0.02 * (top - bottom)
    if lo_bound is not None and bottom < lo_bound - margin and vmin >= lo_bound:
        bottom = lo_bound - margin
    if hi_bound is not None and top > hi_bound + margin and vmax <= hi_bound:
        top = hi_bound + margin
    ax.set_ylim(bottom, top)
    largest = max(abs(bottom), abs(top))
    if largest < 1e-2 or largest >= 1e5:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.3g}"))


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that ignores NaN; NaN stays NaN."""
    if window <= 1 or len(y) < 3:
        return y
    valid = ~np.isnan(y)
    kernel = np.ones(window)
    num = np.convolve(np.where(valid, y, 0.0), kernel, mode="same")
    den = np.convolve(valid.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid] = np.nan
    return out


def _smoothing_window(n_steps: int) -> int:
    if n_steps <= 50:
        return 1
    w = max(3, round(n_steps / 25))
    return w + (w % 2 == 0)


NO_FEEDBACK_PANEL = "no feedback"


def _panels(runs: list[RunRecord]) -> list[tuple[str, str, list[RunRecord]]]:
    """(task, feedback source, runs) for each task x feedback source that a feedback-reading method
    was run with. The task's feedback-free runs (feedback "none" / "reference") join every panel
    of their task as baselines; a task with only such runs gets one "no feedback" panel."""
    out = []
    for task in sorted({r.task for r in runs}, key=lambda t: _order(t, TASK_ORDER)):
        mine = [r for r in runs if r.task == task]
        free = [r for r in mine if r.feedback in FEEDBACK_FREE]
        sources = sorted({r.feedback for r in mine if r.feedback not in FEEDBACK_FREE},
                         key=lambda f: _order(f, FEEDBACK_ORDER))
        for feedback in sources:
            out.append((task, feedback, [r for r in mine if r.feedback == feedback] + free))
        if not sources:
            out.append((task, NO_FEEDBACK_PANEL, free))
    return out


def _tokens_at(run: RunRecord):
    """step -> cumulative tokens generated in training rollouts (metrics.jsonl's tokens_generated;
    step 0 is 0 tokens), interpolated between logged steps and None beyond them."""
    steps, tokens = [0.0], [0.0]
    for row in run.train_metrics:
        t, st = _as_float(row.get("tokens_generated")), _as_int(row.get("step"))
        if t is not None and st is not None and st > steps[-1]:
            steps.append(float(st))
            tokens.append(t)

    def at(step: int) -> float | None:
        if len(steps) < 2 or step > steps[-1]:
            return None
        return float(np.interp(step, steps, tokens))
    return at


def _eval_series(run: RunRecord, metric: str, by: str):
    """(x, score) of the run's evaluations; x is the step (by='step'), the training wall-clock in
    seconds ('wall') or the cumulative tokens generated ('tokens')."""
    xs, ys = [], []
    tokens = _tokens_at(run) if by == "tokens" else None
    for entry in run.eval_history:
        value, _ = score_of(entry["metrics"], metric)
        x = entry["step"] if by == "step" else entry["wall_time_s"] if by == "wall" else tokens(entry["step"])
        if value is not None and x is not None:
            xs.append(float(x))
            ys.append(value)
    return np.asarray(xs), np.asarray(ys)


PROBE_COLUMNS = ["task", "method", "feedback", "seed", "step", "probe_logratio", "teacher_pass", "student_pass"]


def _probe_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """Runs that logged the teacher probe, as records whose step series are the probe rows."""
    import dataclasses
    out = []
    for r in runs:
        path = r.run_dir / "teacher_probe.jsonl"
        rows = read_jsonl(path, r.warnings) if path.exists() else []
        if rows:
            out.append(dataclasses.replace(r, train_metrics=sorted(rows, key=lambda x: _as_int(x.get("step")) or 0)))
    return out


def write_teacher_probe_csv(probes: list[RunRecord], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PROBE_COLUMNS)
        for r in probes:
            for row in r.train_metrics:
                w.writerow([r.task, r.method, r.feedback, r.seed, row.get("step"), row.get("probe_logratio"),
                            row.get("teacher_pass"), row.get("student_pass")])


def _fig_teacher_probe(probes: list[RunRecord], notes: list[str]):
    signals = []
    for task in sorted({r.task for r in probes}):
        members = [r for r in probes if r.task == task]
        signals += [(f"{task}: log q(y*|x,C) \u2212 log \u03c0(y*|x)", members, "probe_logratio", "nats per token",
                     (None, None)),
                    (f"{task}: greedy pass reading feedback", members, "teacher_pass", "pass rate", (0.0, 1.0)),
                    (f"{task}: greedy pass, plain prompt", members, "student_pass", "pass rate", (0.0, 1.0))]
    return _fig_train_curves(signals, "Teacher probe", notes, "teacher probe")


def _train_series(run: RunRecord, key: str):
    xs, ys = [], []
    for row in run.train_metrics:
        value = _as_float(row.get(key))
        if value is not None:
            xs.append(float(_as_int(row["step"])))
            ys.append(value)
    return np.asarray(xs), np.asarray(ys)


def _tokens_unit(max_tokens: float) -> tuple[str, float]:
    return _pick_unit(max_tokens, ((1e4, "tokens", 1.0), (1e7, "thousand tokens", 1e3),
                                   (math.inf, "million tokens", 1e6)))


def _single_x(ax, drawn_x: list[np.ndarray], integer: bool) -> bool:
    """Give a panel whose every point sits at one x a sensible x range around it (matplotlib's
    default is a sliver); True when it did."""
    xs = np.concatenate(drawn_x) if drawn_x else np.array([])
    xs = xs[np.isfinite(xs)]
    if not xs.size or xs.max() - xs.min() > 1e-12:
        return False
    x0 = float(xs[0])
    half = 1.0 if integer else max(abs(x0) * 0.5, 1.0)
    ax.set_xlim(x0 - half, x0 + half)
    return True


def _fig_score_curves(runs, metric, by: str, notes: list[str]):
    """Held-out score vs training step (by='step'), wall-clock (by='wall') or tokens generated
    (by='tokens'), one panel per task x feedback."""
    from matplotlib.ticker import MaxNLocator
    panels = []
    for task, feedback, members in _panels(runs):
        per_method = defaultdict(list)
        for r in members:
            x, y = _eval_series(r, metric, by)
            if len(x):
                per_method[r.method].append((x, y))
        if per_method:
            panels.append((task, feedback, per_method))
        else:
            notes.append(f"score vs {by}: {task} \u00b7 {feedback} has no held-out evaluation"
                         + {"wall": " with a wall-clock time", "tokens": " at a step with logged tokens_generated"}.get(by, "")
                         + "; panel skipped")
    if not panels:
        return None
    unit, scale = "s", 1.0
    if by == "wall":
        unit, scale = _wall_unit(max(float(x.max()) for _, _, pm in panels for s in pm.values() for x, _ in s))
    elif by == "tokens":
        unit, scale = _tokens_unit(max(float(x.max()) for _, _, pm in panels for s in pm.values() for x, _ in s))
    # Markers mark real evaluations, so only on the step axis (wall-clock curves are interpolated).
    use_markers = by == "step" and max(len(x) for _, _, pm in panels for s in pm.values() for x, _ in s) <= 25
    fig, axes = _new_figure(len(panels))
    methods = set()
    for ax, (task, feedback, per_method) in zip(axes, panels):
        drawn, drawn_x = [], []
        for method in _sorted_methods(per_method):
            x, mean, se = _mean_band(per_method[method], interpolate=(by != "step"))
            drawn.append(_plot_band(ax, method, x / scale, mean, se, markers=use_markers))
            drawn_x.append(x / scale)
            methods.add(method)
        raw = np.concatenate([y for s in per_method.values() for _, y in s])
        _tidy_y(ax, drawn, UNIT_INTERVAL if raw.min() >= 0 and raw.max() <= 1 else (None, None))
        ax.set_title(f"{task} \u00b7 {feedback}")
        ax.set_xlabel({"step": "training step", "wall": f"training wall-clock ({unit})",
                       "tokens": "tokens generated in training" + ("" if unit == "tokens" else f" ({unit})")}[by])
        if by == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_ylabel(f"held-out {metric}")
        if not _single_x(ax, drawn_x, integer=(by == "step")):
            ax.margins(x=0.02)
    what = {"step": "training step", "wall": "training wall-clock", "tokens": "tokens generated"}[by]
    fig.suptitle(f"Held-out {metric} vs {what} (mean \u00b1 s.e. over seeds)")
    _method_legend(fig, _sorted_methods(methods), markers=use_markers)
    return fig


def _headline_feedback(rows: list[dict], task: str) -> str | None:
    """The feedback source a task's final-score bars show: env+sibling (the SDPO default) when it
    was run, else the source with most seeds; None when only feedback-free methods ran."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["task"] == task and row["feedback"] not in FEEDBACK_FREE and row["n_seeds"]:
            counts[row["feedback"]] += row["n_seeds"]
    if not counts:
        return None
    if HEADLINE_FEEDBACK in counts:
        return HEADLINE_FEEDBACK
    return sorted(counts, key=lambda f: (-counts[f], _order(f, FEEDBACK_ORDER)))[0]


def _baseline_row(by_key: dict, task: str, method: str) -> dict | None:
    return next((by_key[(task, f, method)] for f in FEEDBACK_FREE if (task, f, method) in by_key), None)


def _baseline_label(method: str, feedback: str) -> str:
    return f"{method} (no feedback)" if feedback == "none" else f"{method} ({feedback})"


def _grouped_bars(ax, groups: list[str], methods: list[str], cell, points: dict, initial: bool = False) -> bool:
    """Bars per group (x) and method (colour); cell(group, method) -> leaderboard row or None;
    points[(task, feedback, method)] -> the seeds' final scores, drawn as dots. With ``initial``
    a dashed black line across each bar marks that row's mean step-0 score."""
    width = 0.8 / max(1, len(methods))
    any_partial = False
    for j, method in enumerate(methods):
        st = method_style(method)
        for i, group in enumerate(groups):
            row = cell(group, method)
            if row is None or math.isnan(row["final_mean"]):
                continue
            xpos = i - 0.4 + width * (j + 0.5)
            partial = row["n_partial"] > 0
            any_partial |= partial
            err = None if math.isnan(row["final_stderr"]) else row["final_stderr"]
            ax.bar(xpos, row["final_mean"], width * 0.92, color=st["color"], edgecolor="white" if not partial else "black",
                   linewidth=0.6, hatch="///" if partial else None, yerr=err, capsize=2.5,
                   error_kw={"elinewidth": 1.0, "ecolor": "black"})
            if initial and not math.isnan(row["initial_mean"]):
                ax.hlines(row["initial_mean"], xpos - width * 0.5, xpos + width * 0.5, colors="black",
                          linestyles=(0, (3, 1.5)), linewidth=1.3, zorder=4)
            seeds = points.get((row["task"], row["feedback"], row["method"]), [])
            if len(seeds) > 1:
                ax.scatter(np.full(len(seeds), xpos), seeds, s=9, color="black", alpha=0.55, zorder=3, linewidths=0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="x", visible=False)
    bottom, top = ax.get_ylim()
    if bottom < 0 <= min((r["final_mean"] for g in groups for m in methods if (r := cell(g, m)) is not None), default=0):
        # Bars start at zero; all-zero bars get a unit axis rather than matplotlib's +-0.05.
        ax.set_ylim(0, top if top > 1e-9 else 1.0)
    return any_partial


def _bar_legend(fig, methods: list[str], any_partial: bool, seeds: bool, baselines: list[tuple[str, str]] = (),
                labels: dict[str, str] | None = None, initial: bool = False) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    labels = labels or {}
    handles = [Patch(facecolor=method_style(m)["color"], label=labels.get(m, m)) for m in methods]
    if initial:
        handles.append(Line2D([], [], color="black", linestyle=(0, (3, 1.5)), linewidth=1.3, label="initial (step 0)"))
    for method, feedback in baselines:
        st = method_style(method)
        handles.append(Line2D([], [], color=st["color"], linestyle=st["linestyle"], linewidth=1.6,
                              label=_baseline_label(method, feedback)))
    if seeds:
        handles.append(Line2D([], [], marker="o", linestyle="none", color="black", alpha=0.55, markersize=3, label="seed"))
    if any_partial:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="includes partial runs"))
    _figure_legend(fig, handles)


def _seed_points(runs, metric) -> dict:
    table = defaultdict(list)
    for r in runs:
        x, y = _eval_series(r, metric, "step")
        if len(y):
            table[r.key].append(y[-1])
    return table


def _fig_final_bars(runs, rows, metric, notes):
    by_key = {(r["task"], r["feedback"], r["method"]): r for r in rows if not math.isnan(r["final_mean"])}
    tasks = sorted({t for t, _, _ in by_key}, key=lambda t: _order(t, TASK_ORDER))
    if not tasks:
        notes.append("final-score bars: no run has a held-out score; figure skipped")
        return None
    chosen = {t: _headline_feedback(rows, t) for t in tasks}

    def cell(task: str, method: str) -> dict | None:
        # The task's headline feedback source; a method that reads no feedback shows its only runs.
        row = by_key.get((task, chosen[task], method)) if chosen[task] else None
        return row or _baseline_row(by_key, task, method)

    methods = _sorted_methods(m for t, _, m in by_key if cell(t, m) is not None)
    # Each method is labelled with the feedback its own runs read (GRPO "none", SDFT "reference"),
    # not the task's headline source.
    feedback_of: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        for m in methods:
            row = cell(t, m)
            if row is not None and row["feedback"] not in feedback_of[m]:
                feedback_of[m].append(row["feedback"])
    labels = {m: f"{m} ({' / '.join(feedback_of[m])})" for m in methods}
    points = _seed_points(runs, metric)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(5.6, 1.0 + 0.32 * len(methods) * len(tasks) + 0.5 * len(tasks)), 3.6), layout="constrained")
    ax = fig.add_subplot()
    any_partial = _grouped_bars(ax, tasks, methods, cell=cell, points=points, initial=True)
    ax.set_ylabel(f"held-out {metric} (final evaluation)")
    ax.set_xlabel("task")
    ax.set_title(f"Final held-out {metric} by method (mean \u00b1 s.e. over seeds)")
    _bar_legend(fig, methods, any_partial, seeds=any(len(v) > 1 for v in points.values()), labels=labels,
                initial=any(not math.isnan(cell(t, m)["initial_mean"]) for t in tasks for m in methods
                            if cell(t, m) is not None))
    _tilt_crowded_ticks(fig, [ax])
    return fig


def _fig_feedback_ablation(runs, rows, metric, notes):
    """Per task: final score by feedback source (x) and method (bars); methods that read no
    feedback are horizontal reference lines."""
    by_key = {(r["task"], r["feedback"], r["method"]): r for r in rows if not math.isnan(r["final_mean"])}
    points = _seed_points(runs, metric)
    panels = []
    for task in sorted({t for t, _, _ in by_key}, key=lambda t: _order(t, TASK_ORDER)):
        sources = sorted({f for t, f, _ in by_key if t == task and f not in FEEDBACK_FREE},
                         key=lambda f: _order(f, FEEDBACK_ORDER))
        if len(sources) < 2:
            what = f"one feedback source only ({sources[0]})" if sources else "no feedback-reading method"
            notes.append(f"feedback ablation: {task} has results for {what}; panel skipped")
            continue
        panels.append((task, sources))
    if not panels:
        return None
    fig, axes = _new_figure(len(panels), max_cols=2, panel_w=max(4.0, 0.9 + 0.75 * max(len(f) for _, f in panels)),
                            panel_h=3.0)
    methods_all, baselines_all, any_partial = set(), set(), False
    for ax, (task, sources) in zip(axes, panels):
        methods = _sorted_methods(m for t, f, m in by_key if t == task and f in sources)
        methods_all.update(methods)
        any_partial |= _grouped_bars(ax, sources, methods, cell=lambda g, m, t=task: by_key.get((t, g, m)), points=points)
        for (t, f, m), row in sorted(by_key.items(), key=lambda kv: _order(kv[0][2], METHOD_ORDER)):
            if t == task and f in FEEDBACK_FREE:
                st = method_style(m)
                ax.axhline(row["final_mean"], color=st["color"], linestyle=st["linestyle"], linewidth=1.6, zorder=4)
                baselines_all.add((m, f))
                any_partial |= row["n_partial"] > 0
        ax.set_title(task)
        ax.set_xlabel("feedback source")
        ax.set_ylabel(f"held-out {metric} (final)")
    fig.suptitle(f"Feedback-source ablation: final held-out {metric} (mean \u00b1 s.e. over seeds)")
    baselines = sorted(baselines_all, key=lambda mf: _order(mf[0], METHOD_ORDER))
    _bar_legend(fig, _sorted_methods(methods_all), any_partial, seeds=any(len(v) > 1 for v in points.values()),
                baselines=baselines)
    _tilt_crowded_ticks(fig, axes)
    return fig


def _tilt_crowded_ticks(fig, axes) -> None:
    """Tilt an axis' x tick labels only where they would touch when drawn side by side."""
    fig.draw_without_rendering()
    for ax in axes:
        boxes = sorted((label.get_window_extent() for label in ax.get_xticklabels() if label.get_text()),
                       key=lambda b: b.x0)
        gap = 4 * fig.dpi / 72                                 # 4 pt between neighbours
        if any(a.x1 + gap > b.x0 for a, b in zip(boxes, boxes[1:])):
            for label in ax.get_xticklabels():
                label.set_rotation(25)
                label.set_horizontalalignment("right")
                label.set_rotation_mode("anchor")


def _fig_train_curves(signals, title: str, notes: list[str], where: str):
    """One panel per (panel title, runs, metrics.jsonl key, y label): per method, the mean +- s.e.
    over seeds vs step, each seed smoothed first when a run is long."""
    from matplotlib.ticker import MaxNLocator
    panels = []
    for panel_title, members, key, ylabel, bounds in signals:
        per_method = defaultdict(list)
        for r in members:
            x, y = _train_series(r, key)
            if len(x):
                per_method[r.method].append((x, y))
        if per_method:
            panels.append((panel_title, key, ylabel, bounds, per_method))
        else:
            notes.append(f"{where}: {panel_title} has no logged `{key}`; panel skipped")
    if not panels:
        return None
    longest = max(len(x) for *_, pm in panels for s in pm.values() for x, _ in s)
    use_markers = longest <= 25
    fig, axes = _new_figure(len(panels))
    methods, windows = set(), set()
    for ax, (panel_title, key, ylabel, bounds, per_method) in zip(axes, panels):
        drawn, drawn_x = [], []
        for method in _sorted_methods(per_method):
            w = _smoothing_window(max(len(x) for x, _ in per_method[method]))
            windows.add(w)
            smoothed = [(x, _smooth(y, w)) for x, y in per_method[method]]
            x, mean, se = _mean_band(smoothed)
            drawn.append(_plot_band(ax, method, x, mean, se, markers=use_markers))
            drawn_x.append(x)
            methods.add(method)
        _tidy_y(ax, drawn, bounds)
        ax.set_title(panel_title)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_ylabel(ylabel)
        if _single_x(ax, drawn_x, integer=True):
            notes.append(f"{where}: {panel_title} has a single logged step; drawn as points")
        else:
            ax.margins(x=0.02)
    smoothing = ""
    if windows - {1}:
        smoothing = f"; moving average over {', '.join(str(w) for w in sorted(windows - {1}))} steps"
    fig.suptitle(f"{title} (mean \u00b1 s.e. over seeds{smoothing})")
    _method_legend(fig, _sorted_methods(methods), markers=use_markers)
    return fig


def _fig_train_reward(runs, notes):
    signals = [(f"{task} \u00b7 {feedback}", members, "reward_mean", "train reward (batch mean)", UNIT_INTERVAL)
               for task, feedback, members in _panels(runs)]
    return _fig_train_curves(signals, "Training reward vs step", notes, "training reward")


def _fig_health(members, task, feedback, notes):
    signals = [(title, members, key, label, bounds) for key, label, title, bounds in HEALTH_SIGNALS]
    return _fig_train_curves(signals, f"Health signals, {task} \u00b7 {feedback}", notes,
                             f"health {task} \u00b7 {feedback}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


EMBED_DPI = 120   # resolution of the copies embedded in report.html; the PNG files use savefig.dpi


def _save(fig, directory: Path, stem: str) -> tuple[dict[str, Path], bytes]:
    """Write <stem>.png and <stem>.svg; return their paths and a lighter PNG for embedding."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("png", "svg"):
        path = directory / f"{stem}.{ext}"
        fig.savefig(path, format=ext, metadata={"Date": None} if ext == "svg" else None)
        out[ext] = path
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=EMBED_DPI)
    return out, buffer.getvalue()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root)) or "."
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------
# the report


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _html_table(header: list[str], rows: list[list[str]], numeric: set[int],
                bold: set[tuple[int, int]] = frozenset()) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, cells in enumerate(rows):
        tds = []
        for j, c in enumerate(cells):
            cls = ' class="num"' if j in numeric else ""
            text = html.escape(c)
            tds.append(f"<td{cls}>" + (f"<b>{text}</b>" if (i, j) in bold else text) + "</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;font-size:.92em} table{border-collapse:collapse;font-size:.86em;margin:.6em 0;display:block;overflow-x:auto}
th,td{border-bottom:1px solid #e3e3e3;padding:.25em .6em;text-align:left;white-space:nowrap} th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums} tr.partial td{background:#fff7e6}
figure{margin:1.2em 0} figure img{max-width:100%;height:auto;border:1px solid #eee} figcaption{font-size:.88em;color:#444}
.note{font-size:.88em;color:#7a4b00} code{background:#f3f3f3;padding:0 .25em} .formula{font-size:.9em;color:#666}
"""


_BASELINE_NOTE = ("Methods that read no feedback (feedback \u201cnone\u201d: GRPO, Dr.GRPO; \u201creference\u201d: "
                  "SDFT, OPSD) are drawn in every feedback panel of their task.")


def _caption(kind: str, metric: str) -> str:
    return {
        "score_vs_step": f"Held-out {metric} after each evaluation, by training step; one panel per task \u00b7 feedback source. {_BASELINE_NOTE}",
        "score_vs_tokens": f"Held-out {metric} by cumulative tokens generated in training rollouts (each evaluation placed at the tokens_generated its step logged in metrics.jsonl; step 0 at 0), each seed interpolated between its evaluations; unlike wall-clock it does not depend on how busy the machine was. {_BASELINE_NOTE}",
        "score_vs_wall": f"Held-out {metric} by cumulative training wall-clock (evaluation time excluded), each seed interpolated between its evaluations, over the time all seeds of a method cover; compares methods at equal compute time. {_BASELINE_NOTE}",
        "final_scores": f"Final held-out {metric} per method and task, for the headline feedback source of each task ({HEADLINE_FEEDBACK} when run; methods that read no feedback show their only runs); each bar is labelled with its method's own feedback source; error bars \u00b1 one standard error over seeds, dots are single seeds; the black dashed line across each bar is that method's starting (step-0) score.",
        "feedback_ablation": f"Final held-out {metric} by feedback source, per method; methods that read no feedback are horizontal lines at their mean. Tasks run with fewer than two feedback sources are left out.",
        "train_reward": f"Training-batch reward (mean over the rollouts of a step). {_BASELINE_NOTE}",
        "teacher_probe": "Teacher probe at every evaluation (eval.teacher_probe; teacher_probe.csv): on fixed items built once from failed responses of the initial model, how much reading the feedback raises the per-token log-probability of the gold answer, and the greedy pass rate with and without the feedback in the prompt. The paper's claim: VPD's E-step raises the first; a passive teacher's stays where it was.",
    }.get(kind, "Health signals logged at every training step (metrics.jsonl). A method missing from a panel did not "
                f"log that signal (GRPO has no teacher); a signal no run logged is left out. {_BASELINE_NOTE}")


def write_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike, metric: str = DEFAULT_METRIC,
                 budget_steps: int | None = None, budget_wall_s: float | None = None,
                 baseline: str | None = "grpo") -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.csv, report.html and figures/<name>.{png,svg} to out_dir.

    Figures: score_vs_step, score_vs_wall, score_vs_tokens, final_scores, feedback_ablation, train_reward and one
    health_<task>_<feedback> per panel; one with no data is not written (report.html says why),
    and a stale copy of it from an earlier report in the same folder is removed. Damaged input
    raises ReportWarnings, never an error; a ``metric`` none of the runs has raises UserError
    listing the available ones. ``baseline``: the method every other method of a task is compared
    with (None or "none": no comparison). Returns {path relative to out_dir: Path} for every file
    written.
    """
    import matplotlib

    out_dir = Path(out_dir)
    runs = load_runs(runs_dir)
    check_metric(runs, metric)
    if baseline is not None and str(baseline).lower() in ("", "none"):
        baseline = None
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = build_leaderboard(runs, metric, budget_steps, budget_wall_s, baseline=baseline)
    generated = _now()
    written: dict[str, Path] = {}

    md_path = out_dir / "leaderboard.md"
    md_path.write_text(leaderboard_markdown(rows, metric, budget_steps, budget_wall_s, generated,
                                            baseline=baseline, runs=runs))
    written["leaderboard.md"] = md_path
    csv_path = out_dir / "leaderboard.csv"
    write_leaderboard_csv(rows, csv_path)
    written["leaderboard.csv"] = csv_path

    notes: list[str] = []
    assign_styles(r.method for r in runs)
    figures: list[tuple[str, str, bytes, str]] = []  # (stem, title, PNG to embed, caption)
    fig_dir = out_dir / "figures"
    with matplotlib.rc_context(_RC):
        plan = [
            ("score_vs_step", "Held-out score vs training step", lambda: _fig_score_curves(runs, metric, "step", notes)),
            ("score_vs_wall", "Held-out score vs wall-clock", lambda: _fig_score_curves(runs, metric, "wall", notes)),
            ("score_vs_tokens", "Held-out score vs tokens generated",
             lambda: _fig_score_curves(runs, metric, "tokens", notes)),
            ("final_scores", "Final scores", lambda: _fig_final_bars(runs, rows, metric, notes)),
            ("feedback_ablation", "Feedback-source ablation", lambda: _fig_feedback_ablation(runs, rows, metric, notes)),
            ("train_reward", "Training reward vs step", lambda: _fig_train_reward(runs, notes)),
        ]
        for task, feedback, members in _panels(runs):
            plan.append((f"health_{_slug(task)}_{_slug(feedback)}", f"Health signals: {task} \u00b7 {feedback}",
                         lambda t=task, f=feedback, m=members: _fig_health(m, t, f, notes)))
        probes = _probe_runs(runs)
        if probes:
            plan.append(("teacher_probe", "Teacher probe: does the network read feedback better?",
                         lambda: _fig_teacher_probe(probes, notes)))
        for stem, title, make in plan:
            fig = make()
            if fig is None:
                notes.append(f"{title}: no panel has data; figure not drawn")
                continue
            paths, embed = _save(fig, fig_dir, stem)
            for ext, p in paths.items():
                written[f"figures/{stem}.{ext}"] = p
            kind = stem if not stem.startswith("health_") else "health"
            figures.append((stem, title, embed, _caption(kind, metric)))

    if probes:
        probe_csv = out_dir / "teacher_probe.csv"
        write_teacher_probe_csv(probes, probe_csv)
        written["teacher_probe.csv"] = probe_csv

    # A figure an earlier report drew but this one could not must not linger next to the new ones.
    for stale in fig_dir.glob("*"):
        if (stale.suffix in (".png", ".svg") and f"figures/{stale.name}" not in written
                and re.match(r"(score_vs_step|score_vs_wall|score_vs_tokens|final_scores|feedback_ablation|train_reward|health_|teacher_probe)", stale.name)):
            stale.unlink()

    html_path = out_dir / "report.html"
    html_path.write_text(_render_html(runs, rows, figures, notes, metric, budget_steps, budget_wall_s,
                                      generated, Path(runs_dir), baseline))
    written["report.html"] = html_path
    return written


def _render_html(runs, rows, figures, notes, metric, budget_steps, budget_wall_s, generated, runs_dir,
                 baseline: str | None = "grpo") -> str:
    n_partial = sum(r.is_partial for r in runs)
    n_no_eval = sum(not r.has_eval for r in runs)
    problems = [w for r in runs for w in r.warnings]
    top = _winners(rows)
    board = _html_table(_table_header(metric, baseline), [_table_cells(r) for r in rows],
                        numeric={3, 4, 5, 6, 8, 10, 11, 12, 13},
                        bold={(i, j) for i in top for j in (FINAL_COL, VS_COL)})
    # mark partial rows
    board_lines = board.split("\n")
    for i, row in enumerate(rows):
        if row["n_partial"]:
            board_lines[i + 1] = board_lines[i + 1].replace("<tr>", '<tr class="partial">', 1)
    board = "\n".join(board_lines)

    run_rows = []
    for r in runs:
        s = summarize_run(r, metric, budget_steps, budget_wall_s)
        run_rows.append([r.task, r.feedback, r.method, "?" if r.seed is None else str(r.seed), r.status, r.revision,
                         "n/a" if r.steps_completed is None else str(r.steps_completed), _fmt_wall(r.wall_time_s),
                         _fmt(math.nan if s["final"] is None else s["final"]),
                         "n/a" if s["final_step"] is None else str(s["final_step"]),
                         _fmt(math.nan if s["best"] is None else s["best"]),
                         "n/a" if s["best_step"] is None else str(s["best_step"]),
                         "; ".join(r.notes), _relative(r.run_dir, runs_dir)])
    runs_table = _html_table(["task", "feedback", "method", "seed", "status", "git revision", "steps", "wall-clock",
                              f"final {metric}", "at step", "best \u2264 budget", "at step", "flags", "folder"], run_rows,
                             numeric={3, 6, 7, 8, 9, 10, 11})
    run_lines = runs_table.split("\n")
    for i, r in enumerate(runs):
        if r.is_partial or not r.has_eval:
            run_lines[i + 1] = run_lines[i + 1].replace("<tr>", '<tr class="partial">', 1)
    runs_table = "\n".join(run_lines)

    fig_html = []
    for stem, title, png, caption in figures:
        data = base64.b64encode(png).decode("ascii")
        fig_html.append(f'<figure id="{html.escape(stem)}"><h3>{html.escape(title)}</h3>'
                        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(caption)} Files: <code>figures/{html.escape(stem)}.png</code>, "
                        f"<code>.svg</code>.</figcaption></figure>")
    notes_html = ("<ul>" + "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes) + "</ul>") if notes else "<p>None.</p>"
    problems_html = ("<ul>" + "".join(f'<li class="note">{html.escape(p)}</li>' for p in problems) + "</ul>"
                     ) if problems else "<p>None.</p>"
    empty = "" if runs else f'<p class="note">No runs found under <code>{html.escape(str(runs_dir))}</code>.</p>'
    prov = provenance(runs)
    mde = _mde_lines(rows)
    mde_html = (f'<br>Smallest detectable difference (MDE): <b>{html.escape("; ".join(mde))}</b>.'
                f'<br><span class="formula">{html.escape(MDE_FORMULA)}.</span>') if mde else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vpd-bench report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>vpd-bench report</h1>
<p class="meta">Generated {html.escape(generated)} from <code>{html.escape(str(runs_dir))}</code>.
Runs: <b>{len(runs)}</b> ({len(runs) - n_partial} complete, <b>{n_partial} partial</b>, {n_no_eval} without a held-out evaluation).
Held-out metric: <code>{html.escape(metric)}</code>. Budget for <i>best</i>: {html.escape(_budget_text(budget_steps, budget_wall_s))}.
Baseline: <code>{html.escape(baseline or "none")}</code>.
<br>Git revision(s): {html.escape(prov["revisions"])}.
<br>Preset(s): {html.escape(prov["presets"])}. Held-out problems &times; samples per evaluation: {html.escape(prov["shape"])}.
<br>Per-problem samples: {html.escape(prov["samples"])}.{mde_html}</p>
{empty}
<h2>How to read this report</h2>
{READING_GUIDE}
<h2>Leaderboard</h2>
<p class="meta">Initial / final: mean &plusmn; standard error over seeds. Seeds = runs with a score / runs in the cell. {html.escape(_stats_explanation(baseline))} &dagger; and shading: includes partial runs. Also in <code>leaderboard.md</code> and <code>leaderboard.csv</code>.</p>
{board}
<h2>Figures</h2>
{''.join(fig_html) or '<p class="note">No figure could be drawn.</p>'}
<h2>Figures and panels left out</h2>
{notes_html}
<h2>Runs</h2>
<p class="meta">Every run folder found, with the git revision it ran from (+dirty: uncommitted changes); shaded rows are partial or have no held-out evaluation.</p>
{runs_table}
<h2>Input problems</h2>
<p class="meta">Damaged lines and files that were skipped.</p>
{problems_html}
</body></html>
"""
