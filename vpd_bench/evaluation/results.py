"""The typed, versioned record of one run: ``results.json`` in every run folder.

Fields (schema version 1):
  schema_version   int, 1
  status           "complete" | "partial" (a run stopped before its last step) | "failed"
  run              {method, task, feedback (the label of the run folder: none for RLVR, reference for
                   SDFT/OPSD), model, seed, preset, run_dir, setting, task_details (the task's
                   describe(): source, split sizes and seeds), model_details (source, sha256, parameters)}
  config           the fully resolved config (dict)
  versions         {python, torch, transformers, vpd_bench, platform}
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

SCHEMA_VERSION = 1


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
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        rev, dirty = None, None
    return {"revision": rev, "dirty": dirty}


def versions() -> dict[str, Any]:
    import torch
    import transformers

    from vpd_bench import __version__
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "vpd_bench": __version__,
            "platform": platform.platform()}
