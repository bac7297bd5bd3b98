"""The typed, versioned record of one run: ``results.json`` in every run folder.

Fields (schema version 1):
  schema_version   int, 1
  status           "complete" | "partial" (a run stopped before its last step) | "failed"
  run              {method, task, feedback (the label of the run folder: none for RLVR, reference for
                   SDFT/OPSD), model, seed, preset, run_dir, setting, task_details (the task's
                   describe(): source, split sizes and seeds), model_details (source, sha256, parameters)}
  config           the fully resolved config (dict)
  versions         {python, torch, transformers, vpd_bench, platform, numerics: {cpu_capability,
                   threads, kernel_env (only when set)}}; numerics is absent from runs written before 2026-12-06
  git              {revision, dirty}
  engine           engine name and settings
  sampling         {temperature, top_p, top_k, max_new_tokens, group_size}
  steps_completed  int
  wall_time_s      float: training wall time summed over all (resumed) segments
  tokens_generated int: response tokens sampled during training
  eval_history     list of {step, wall_time_s, metrics: {name: value}}; held-out split
  final            metrics of the last held-out evaluation ({} if none)
  train_final      training-side metrics of the last step (reward_mean, pass_rate)
  higher_is_better {metric name: bool}
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections import defaultdict

from vpd_bench.errors import UserError
import math
import re
import warnings

SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------
# the run folder: <runs>/<task>/<method>/<feedback>/seed<k>/ holds these files (the store writes them,
# the reader below, the report and the tuner read them; nothing else names them)

RESULTS_FILE = "results.json"           # the typed summary (RunResult), written when a run ends
CONFIG_FILE = "config.yaml"             # the composed config the run used
METRICS_FILE = "metrics.jsonl"          # one object per training step
EVAL_FILE = "eval.jsonl"                # one object per held-out evaluation
TRAIN_SAMPLES_FILE = "samples.jsonl"    # a few training responses per step
SAMPLES_FILE = "eval_samples.jsonl"     # one row per held-out problem x sample x evaluation (optional)
TEACHER_PROBE_FILE = "teacher_probe.jsonl"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"                     # held (flock) by the process writing the run; holds its pid
RUN_FILES = (RESULTS_FILE, METRICS_FILE, EVAL_FILE)   # any of them marks a folder as a run


@dataclass
class RunResult:
    run: dict
    config: dict
    status: str = "partial"
    schema_version: int = SCHEMA_VERSION
    versions: dict = field(default_factory=dict)
    git: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    steps_completed: int = 0
    wall_time_s: float = 0.0
    tokens_generated: int = 0
    eval_history: list = field(default_factory=list)
    final: dict = field(default_factory=dict)
    train_final: dict = field(default_factory=dict)
    higher_is_better: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"results.json schema_version {d.get('schema_version')} is not {SCHEMA_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write then rename: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)           # never leave a half-written temporary behind
        raise storage_error(err, path) from None


def storage_error(err: OSError, path) -> Exception:
    """A clear error for a failed write (disk full, quota, read-only): what and where, and that the
    previous version of the file is intact."""
    import errno

    from vpd_bench.errors import UserError
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only"}.get(err.errno, err.strerror or type(err).__name__)
    return UserError(f"could not write {path}: {what}. The previous version of the file (and the last complete "
                     f"checkpoint) is intact; free space and rerun with --resume")


def write_results(path: str | os.PathLike, result: RunResult) -> None:
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2, default=str) + "\n")


def read_results(path: str | os.PathLike) -> RunResult:
    return RunResult.from_dict(json.loads(Path(path).read_text()))


def git_info(cwd: str | os.PathLike | None = None) -> dict:
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=5).stdout
        # which tracked files differ from the revision (at most 20): a reader can tell changed code
        # from, say, a tuning table rewritten in the same tree
        paths = [line[3:] for line in status.splitlines() if line.strip()]
        dirty = bool(paths)
    except (OSError, subprocess.SubprocessError):
        rev, dirty, paths = None, None, []
    info = {"revision": rev, "dirty": dirty}
    if paths:
        info["dirty_paths"] = paths[:20] + ([f"... and {len(paths) - 20} more"] if len(paths) > 20 else [])
    return info


# Environment variables that change which CPU kernels torch, MKL and oneDNN run, and so the
# floating-point results of a run (recorded when set; see numerics() and the README's note "Same seed,
# same numbers: on the same kernels").
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def numerics() -> dict[str, Any]:
    """What decides a run's floating-point results on this machine besides the code and the seed:
    the vectorised kernels torch dispatches to (``AVX2`` / ``AVX512`` on x86: the same seed samples
    different responses on the two paths once a near-tie in the logits is drawn), the intra-op
    thread count (the order of reductions) and the kernel environment variables, if set."""
    import torch
    out: dict[str, Any] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "threads": torch.get_num_threads()}
    env = {k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)}
    if env:
        out["kernel_env"] = env
    return out


def versions() -> dict[str, Any]:
    import torch
    import transformers

    from vpd_bench import __version__
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "vpd_bench": __version__,
            "platform": platform.platform(), "numerics": numerics()}


# ----------------------------------------------------------------------------------------------
# reading a runs tree: every file of a run folder, tolerant of missing and damaged ones (the report
# and the tuner read runs through here; the store writes them with the names above)

PASS_REWARD = 1.0                     # a sample passes when its reward reaches this

METHOD_ORDER = ("grpo", "dr_grpo", "sdpo", "sdft", "opsd", "grpo_sdpo", "vpd")

TASK_ORDER = ("debug", "code", "math", "sciqa", "cold_start")

FEEDBACK_ORDER = ("none", "reference", "env", "sibling", "env+sibling", "self_critique", "hint", "noisy")

# Feedback labels of methods whose teacher reads no feedback about the rollout (the run store files
# them so): "none" for RLVR (grpo, dr_grpo), "reference" for the fixed-context distillers (sdft,
# opsd). Such runs are the baselines of every feedback source of their task in the figures.
FEEDBACK_FREE = ("none", "reference")

FEEDBACK_ALIASES = {"env_sibling": "env+sibling", "env-sibling": "env+sibling", "sibling+env": "env+sibling"}


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
    def kernel_path(self) -> str | None:
        """The CPU kernel path the run's numbers came from (``versions.numerics.cpu_capability``,
        e.g. AVX2 / AVX512), None where results.json does not record it (runs before it did)."""
        versions = (self.results or {}).get("versions")
        numerics = versions.get("numerics") if isinstance(versions, dict) else None
        value = numerics.get("cpu_capability") if isinstance(numerics, dict) else None
        return str(value) if value else None

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
    if (run_dir / CONFIG_FILE).is_file():
        config = _load_yaml(run_dir / CONFIG_FILE, problems)

    results: dict | None = None
    results_path = run_dir / RESULTS_FILE
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
    if (run_dir / METRICS_FILE).is_file():
        rows = read_jsonl(run_dir / METRICS_FILE, problems)
        train_metrics = sorted((r for r in rows if _as_int(r.get("step")) is not None),
                               key=lambda r: _as_int(r["step"]))

    eval_entries: list = []
    eval_source = run_dir / EVAL_FILE
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



def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    base = re.split(r"[\[(]", value, maxsplit=1)[0]     # vpd[estep_every=1] sorts with vpd, noisy(0.3) with noisy
    return (order.index(base) if base in order else len(order), value)


def _sort_key(task: str, feedback: str, method: str) -> tuple:
    return _order(task, TASK_ORDER), _order(feedback, FEEDBACK_ORDER), _order(method, METHOD_ORDER)
