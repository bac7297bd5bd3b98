"""Runs and sweeps: expand methods x tasks x feedback x seeds (x a sweep's grid or variants) into run specs,
skip completed runs, resume partial ones, and run them in-process, as parallel local jobs, or on Ray.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vpd_bench.config import CONF_DIR, compose, feedback_label, group_options
from vpd_bench.errors import UserError
from vpd_bench.evaluation.results import CHECKPOINT_DIR, LOCK_FILE, METRICS_FILE, RESULTS_FILE

log = logging.getLogger("vpd_bench")


@dataclass
class RunSpec:
    method: str
    task: str
    feedback: str | None
    seed: int
    model: str | None = None
    preset: str | None = None
    engine: str | None = None
    overrides: list[str] = field(default_factory=list)
    grid_label: str = ""
    out: str = "runs"

    def compose(self):
        key = (self.method, self.task, self.feedback, self.model, self.preset, self.engine,
               tuple(self.overrides), self.seed)
        if getattr(self, "_cached", (None,))[0] != key:
            self._cached = (key, compose(self.method, self.task, self.feedback, self.model, self.preset,
                                         self.engine, list(self.overrides) + [f"seed={self.seed}"]))
        return self._cached[1].copy()

    def feedback_label(self, cfg) -> str:
        return feedback_label(cfg)

    def run_dir(self, cfg=None) -> Path:
        cfg = cfg or self.compose()
        if cfg.run_dir:
            return Path(cfg.run_dir)
        method = cfg.method.name + (f"[{self.grid_label}]" if self.grid_label else "")
        return Path(self.out) / cfg.task.name / method / self.feedback_label(cfg) / f"seed{self.seed}"

    def cli_args(self) -> list[str]:
        args = ["run", "--methods", self.method, "--task", self.task, "--seed", str(self.seed), "--out", self.out,
                "--resume", "--no-skip-label"]
        for flag, val in (("--feedback", self.feedback), ("--model", self.model), ("--preset", self.preset),
                          ("--engine", self.engine)):
            if val is not None:
                args += [flag, val]
        if self.grid_label:
            args += ["--grid-label", self.grid_label]
        return args + list(self.overrides)


SWEEP_KEYS = {"methods", "tasks", "feedback", "seeds", "model", "preset", "out", "overrides", "grid", "variants"}


def load_sweep(name: str) -> dict:
    path = CONF_DIR / "sweep" / f"{name}.yaml"
    if not path.exists():
        from vpd_bench.registry import suggest
        raise UserError(f"unknown sweep '{name}'.{suggest(name, group_options('sweep'))} "
                        f"Known sweeps: {', '.join(group_options('sweep'))}")
    sweep = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        from vpd_bench.registry import suggest
        hints = "".join(suggest(k, sorted(SWEEP_KEYS)) for k in unknown)
        raise UserError(f"{path}: unknown sweep key(s) {', '.join(unknown)}.{hints} "
                        f"A sweep has: {', '.join(sorted(SWEEP_KEYS))}")
    check_variants(sweep.get("variants"))
    return sweep


def check_variants(variants) -> list[dict]:
    """A sweep's ``variants``: one-factor-at-a-time ablations, each ``{name, overrides, methods?}``
    (``methods``: the sweep's methods it applies to; absent = all). Checked before anything runs."""
    if variants is None:
        return []
    if not isinstance(variants, list) or not variants:
        raise UserError("sweep 'variants' must be a non-empty list of {name, overrides, methods} entries")
    for i, v in enumerate(variants):
        where = f"sweep variant {i}"
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"]:
            raise UserError(f"{where}: needs a 'name' (the run folder label, e.g. teacher=live)")
        unknown = set(v) - {"name", "overrides", "methods"}
        if unknown:
            raise UserError(f"{where} ({v['name']}): unknown field(s) {', '.join(sorted(unknown))}; "
                            "a variant has name, overrides and (optionally) methods")
        if any(c in v["name"] for c in "/\\"):
            raise UserError(f"{where}: the name '{v['name']}' may not hold a slash (it names a folder)")
        for key in ("overrides", "methods"):
            if key in v and not (isinstance(v[key], list) and all(isinstance(x, str) for x in v[key])):
                raise UserError(f"{where} ({v['name']}): '{key}' must be a list of strings")
    return variants


def expand(methods, tasks, feedbacks, seeds, model=None, preset=None, engine=None, overrides=(), out="runs",
           grid: dict | None = None, variants: list[dict] | None = None) -> list[RunSpec]:
    """Run specs, seed-major. ``grid``: the product of its values; ``variants``: a list of named
    override sets, each run once per method it applies to (the two do not combine)."""
    grid = grid or {}
    keys = sorted(grid)
    if grid and variants:
        raise UserError("a sweep has either a 'grid' or 'variants', not both")
    if variants:
        combos = [(v["name"], list(v.get("overrides", [])), v.get("methods")) for v in check_variants(variants)]
    else:
        combos = [(",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo)),
                   [f"{k}={v}" for k, v in zip(keys, combo)], None)
                  for combo in (itertools.product(*(grid[k] for k in keys)) if keys else [()])]
    known = set(group_options("method"))
    for label, _, only in combos:
        unknown = sorted(set(only or []) - known)
        if unknown:
            from vpd_bench.registry import suggest
            raise UserError(f"sweep variant '{label}': unknown method(s) {', '.join(unknown)}."
                            f"{suggest(unknown[0], known)} Known: {', '.join(sorted(known))}")
    specs, seen = [], {}
    # seed-major order: a sweep stopped half-way still holds every method at the seeds it reached
    for seed, task, method, fb, (label, extra, only) in itertools.product(seeds, tasks, methods, feedbacks or [None],
                                                                         combos):
        if only is not None and method not in only:
            continue
        spec = RunSpec(method, task, fb, int(seed), model, preset, engine, list(overrides) + extra, label, out)
        cfg = spec.compose()                   # validates every name and key up front
        key = spec.run_dir(cfg)
        if key in seen and seen[key] != (label, tuple(extra)):
            raise UserError(f"two sweep variants named '{label}' apply to {method}: give each its own name")
        if key in seen:                        # e.g. grpo under two feedback sources: one run
            continue
        seen[key] = (label, tuple(extra))
        specs.append(spec)
    return specs


def exit_reason(returncode: int) -> str:
    """Why a run process ended, in words: a negative code is the signal that killed it. SIGKILL
    leaves no traceback in the run's log; on Linux it most often comes from the out-of-memory
    killer, so the message says where to look and what to lower."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if -returncode == signal.SIGKILL:
        return (f"killed by {name}, most often the kernel's out-of-memory killer (see `dmesg`): lower "
                "train.micro_batch_size, run fewer --jobs, or free memory")
    return f"killed by {name}"


def run_status(run_dir: Path, steps: int | None = None) -> str:
    """new | partial | complete (complete: results.json says so and covers the requested steps)."""
    res = run_dir / RESULTS_FILE
    if res.exists():
        try:
            data = json.loads(res.read_text())
            if data.get("status") == "complete" and (steps is None or data.get("steps_completed", 0) >= steps):
                return "complete"
        except (OSError, json.JSONDecodeError):
            pass
    if (run_dir / CHECKPOINT_DIR / "LATEST").exists() or (run_dir / METRICS_FILE).exists():
        return "partial"
    return "new"


class RunLock:
    """One writer per run folder. Two processes resuming the same run (two sweeps pointed at one
    ``--out``, a sweep re-started while its first copy still runs) would interleave its logs and
    checkpoints; the second is refused, naming the first. An advisory ``flock`` on ``<run>/.lock``:
    the kernel drops it when the holder exits, however it exits, so a killed run never leaves a
    stale lock. Where ``fcntl`` is missing (Windows) it does nothing. Under a multi-process launch
    (``WORLD_SIZE`` > 1) only rank 0 takes it: it alone writes the run, the other ranks only read."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:                      # pragma: no cover - not POSIX
            return self
        from vpd_bench.training.distributed import is_follower_rank
        if is_follower_rank():
            return self                          # it only reads the run that rank 0 writes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = run_holder(self.path.parent)
            holder = holder if holder and holder > 0 else None     # -1: held, its pid not yet written
            raise UserError(f"{self.path.parent} is being written by another process"
                            f"{f' (pid {holder})' if holder else ''}: two processes on one run would interleave "
                            f"its files. Wait for it to finish, or stop it"
                            f"{f' (kill {holder})' if holder else ''} and run again to resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)                    # closing the descriptor releases the flock
            self.fd = None
        return False


def run_holder(run_dir: Path) -> int | None:
    """The pid of the process writing this run (-1: held, its pid not written yet), or None when
    nobody holds its lock."""
    path = Path(run_dir) / LOCK_FILE
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def run_one(spec: RunSpec, resume: bool = True, progress: bool = True):
    from vpd_bench.training.loop import Trainer
    cfg = spec.compose()
    run_dir = spec.run_dir(cfg)
    with RunLock(run_dir):
        status = run_status(run_dir, int(cfg.train.steps))
        if status == "complete":
            log.info("skip %s: already complete", run_dir)
            return None
        if status == "partial" and not resume:
            raise UserError(f"{run_dir} holds a partial run: pass --resume to continue it")
        OmegaConf.set_struct(cfg, False)
        cfg.run_dir = str(run_dir)
        OmegaConf.set_struct(cfg, True)
        trainer = Trainer(cfg, run_dir, progress=progress)
        return trainer.run(resume=(status == "partial"))


def parallel_plan(n_runs: int, jobs: int | str | None = "auto", cores: int | None = None) -> tuple[int, int]:
    """(parallel jobs, threads per job) with jobs x threads <= cores. ``auto``: as many jobs as
    there are runs, up to one per core, each with an equal share of the cores (one thread per
    run on a 2-core machine: a descheduled OpenMP thread stalls every parallel region, so one
    busy thread per core is the fastest use of a small machine)."""
    cores = max(1, int(cores or os.cpu_count() or 1))
    if jobs in (None, "auto", "0", 0):
        jobs = min(max(1, n_runs), cores)
    jobs = int(jobs)
    if jobs < 1:
        raise UserError(f"--jobs must be a positive number or 'auto', got {jobs}")
    return jobs, max(1, cores // jobs)


def parse_jobs(text: str) -> int | str:
    """argparse type of --jobs: a positive integer or 'auto'."""
    import argparse
    if str(text).lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value}")
    return value


def run_local(specs: list[RunSpec], jobs: int | str = "auto", resume: bool = True) -> int:
    """Run specs in-process (one job) or as parallel subprocesses. Returns the number of failures."""
    jobs, threads = parallel_plan(len(specs), jobs)
    if jobs <= 1:                       # in this process: torch's own thread count (OMP_NUM_THREADS, if set)
        import torch
        threads = torch.get_num_threads()
    log.info("plan: %d run(s), %d parallel job(s) x %d thread(s) each (%d core(s))", len(specs), jobs, threads,
             os.cpu_count() or 1)
    if jobs <= 1:
        failures = 0
        for i, spec in enumerate(specs, 1):
            log.info("[%d/%d] %s", i, len(specs), spec.run_dir())
            run_one(spec, resume=resume)
        return failures
    pending, running, failures = list(specs), [], 0
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            run_dir = spec.run_dir()
            holder = run_holder(run_dir)
            if holder is not None:              # another sweep is writing it: leave it alone
                failures += 1
                log.error("run %s not started: another process (%s) is writing it; re-run this sweep "
                          "when it ends", run_dir, f"pid {holder}" if holder > 0 else "pid unknown")
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            logf = open(run_dir / "stdout.log", "a")
            proc = subprocess.Popen([sys.executable, "-m", "vpd_bench", *spec.cli_args()], stdout=logf,
                                    stderr=subprocess.STDOUT, env=env)
            running.append((proc, spec, logf))
            log.info("started %s (pid %d)", run_dir, proc.pid)
        for item in list(running):
            proc, spec, logf = item
            if proc.poll() is not None:
                logf.close()
                running.remove(item)
                if proc.returncode != 0:
                    failures += 1
                    log.error("run %s failed (%s): see %s; re-running the sweep resumes it from its last "
                              "checkpoint", spec.run_dir(), exit_reason(proc.returncode), spec.run_dir() / "stdout.log")
        if running:
            import time
            time.sleep(0.5)
    return failures
