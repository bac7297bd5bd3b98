"""The :class:`Sandbox`: picks a backend (bubblewrap, else the fallback after a loud warning),
self-checks it once, and runs programs one fresh process each (in parallel with
:meth:`Sandbox.run_many`)."""
from __future__ import annotations

import logging
import marshal
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Iterable, Sequence

from ..errors import UserError
from .bwrap import _bwrap_arguments, _bwrap_features, bwrap_argv
from .calls import MODES, Call, Execution
from .channel import ResultChannel
from .fallback import _loud_warning, private_workdir
from .interpreter import _interpreter_info, default_python
from .limits import SandboxLimits
from .process import communicate, reap
from .runner import RUNNER_MARKER, RUNNER_SOURCE
from .wire import container_cap

log = logging.getLogger("vpd_bench.sandbox")

BACKENDS = ("auto", "bwrap", "subprocess")

_SELF_CHECKS: dict = {}
_SELF_CHECK_LOCK = threading.Lock()


class Sandbox:
    """Runs programs in isolated processes. Thread-safe; :meth:`run_many` runs in parallel.

    ``config`` is the ``task.sandbox`` node of ``conf/task/code.yaml`` (a DictConfig or dict)
    or a :class:`SandboxLimits` with ``backend`` etc. given as keyword arguments."""

    def __init__(self, config=None, *, limits: SandboxLimits | None = None, backend: str | None = None,
                 workers: int | None = None, python: str | None = None, site_packages: bool | None = None,
                 drop_privileges: bool | None = None, uid_base: int | None = None,
                 bwrap_path: str | None = "which"):
        get = (config.get if config is not None and hasattr(config, "get") else (lambda k, d=None: d))
        self.limits = limits or SandboxLimits.from_config(config)
        self.requested_backend = str(backend or get("backend", "auto"))
        if self.requested_backend not in BACKENDS:
            raise UserError(f"task.sandbox.backend must be one of {BACKENDS}, got {self.requested_backend!r}")
        n = int(workers if workers is not None else (get("workers", 0) or 0))
        self.workers = n if n > 0 else (os.cpu_count() or 1)
        chosen = python or get("python", None)
        self._python_auto = not chosen
        self.python = str(chosen or default_python())
        self.site_packages = bool(site_packages if site_packages is not None else get("site_packages", False))
        self.drop_privileges = bool(drop_privileges if drop_privileges is not None
                                    else get("drop_privileges", True))
        self.uid_base = int(uid_base if uid_base is not None else get("uid_base", 2147000000))
        self.bwrap_path = shutil.which("bwrap") if bwrap_path == "which" else bwrap_path
        self.setpriv_path = shutil.which("setpriv")
        self._slots: queue.Queue = queue.Queue()
        for i in range(self.workers):
            self._slots.put(i)
        self._backend: str | None = None
        self._bwrap_args: list[str] | None = None
        self._drop = os.geteuid() == 0 and self.drop_privileges
        self._drop_bwrap = self._drop
        self._lock = threading.Lock()
        self.backend_note = ""

    # -- backend selection ----------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend in use: ``bwrap`` or ``subprocess`` (resolved once, with a self-check)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._resolve_backend()
        return self._backend

    def _resolve_backend(self) -> None:
        try:
            _interpreter_info(self.python)
        except UserError:
            if not self._python_auto:
                raise
            # the system interpreter is too old or broken: use the one running the harness
            self.python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        want = self.requested_backend
        if want == "subprocess":
            self._backend = "subprocess"
            self.backend_note = "subprocess backend chosen in the config"
            _loud_warning("the subprocess backend was chosen (task.sandbox.backend=subprocess)")
            return
        reason = None
        if not self.bwrap_path or not os.path.exists(self.bwrap_path):
            reason = "bubblewrap (bwrap) is not installed"
        else:
            key = (self.bwrap_path, self.python, self.site_packages, self._drop)
            with _SELF_CHECK_LOCK:
                if key not in _SELF_CHECKS:
                    _SELF_CHECKS[key] = self._self_check()
                args, drop, reason = _SELF_CHECKS[key]
            if args is not None:
                self._bwrap_args = args
                if self._drop and not drop:
                    self.backend_note = ("bubblewrap runs as root: unprivileged user namespaces are off, "
                                         "so the process limit is not enforced (pid namespace and "
                                         "timeouts still contain fork bombs)")
                    log.warning("sandbox: %s", self.backend_note)
                self._drop_bwrap = drop
                self._backend = "bwrap"
                return
        if want == "bwrap":
            raise UserError(f"task.sandbox.backend=bwrap but {reason}")
        self._backend = "subprocess"
        self.backend_note = reason
        _loud_warning(f"{reason}; falling back to a plain subprocess")

    def _self_check(self) -> tuple[list[str] | None, bool, str | None]:
        """Try bubblewrap on a tiny program: tight binds first, then all of /usr; as a dedicated
        uid first (when root), then as the current user. Returns (args, drop, failure reason)."""
        info = _interpreter_info(self.python)
        features = _bwrap_features(self.bwrap_path)
        errors = []
        for drop in ([True, False] if self._drop else [False]):
            for tight in (True, False):
                args = _bwrap_arguments(info, tight=tight, site_packages=self.site_packages,
                                        features=features)
                try:
                    ex = self._run_once("bwrap", "def f(x):\n    return x + 1\n", [Call("f", (41,))], "call",
                                        replace(self.limits, timeout_s=30, case_timeout_s=30,
                                                startup_grace_s=30), bwrap_args=args, drop=drop)
                except OSError as err:
                    errors.append(str(err))
                    continue
                if ex.outcomes and ex.outcomes[0].status == "ok" and ex.outcomes[0].value == 42:
                    return args, drop, None
                errors.append((ex.stderr or ex.load_status).strip()[-300:])
        return None, False, "bubblewrap failed its self-check (" + " | ".join(e for e in errors if e) + ")"

    # -- running ----------------------------------------------------------------------------
    def run(self, program: str, calls: Sequence[Call], mode: str = "call",
            limits: SandboxLimits | None = None) -> Execution:
        """Run ``program`` once and the ``calls`` in order, in one fresh sandboxed process."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        return self._run_once(self.backend, program, list(calls), mode, limits or self.limits)

    def run_many(self, jobs: Iterable[tuple]) -> list[Execution]:
        """Run ``(program, calls[, mode[, limits]])`` jobs in parallel, one process each."""
        jobs = list(jobs)
        _ = self.backend
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))

    def describe(self) -> dict:
        return {"backend": self.backend, "python": self.python, "workers": self.workers,
                "note": self.backend_note, "limits": self.limits.__dict__.copy()}

    # -- one process ------------------------------------------------------------------------
    def _command(self, backend: str, slot: int, limits: SandboxLimits, bwrap_args: list[str] | None,
                 drop: bool) -> tuple[list[str], dict, str | None, dict]:
        """argv, env, cwd and extra Popen kwargs for one run."""
        interp = [self.python, "-I", "-B"] + ([] if self.site_packages else ["-S"])
        runner = ["-c", RUNNER_SOURCE]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
        kwargs: dict = {}
        prefix: list[str] = []
        uid = self.uid_base + slot
        if drop:
            if self.setpriv_path:
                prefix = [self.setpriv_path, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            else:
                kwargs = {"user": uid, "group": uid, "extra_groups": []}
        if backend == "subprocess" and self.setpriv_path:
            # setuid programs (su, mount, ...) gain nothing in the fallback (bwrap does this itself)
            prefix = (prefix or [self.setpriv_path]) + ["--no-new-privs"]
        if prefix:
            prefix.append("--")
        if backend == "bwrap":
            argv = prefix + bwrap_argv(self.bwrap_path, bwrap_args, limits.tmpfs_mb, env) + interp + runner
            return argv, env, None, kwargs
        workdir = private_workdir(uid if drop else None)
        env.update({"HOME": workdir, "TMPDIR": workdir})
        return prefix + interp + runner, env, workdir, kwargs

    def _run_once(self, backend: str, program: str, calls: list[Call], mode: str,
                  limits: SandboxLimits, bwrap_args: list[str] | None = None,
                  drop: bool | None = None) -> Execution:
        job = {"code": program, "mode": mode, "calls": [c.to_job(mode) for c in calls],
               "rlimits": limits.rlimits(), "case_timeout": limits.case_timeout_s,
               "max_value_bytes": limits.max_value_bytes,
               "max_containers": container_cap(limits.max_value_bytes)}
        payload = marshal.dumps(job, 4)
        slot = self._slots.get()
        workdir = None
        try:
            if drop is None:
                drop = self._drop_bwrap if backend == "bwrap" else self._drop
            argv, env, workdir, kwargs = self._command(backend, slot, limits, bwrap_args or self._bwrap_args,
                                                       drop)
            result_r, result_w = os.pipe()
            try:
                argv = argv + [str(result_w), RUNNER_MARKER]
                t0 = time.perf_counter()
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, cwd=workdir,
                                        pass_fds=(result_w,), start_new_session=True, **kwargs)
            except BaseException:
                os.close(result_r)
                os.close(result_w)
                raise
            os.close(result_w)
            channel = ResultChannel(len(calls), mode, limits, t0)
            try:
                got = communicate(proc, payload, result_r, limits, channel)
            finally:
                os.close(result_r)
                reap(proc, self.uid_base + slot if (drop and backend == "subprocess") else None)
            wall = time.perf_counter() - t0
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            self._slots.put(slot)
        load_status, load_error, outcomes = channel.finish(got["killed"], proc.returncode)
        return Execution(backend=backend, load_status=load_status, load_error=load_error, outcomes=outcomes,
                         exit_code=proc.returncode, killed=got["killed"], stdout=got["stdout"],
                         stderr=got["stderr"], wall_s=wall, protocol_error=channel.protocol_error)
