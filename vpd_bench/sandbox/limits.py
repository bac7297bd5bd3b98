"""Resource limits of one sandboxed run (``task.sandbox`` in ``conf/task/code.yaml``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one program run. Defaults live in ``conf/task/code.yaml``
    (``task.sandbox``); build with :meth:`from_config`."""
    timeout_s: float            # wall clock for the whole run (all calls)
    case_timeout_s: float       # wall clock per call, and for loading the program
    startup_grace_s: float      # extra time for the interpreter to start before the first record
    memory_mb: int              # address space (RLIMIT_AS)
    cpu_s: int                  # CPU seconds (RLIMIT_CPU)
    file_size_mb: int           # largest file the program may write (RLIMIT_FSIZE)
    tmpfs_mb: int               # size of the private /tmp under bubblewrap
    max_processes: int          # RLIMIT_NPROC (fork bombs stop here)
    max_open_files: int         # RLIMIT_NOFILE
    max_output_bytes: int       # captured stdout / stderr, each (the rest is drained and dropped)
    max_result_bytes: int       # everything sent back on the result pipe
    max_value_bytes: int        # one encoded return value (or one captured stdout of a stdio run)

    @classmethod
    def from_config(cls, node) -> "SandboxLimits":
        names = [f for f in cls.__dataclass_fields__]
        get = node.get if hasattr(node, "get") else (lambda k, d=None: getattr(node, k, d))
        missing = [n for n in names if get(n, None) is None]
        if missing:
            raise UserError(f"task.sandbox is missing field(s) {missing} (see conf/task/code.yaml)")
        values = {}
        for name in names:
            kind = cls.__dataclass_fields__[name].type
            values[name] = float(get(name)) if kind == "float" else int(get(name))
        limits = cls(**values)
        if limits.timeout_s <= 0 or limits.case_timeout_s <= 0:
            raise UserError("task.sandbox.timeout_s and case_timeout_s must be positive")
        if limits.max_processes < 1 or limits.memory_mb < 64:
            raise UserError("task.sandbox: max_processes must be >= 1 and memory_mb >= 64")
        return limits

    def rlimits(self) -> dict:
        return {
            "RLIMIT_AS": self.memory_mb << 20,
            "RLIMIT_CPU": max(1, int(math.ceil(self.cpu_s))),
            "RLIMIT_FSIZE": self.file_size_mb << 20,
            "RLIMIT_NPROC": self.max_processes,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
        }

    # -- the parent's clock ------------------------------------------------------------------
    # The parent enforces the per-call limit from its own clock (see ``channel.py``); these are
    # the two margins it allows on top of ``case_timeout_s``.
    @property
    def late_tolerance_s(self) -> float:
        """How far past ``case_timeout_s`` (parent clock) a result may arrive and still count:
        pipe and scheduling latency, never real work."""
        return min(0.25, 0.05 + 0.1 * self.case_timeout_s)

    @property
    def kill_grace_s(self) -> float:
        """How long past ``case_timeout_s`` the parent waits for the in-sandbox alarm to report
        a timeout (with its line number) before it kills the process itself."""
        return min(1.0, 0.25 + 0.25 * self.case_timeout_s)
