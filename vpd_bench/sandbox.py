"""Run untrusted Python programs on test inputs, and judge the outputs where the program can't reach.

Two layers:

* :class:`Sandbox` runs one program on a list of :class:`Call` s (function calls, stdin/stdout
  runs, or trusted expressions) in a fresh process and returns what each call produced
  (:class:`Execution`). With bubblewrap (``bwrap``) the process gets new user, pid, network,
  ipc, uts and mount namespaces, sees read-only binds of only what the interpreter needs and a
  private ``/tmp``; without it, a plain subprocess with the same resource limits runs instead,
  after a loud one-time warning that files and network are then *not* isolated.
* :func:`evaluate` judges an execution against :class:`Test` s in *this* (trusted) process.

The verdict channel (why a program cannot forge a pass)
-------------------------------------------------------
The child never receives an expected value. It receives the program and the *inputs* of each
call, runs the calls, and sends back the *values* they returned, encoded as tagged JSON on a
pipe of its own (not stdout). The parent decodes them with a decoder that can only build
plain builtins (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``complex``, and
``list`` / ``tuple`` / ``dict`` / ``set`` / ``frozenset`` of those) and compares them with the
expected values it kept to itself. Consequences:

* printing "all tests passed", exiting with status 0 (``sys.exit(0)``, ``os._exit(0)``) or
  killing the runner produce *no* value records, and a test without a value record fails;
* an object whose ``__eq__`` always returns True cannot cross the pipe: only plain builtins can
  be decoded, and the comparison runs on the decoded copies with the builtin ``==``;
* monkeypatching builtins, ``AssertionError``, ``sys.exit``, the runner or its encoder only
  changes which values the child *claims* to have returned; a program can claim any value by
  computing it, so tampering buys nothing without the expected values, which never enter the
  sandbox (neither the tests' source nor the expected outputs are in the child's memory, files
  or environment).

See ``docs/code-task.md`` for the full threat model.
"""
from __future__ import annotations

import ast
import inspect
import json
import logging
import marshal
import math
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

from .errors import UserError

log = logging.getLogger("vpd_bench.sandbox")

BACKENDS = ("auto", "bwrap", "subprocess")
TEST_STATUSES = ("pass", "fail", "error", "timeout", "not_run")
PROGRAM_STATUSES = ("pass", "fail", "timeout", "error", "format")
RUNNER_MARKER = "vpd-bench-sandbox-runner"      # in the runner's argv: lets tests find strays


# ------------------------------------------------------------------------------------------
# limits
# ------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------
# the value codec: the child writes tagged JSON; the parent decodes it to plain builtins only
# ------------------------------------------------------------------------------------------
# The job goes parent -> child with ``marshal`` (trusted direction; no import cost in the child).
# Values come back child -> parent as tagged JSON written by ``_dump`` (embedded in the runner,
# so it must stay Python-3.8 compatible and use nothing but builtins) and are read here with
# ``json.loads`` + :func:`decode_value`, which can only build plain builtins.

_JSON_ESCAPES = dict([(i, "\\u%04x" % i) for i in range(32)] + [(34, '\\"'), (92, "\\\\")])


def _dump_str(text):
    out = text.translate(_JSON_ESCAPES)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:          # lone surrogates: escape them, JSON allows it
        out = "".join(c if not 0xD800 <= ord(c) <= 0xDFFF else "\\u%04x" % ord(c) for c in out)
    return '"' + out + '"'


def _dump(value, depth=0):
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return _dump_str(value)
    if kind is int:
        if -(1 << 62) < value < (1 << 62):
            return int.__repr__(value)
        return '{"$int":"%s"}' % int.__repr__(value)
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            return '{"$float":"%s"}' % float.__repr__(value)
        return float.__repr__(value)
    if depth > 100:
        raise ValueError("value nested too deeply")
    depth += 1
    if kind is list:
        return "[" + ",".join([_dump(v, depth) for v in value]) + "]"
    if kind is tuple:
        return '{"$tuple":[' + ",".join([_dump(v, depth) for v in value]) + "]}"
    if kind is dict:
        return '{"$dict":[' + ",".join(["[" + _dump(k, depth) + "," + _dump(v, depth) + "]"
                                        for k, v in value.items()]) + "]}"
    if kind is set:
        return '{"$set":[' + ",".join([_dump(v, depth) for v in value]) + "]}"
    if kind is frozenset:
        return '{"$frozenset":[' + ",".join([_dump(v, depth) for v in value]) + "]}"
    if kind is bytes:
        return '{"$bytes":"%s"}' % value.hex()
    if kind is complex:
        return '{"$complex":["%s","%s"]}' % (float.__repr__(value.real), float.__repr__(value.imag))
    raise TypeError(kind.__name__)


class PendingRef:
    """Stands for "the value returned by call ``index`` of this test" inside a judge's env."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = int(index)

    def __repr__(self):
        return f"PendingRef({self.index})"

    def __eq__(self, other):
        return isinstance(other, PendingRef) and other.index == self.index

    def __hash__(self):
        return hash(("PendingRef", self.index))


def decode_value(obj):
    """Tagged JSON (already ``json.loads``-ed) -> plain Python value. Raises ValueError / TypeError
    on anything else, so a hostile child cannot make the parent build other types."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [decode_value(v) for v in obj]
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ValueError("malformed value")
    (tag, payload), = obj.items()
    if tag == "$int":
        return int(str(payload))
    if tag == "$float":
        if payload not in ("nan", "inf", "-inf"):
            raise ValueError("bad float")
        return float(payload)
    if tag in ("$tuple", "$set", "$frozenset"):
        if not isinstance(payload, list):
            raise ValueError("bad container")
        items = [decode_value(v) for v in payload]
        return {"$tuple": tuple, "$set": set, "$frozenset": frozenset}[tag](items)
    if tag == "$dict":
        if not isinstance(payload, list) or any(not isinstance(p, list) or len(p) != 2 for p in payload):
            raise ValueError("bad dict")
        return {decode_value(k): decode_value(v) for k, v in payload}
    if tag == "$bytes":
        return bytes.fromhex(str(payload))
    if tag == "$complex":
        return complex(float(payload[0]), float(payload[1]))
    raise ValueError(f"unknown tag {tag!r}")


def _marshal(value, what: str) -> bytes:
    try:
        return marshal.dumps(value, 4)
    except ValueError:
        raise ValueError(f"{what} must be plain data (None, bool, int, float, complex, str, bytes and "
                         f"list / tuple / dict / set of those): {value!r:.200}") from None


# ------------------------------------------------------------------------------------------
# the runner: the program that executes inside the sandbox, next to the untrusted code
# ------------------------------------------------------------------------------------------
# It must not import anything costly (json, signal, enum, re: each is milliseconds per run).

_RUNNER_BODY = r"""
def _vpd_main():
    import builtins, marshal, resource, _signal
    from time import perf_counter as _perf
    _write, _exit, _dup2, _open, _close, _read = os.write, os._exit, os.dup2, os.open, os.close, os.read
    _loads = marshal.loads
    result_fd = int(sys.argv[1])
    chunks = []
    while True:
        chunk = _read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    job = _loads(b"".join(chunks))
    del chunks
    null = _open(os.devnull, os.O_RDONLY)
    _dup2(null, 0)
    _close(null)
    for name, value in job["rlimits"].items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        hard = value + 1 if name == "RLIMIT_CPU" else value
        try:
            resource.setrlimit(which, (value, hard))
        except (ValueError, OSError):
            cur_hard = resource.getrlimit(which)[1]
            if cur_hard != resource.RLIM_INFINITY:
                try:
                    resource.setrlimit(which, (min(value, cur_hard), cur_hard))
                except (ValueError, OSError):
                    pass
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)

    def emit(text):
        view = memoryview((text + "\n").encode("utf-8"))
        while view:
            try:
                n = _write(result_fd, view)
            except InterruptedError:
                continue
            except OSError:
                _exit(3)
            view = view[n:]

    def obj(**fields):
        return "{" + ",".join(['"%s":%s' % (k, v) for k, v in fields.items()]) + "}"

    class _VpdTimeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise _VpdTimeout()

    def arm(seconds):
        _signal.signal(_signal.SIGALRM, on_alarm)
        _signal.setitimer(_signal.ITIMER_REAL, seconds)

    def disarm():
        _signal.setitimer(_signal.ITIMER_REAL, 0)

    code = job["code"]
    lines = code.splitlines()
    filename = "<solution>"

    def describe(err, message=None):
        try:
            name = type(err).__name__
        except BaseException:
            name = "Exception"
        if message is None:
            try:
                message = str(err)
            except BaseException:
                message = "<unprintable message>"
        where = None
        tb = getattr(err, "__traceback__", None)
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                where = tb.tb_lineno
            tb = tb.tb_next
        if where is None and isinstance(err, SyntaxError) and err.filename == filename:
            where = err.lineno
        text = lines[where - 1].strip()[:200] if where and 0 < where <= len(lines) else None
        return obj(type=_dump_str(str(name)[:100]), message=_dump_str(str(message)[:500]),
                   line=_dump(where), text=_dump(text), timeout=_dump(isinstance(err, _VpdTimeout)))

    case_timeout = float(job["case_timeout"])
    max_value = int(job["max_value_bytes"])
    mode = job["mode"]
    emit('{"ready":1}')
    try:
        compiled = compile(code, filename, "exec")
    except BaseException as err:
        emit(obj(load='"syntax"', error=describe(err)))
        _exit(0)

    def run_value(i, produce):
        emit('{"start":%d}' % i)
        t0 = _perf()
        try:
            arm(case_timeout)
            value = produce()
            disarm()
        except BaseException as err:
            disarm()
            emit(obj(i=str(i), error=describe(err), t=repr(_perf() - t0)))
            return isinstance(err, _VpdTimeout)
        seconds = repr(_perf() - t0)
        try:
            encoded = _dump(value)
        except BaseException:
            try:
                kind = type(value).__name__
            except BaseException:
                kind = "object"
            emit(obj(i=str(i), unsupported=_dump_str(str(kind)[:100]), t=seconds))
            return False
        if len(encoded) > max_value:
            emit(obj(i=str(i), too_large=str(len(encoded)), t=seconds))
            return False
        emit(obj(i=str(i), v=encoded, t=seconds))
        return False

    def skip_rest(start):
        for j in range(start, len(job["calls"])):
            emit(obj(i=str(j), skipped='"an earlier call hit the time limit"'))

    if not hasattr(builtins, "exit"):         # -S skips site, which defines exit() and quit()
        def _exit_builtin(code=None):
            raise SystemExit(code)
        builtins.exit = builtins.quit = _exit_builtin

    if mode in ("call", "expr"):
        namespace = {"__name__": job.get("module_name", "__solution__"), "__builtins__": builtins}
        try:
            arm(case_timeout)
            exec(compiled, namespace)
            disarm()
        except BaseException as err:
            disarm()
            emit(obj(load='"exception"', error=describe(err)))
            _exit(0)
        emit('{"load":"ok"}')
        for i, call in enumerate(job["calls"]):
            if mode == "call":
                def produce(call=call):
                    target = namespace
                    fn = None
                    for part in call["target"].split("."):
                        make = part.endswith("()")
                        name = part[:-2] if make else part
                        fn = target[name] if type(target) is dict else getattr(target, name)
                        if make:
                            fn = fn()
                        target = fn
                    args, kwargs = _loads(call["args"]), _loads(call["kwargs"])
                    return fn(*args, **kwargs)
            else:
                def produce(call=call):
                    env = dict(namespace)
                    env.update(_loads(call["env"]))
                    return eval(call["expr"], env)
            if run_value(i, produce):
                skip_rest(i + 1)
                break
    elif mode == "stdio":
        emit('{"load":"ok"}')
        orig_out = os.dup(1)

        def place(path, flags, target):
            fd = _open(path, flags, 0o600)
            if fd != target:
                _dup2(fd, target)
                _close(fd)

        for i, call in enumerate(job["calls"]):
            emit('{"start":%d}' % i)
            fd = _open(".vpd_stdin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            data = call["stdin"].encode("utf-8")
            while data:
                data = data[_write(fd, data):]
            _close(fd)
            place(".vpd_stdin", os.O_RDONLY, 0)
            place(".vpd_stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 1)
            sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                         encoding="utf-8", errors="replace")
            out = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                   encoding="utf-8", errors="replace")
            sys.stdout = out
            namespace = {"__name__": "__main__", "__builtins__": builtins}
            error = None
            timed_out = False
            t0 = _perf()
            try:
                arm(case_timeout)
                exec(compiled, namespace)
                disarm()
            except SystemExit as err:
                disarm()
                if err.code not in (None, 0):
                    error = describe(err, "exit status %r" % (err.code,))
            except BaseException as err:
                disarm()
                timed_out = isinstance(err, _VpdTimeout)
                error = describe(err)
            seconds = repr(_perf() - t0)
            try:
                out.flush()
            except BaseException:
                pass
            _dup2(orig_out, 1)
            fd = _open(".vpd_stdout", os.O_RDONLY)
            captured = _read(fd, max_value + 1)
            _close(fd)
            if error is not None:
                emit(obj(i=str(i), error=error, t=seconds))
                if timed_out:
                    skip_rest(i + 1)
                    break
                continue
            emit(obj(i=str(i), v=_dump_str(captured[:max_value].decode("utf-8", "replace")), t=seconds,
                     truncated=_dump(len(captured) > max_value)))
    emit('{"done":1}')
    _exit(0)


_vpd_main()
"""


def _runner_source() -> str:
    parts = [f"# {RUNNER_MARKER}", "import io, os, sys",
             "_JSON_ESCAPES = %r" % (_JSON_ESCAPES,),
             inspect.getsource(_dump_str), inspect.getsource(_dump), _RUNNER_BODY]
    return "\n".join(parts)


RUNNER_SOURCE = _runner_source()


# ------------------------------------------------------------------------------------------
# calls and executions
# ------------------------------------------------------------------------------------------

@dataclass
class Call:
    """One thing to run in the sandbox.

    * function call (``mode="call"``): ``target`` names the callable in the program's namespace:
      ``"f"``, or ``"Solution().f"`` (``()`` instantiates); ``args`` / ``kwargs`` are plain data;
    * stdin/stdout run (``mode="stdio"``): the whole program runs as ``__main__`` with ``stdin``;
    * trusted expression (``mode="expr"``): ``expr`` is evaluated in the program's namespace
      updated with ``env`` (used for judging and for unrolling dataset tests, never with
      candidate code).
    """
    target: str | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    stdin: str | None = None
    expr: str | None = None
    env: dict | None = None

    def to_job(self, mode: str) -> dict:
        # arguments travel as separate marshal blobs, so every call gets fresh objects
        if mode == "call":
            return {"target": str(self.target), "args": _marshal(tuple(self.args), "call arguments"),
                    "kwargs": _marshal(dict(self.kwargs), "call keyword arguments")}
        if mode == "stdio":
            return {"stdin": str(self.stdin or "")}
        return {"expr": str(self.expr), "env": _marshal(dict(self.env or {}), "judge environment")}


@dataclass
class CallOutcome:
    status: str                     # ok | exception | timeout | unsupported | not_run
    value: Any = None               # decoded return value (call/expr) or captured stdout (stdio)
    error: dict | None = None       # {type, message, line, text} for exceptions
    seconds: float | None = None
    truncated: bool = False
    detail: str = ""                # why not_run / unsupported


@dataclass
class Execution:
    backend: str
    load_status: str                # ok | syntax | exception | timeout | crash
    load_error: dict | None
    outcomes: list[CallOutcome]
    exit_code: int | None
    killed: str | None              # timeout | result_limit | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def crashed(self) -> bool:
        return self.load_status == "crash" or any(o.status == "not_run" for o in self.outcomes)

    def exit_description(self) -> str:
        if self.killed == "timeout":
            return "it was stopped at the time limit"
        if self.killed == "result_limit":
            return "it sent back too much output"
        if self.exit_code is None:
            return "it did not exit"
        if self.exit_code < 0:
            try:
                name = signal.Signals(-self.exit_code).name
            except ValueError:
                name = f"signal {-self.exit_code}"
            return f"it was killed by {name}"
        return f"exit status {self.exit_code}"


# ------------------------------------------------------------------------------------------
# the sandbox
# ------------------------------------------------------------------------------------------

_WARNED = False
_WARN_LOCK = threading.Lock()
_SELF_CHECKS: dict = {}
_SELF_CHECK_LOCK = threading.Lock()


def _loud_warning(reason: str) -> None:
    global _WARNED
    with _WARN_LOCK:
        if _WARNED:
            return
        _WARNED = True
    bar = "!" * 78
    text = (f"\n{bar}\n!! vpd-bench SANDBOX WARNING: {reason}\n"
            "!! Model-written code now runs as a plain subprocess with resource limits only:\n"
            "!! FILES AND NETWORK ARE NOT ISOLATED. Install bubblewrap (apt-get install bubblewrap)\n"
            f"!! to isolate it.\n{bar}\n")
    sys.stderr.write(text)
    log.warning("sandbox: %s; files and network are NOT isolated", reason)
    warnings.warn(f"vpd-bench sandbox: {reason}; files and network are NOT isolated",
                  RuntimeWarning, stacklevel=3)


def reset_warning_for_tests() -> None:
    global _WARNED
    with _WARN_LOCK:
        _WARNED = False


_INFO: dict = {}


def _interpreter_info(python: str) -> dict:
    """Paths of an interpreter (for the bind mounts); cached. Raises UserError when unusable."""
    if python not in _INFO:
        _INFO[python] = _probe_interpreter(python)
    return _INFO[python]


def _probe_interpreter(python: str) -> dict:
    probe = ("import json, site, sys, sysconfig\n"
             "p = sysconfig.get_paths()\n"
             "try:\n    sp = site.getsitepackages()\nexcept Exception:\n    sp = []\n"
             "print(json.dumps({'exe': sys.executable, 'prefix': sys.prefix, 'base_prefix': sys.base_prefix,"
             " 'stdlib': p.get('stdlib'), 'platstdlib': p.get('platstdlib'),"
             " 'site': sorted(set(sp + [p.get('purelib'), p.get('platlib')]) - {None}),"
             " 'libdir': sysconfig.get_config_var('LIBDIR'), 'version': list(sys.version_info[:2])}))")
    try:
        out = subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True, text=True,
                             timeout=30, env={"PATH": "/usr/bin:/bin"})
        info = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as err:
        raise UserError(f"sandbox interpreter {python!r} does not run: {err}") from None
    if tuple(info["version"]) < (3, 8):
        raise UserError(f"sandbox interpreter {python!r} is Python {info['version']}; need >= 3.8")
    info["exe"] = os.path.realpath(python)
    return info


def default_python() -> str:
    """The interpreter inside the sandbox: this one when it lives under /usr (binds stay small),
    else the system ``/usr/bin/python3`` (standard library only is all candidates get by
    default), else this one (its prefix is then bound read-only)."""
    here = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if here.startswith("/usr/"):
        return here
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand):
            return os.path.realpath(cand)
    return here


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
        if mode not in ("call", "stdio", "expr"):
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
            sandbox_env = []
            for key, value in {**env, "HOME": "/tmp", "TMPDIR": "/tmp"}.items():
                sandbox_env += ["--setenv", key, value]
            private = ["--proc", "/proc", "--dev", "/dev",
                       "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp",
                       "--size", str(1 << 20), "--tmpfs", "/dev/shm", "--chdir", "/tmp"]
            if "--size" not in _bwrap_features(self.bwrap_path):
                private = [a for a in private if a != "--size" and not a.isdigit()]
            argv = (prefix + [self.bwrap_path] + bwrap_args + private + sandbox_env + ["--"]
                    + interp + runner)
            return argv, env, None, kwargs
        workdir = tempfile.mkdtemp(prefix="vpd-sandbox-")
        if drop:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        env.update({"HOME": workdir, "TMPDIR": workdir})
        return prefix + interp + runner, env, workdir, kwargs

    def _run_once(self, backend: str, program: str, calls: list[Call], mode: str,
                  limits: SandboxLimits, bwrap_args: list[str] | None = None,
                  drop: bool | None = None) -> Execution:
        job = {"code": program, "mode": mode, "calls": [c.to_job(mode) for c in calls],
               "rlimits": limits.rlimits(), "case_timeout": limits.case_timeout_s,
               "max_value_bytes": limits.max_value_bytes}
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
            try:
                got = _communicate(proc, payload, result_r, limits, len(calls), t0)
            finally:
                os.close(result_r)
                _reap(proc, self.uid_base + slot if (drop and backend == "subprocess") else None)
            wall = time.perf_counter() - t0
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            self._slots.put(slot)
        return _build_execution(backend, got, proc.returncode, len(calls), limits, wall)


_FEATURES: dict = {}


def _bwrap_features(path: str) -> set:
    """Options this bwrap supports (``--disable-userns`` needs 0.8, ``--size`` 0.5)."""
    if path not in _FEATURES:
        try:
            text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        _FEATURES[path] = {opt for opt in ("--disable-userns", "--size") if opt in text}
    return _FEATURES[path]


def _bwrap_arguments(info: dict, *, tight: bool, site_packages: bool, features: set) -> list[str]:
    """bwrap options: namespaces and read-only binds of what the interpreter needs. ``tight``
    binds the interpreter, its standard library and the system library folders only; otherwise
    all of /usr. The private /tmp, /proc and /dev are added per run (their size is a limit)."""
    args = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--clearenv", "--cap-drop", "ALL", "--hostname", "sandbox"]
    if "--disable-userns" in features:
        args.append("--disable-userns")
    binds: list[str] = []
    machine = os.uname().machine
    if tight:
        binds += [info["exe"], info["stdlib"], info["platstdlib"], info.get("libdir") or "",
                  "/usr/lib64", "/lib64", f"/usr/lib/{machine}-linux-gnu", f"/lib/{machine}-linux-gnu",
                  "/lib", "/bin"]
        if site_packages:
            binds += info.get("site", [])
    else:
        binds += ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"]
    prefix = info.get("base_prefix") or ""
    if prefix and not prefix.startswith("/usr") and prefix != "/":
        binds.append(prefix)
    seen: list[str] = []
    links: list[str] = []
    for path in binds:
        if not path or not os.path.lexists(path):
            continue
        if os.path.islink(path) and os.path.dirname(path) == "/":
            if path not in links:                                # merged /usr: /lib -> usr/lib
                links.append(path)
                args += ["--symlink", os.readlink(path), path]
            continue
        real = os.path.realpath(path)                            # bind targets, not links to them
        if real not in seen:
            seen.append(real)
            args += ["--ro-bind", real, real]
    for extra in ("/etc/ld.so.cache", "/etc/localtime"):
        args += ["--ro-bind-try", extra, extra]
    if not site_packages:
        # the interpreter's site-packages may hold data sets (answers included): hide them
        for path in info.get("site", []):
            if path and os.path.isdir(path) and any(
                    path == b or path.startswith(b.rstrip("/") + "/") for b in seen):
                args += ["--tmpfs", path]
    return args


def _communicate(proc: subprocess.Popen, payload: bytes, result_fd: int, limits: SandboxLimits,
                 n_calls: int, t0: float) -> dict:
    """Feed the job, read stdout / stderr / results under the deadlines; kill on overrun."""
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(result_fd, selectors.EVENT_READ, "result")
    out = {"stdout": bytearray(), "stderr": bytearray()}
    sizes = {"stdout": 0, "stderr": 0, "result": 0}
    pending = memoryview(payload)
    buf = bytearray()
    records: list[dict] = []
    killed = None
    overall = t0 + limits.timeout_s
    watchdog = t0 + limits.startup_grace_s + limits.case_timeout_s
    grace = min(1.0, 0.25 + 0.25 * limits.case_timeout_s)
    # a pidfd tells us the moment the child exits (no polling); pipes are then drained briefly
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        except OSError:
            pidfd = None
    exited_at = None
    try:
        while True:
            streams_open = any(k.data in ("stdout", "stderr", "result") for k in sel.get_map().values())
            if not streams_open and (exited_at is not None or pidfd is None):
                break
            now = time.perf_counter()
            deadline = min(overall, watchdog)
            if exited_at is not None:
                deadline = min(deadline, exited_at + 0.5)
            if now >= deadline:
                if exited_at is None:
                    killed = "timeout"
                break
            for key, _ in sel.select(timeout=deadline - now):
                name = key.data
                if name == "exit":
                    exited_at = time.perf_counter()
                    sel.unregister(pidfd)
                    continue
                if name == "stdin":
                    try:
                        n = os.write(proc.stdin.fileno(), pending[:1 << 16])
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                fd = key.fd
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                sizes[name] += len(chunk)
                if name == "result":
                    if sizes["result"] > limits.max_result_bytes:
                        killed = "result_limit"
                        break
                    buf += chunk
                    while True:
                        cut = buf.find(b"\n")
                        if cut < 0:
                            break
                        line = bytes(buf[:cut])
                        del buf[:cut + 1]
                        try:
                            rec = json.loads(line)
                        except (ValueError, RecursionError):
                            continue
                        if isinstance(rec, dict):
                            records.append(rec)
                    # any record is progress: the next step gets a fresh per-call allowance
                    watchdog = time.perf_counter() + limits.case_timeout_s + grace
                else:
                    room = limits.max_output_bytes - len(out[name])
                    if room > 0:
                        out[name] += chunk[:room]
            if killed:
                break
        if not killed and pidfd is None:
            remaining = max(0.05, min(overall, watchdog) - time.perf_counter())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                killed = "timeout"
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
    return {"records": records, "killed": killed,
            "stdout": out["stdout"].decode("utf-8", "replace"),
            "stderr": out["stderr"].decode("utf-8", "replace"),
            "stdout_total": sizes["stdout"], "stderr_total": sizes["stderr"]}


def _reap(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the process group (and, for a dedicated uid, every process of that uid); wait."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a kernel that won't kill
        log.error("sandbox: process %s survived SIGKILL", proc.pid)
    if uid is not None:
        kill_uid(uid)


def kill_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every live process whose real uid is ``uid`` (a dedicated sandbox uid); returns how
    many were signalled. Repeats until a scan finds none, so forks in flight are caught.
    (Zombies are skipped: they are dead already, and their reaper may be slow.)"""
    total = 0
    for _ in range(rounds):
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status", "rb") as fh:
                    state = None
                    for line in fh:
                        if line.startswith(b"State:"):
                            state = line.split()[1]
                        elif line.startswith(b"Uid:"):
                            if int(line.split()[1]) == uid and state not in (b"Z", b"X"):
                                os.kill(int(entry), signal.SIGKILL)
                                found += 1
                            break
            except (OSError, ValueError, IndexError):
                continue
        total += found
        if not found:
            break
        time.sleep(0.005)
    return total


def _build_execution(backend: str, got: dict, exit_code: int | None, n_calls: int,
                     limits: SandboxLimits, wall: float) -> Execution:
    outcomes: list[CallOutcome | None] = [None] * n_calls
    load_status, load_error = None, None
    running = None
    for rec in got["records"]:
        if "load" in rec and load_status is None:
            load_status = str(rec["load"]) if rec["load"] in ("ok", "syntax", "exception") else "crash"
            load_error = rec.get("error") if isinstance(rec.get("error"), dict) else None
            if load_error is not None:
                if load_error.get("timeout"):
                    load_status = "timeout"
                load_error = {k: load_error.get(k) for k in ("type", "message", "line", "text")}
            continue
        if "start" in rec:
            running = rec["start"]
            continue
        i = rec.get("i")
        if not isinstance(i, int) or not 0 <= i < n_calls or outcomes[i] is not None:
            continue                      # first record for a call wins; strays are ignored
        seconds = rec.get("t") if isinstance(rec.get("t"), (int, float)) else None
        if "v" in rec:
            try:
                value = decode_value(rec["v"])
            except (ValueError, TypeError, RecursionError, OverflowError):
                outcomes[i] = CallOutcome("unsupported", seconds=seconds, detail="undecodable value")
                continue
            outcomes[i] = CallOutcome("ok", value=value, seconds=seconds, truncated=bool(rec.get("truncated")))
        elif "error" in rec and isinstance(rec["error"], dict):
            err = {k: rec["error"].get(k) for k in ("type", "message", "line", "text")}
            status = "timeout" if rec["error"].get("timeout") else "exception"
            outcomes[i] = CallOutcome(status, error=err, seconds=seconds)
        elif "unsupported" in rec:
            outcomes[i] = CallOutcome("unsupported", seconds=seconds, detail=f"an object of type {rec['unsupported']}")
        elif "too_large" in rec:
            outcomes[i] = CallOutcome("unsupported", seconds=seconds,
                                      detail=f"a value too large to check ({rec['too_large']} bytes encoded)")
        elif "skipped" in rec:
            outcomes[i] = CallOutcome("not_run", detail="skipped: an earlier call hit the time limit")
        if running == i:
            running = None
    killed = got["killed"]
    if load_status is None:
        load_status = "timeout" if killed == "timeout" else "crash"
    final: list[CallOutcome] = []
    for i, outcome in enumerate(outcomes):
        if outcome is None:
            if load_status != "ok":
                outcome = CallOutcome("not_run", detail="the program did not load")
            elif i == running and killed == "timeout":
                outcome = CallOutcome("timeout", seconds=limits.case_timeout_s)
            elif i == running and exit_code is not None and exit_code in (-signal.SIGXCPU, -signal.SIGKILL) \
                    and killed is None:
                outcome = CallOutcome("timeout", seconds=None, detail="CPU time limit")
            else:
                outcome = CallOutcome("not_run", detail="the program stopped before this call")
        final.append(outcome)
    return Execution(backend=backend, load_status=load_status, load_error=load_error, outcomes=final,
                     exit_code=exit_code, killed=killed, stdout=got["stdout"], stderr=got["stderr"],
                     wall_s=wall)


# ------------------------------------------------------------------------------------------
# judging (in the trusted parent)
# ------------------------------------------------------------------------------------------

@dataclass
class Test:
    """One test: the calls it needs and how to judge their values.

    ``kind``:
      * ``equals``      -- ``value == expected`` (one call)
      * ``approx``      -- equal, or numbers within ``atol`` (evalplus-style, one call)
      * ``json_equals`` -- equal after turning tuples into lists (LiveCodeBench functional)
      * ``stdout``      -- captured stdout matches ``expected`` text, whitespace-insensitive
      * ``expr``        -- the boolean ``expr`` over ``_out`` (the calls' values, in order) and
                           ``env`` (plain values; :class:`PendingRef` s stand for call values)
    """
    calls: list[Call]
    kind: str = "equals"
    expected: Any = None
    expr: str | None = None
    env: dict = field(default_factory=dict)
    atol: float = 0.0
    label: str = ""          # the input as shown in feedback, e.g. ``add(1, 2)``
    check: str = ""          # the original assertion, shown for ``expr`` tests
    __test__ = False         # not a pytest class

    def __post_init__(self):
        if self.kind not in ("equals", "approx", "json_equals", "stdout", "expr"):
            raise ValueError(f"unknown test kind {self.kind!r}")


@dataclass
class TestResult:
    __test__ = False
    status: str              # pass | fail | error | timeout | not_run
    got: Any = None
    error: dict | None = None
    detail: str = ""
    seconds: float | None = None
    has_got: bool = False


@dataclass
class Evaluation:
    status: str                          # pass | fail | timeout | error | format
    results: list[TestResult]
    execution: Execution | None
    message: str = ""                    # format / load problems, in words

    @property
    def passed(self) -> int:
        return sum(r.status == "pass" for r in self.results)


# a small, safe expression evaluator for judge expressions over plain data -------------------

_SAFE_FUNCS = {f.__name__: f for f in (abs, all, any, bool, dict, enumerate, float, frozenset, int,
                                       isinstance, len, list, max, min, range, reversed, round, set,
                                       sorted, str, sum, tuple, zip)}
_SAFE_MATH = {name: getattr(math, name) for name in (
    "isclose", "fabs", "sqrt", "floor", "ceil", "isnan", "isinf", "isfinite", "inf", "nan", "pi", "e",
    "log", "log2", "log10", "exp", "fsum", "trunc", "gcd", "hypot")}


class _MathNamespace:
    def __init__(self):
        self.__dict__.update(_SAFE_MATH)


_SAFE_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call,
               ast.Name, ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Subscript, ast.Slice,
               ast.Load, ast.Store, ast.keyword, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp,
               ast.comprehension, ast.Attribute, ast.Starred, ast.operator, ast.unaryop, ast.cmpop,
               ast.boolop, ast.expr_context)


def safe_expression(expr: str, names: Iterable[str]) -> bool:
    """True when ``expr`` uses only plain operators, the whitelisted functions, ``math.<name>``
    and the given ``names`` -- i.e. it can be evaluated here on plain data without risk."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    allowed = set(names) | set(_SAFE_FUNCS) | {"math"}
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            return False
        if isinstance(node, ast.Name) and (node.id.startswith("__") or node.id not in allowed | bound):
            return False
        if isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _SAFE_MATH):
                return False
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                if func.id not in _SAFE_FUNCS:
                    return False
            elif not isinstance(func, ast.Attribute):
                return False
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.LShift)):
            right = node.right
            if not (isinstance(right, ast.Constant) and isinstance(right.value, int) and abs(right.value) <= 64):
                return False
    return True


def eval_safe(expr: str, env: dict) -> Any:
    """Evaluate an expression accepted by :func:`safe_expression` (no builtins but the whitelist)."""
    scope = {"__builtins__": {}, **_SAFE_FUNCS, "math": _MathNamespace(), **env}
    return eval(compile(expr, "<judge>", "eval"), scope)  # noqa: S307 - validated above


def _resolve_refs(value, outs: list):
    if isinstance(value, PendingRef):
        return outs[value.index]
    if isinstance(value, list):
        return [_resolve_refs(v, outs) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve_refs(v, outs) for v in value)
    if isinstance(value, dict):
        return {k: _resolve_refs(v, outs) for k, v in value.items()}
    return value


def _is_float_like(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(i, float) for i in x)
    return False


def approx_equal(out, exp, atol: float) -> bool:
    """evalplus-style comparison: equal, or (for floats) within ``atol`` (1e-6 when 0)."""
    if isinstance(out, bool) or isinstance(exp, bool):
        return type(out) is type(exp) and out == exp
    try:
        if out == exp:
            return True
    except Exception:  # noqa: BLE001 - plain data, but be safe
        return False
    if atol == 0 and _is_float_like(exp):
        atol = 1e-6
    if not atol:
        return False
    if isinstance(exp, (int, float)) and isinstance(out, (int, float)):
        return math.isclose(out, exp, rel_tol=1e-7, abs_tol=atol)
    if isinstance(exp, (list, tuple)) and isinstance(out, (list, tuple)) and len(out) == len(exp):
        return all(approx_equal(o, e, atol) for o, e in zip(out, exp))
    return False


def _tuples_to_lists(x):
    if isinstance(x, (list, tuple)):
        return [_tuples_to_lists(v) for v in x]
    if isinstance(x, dict):
        return {k: _tuples_to_lists(v) for k, v in x.items()}
    return x


def stdout_matches(got: str, expected: str) -> bool:
    """LiveCodeBench-style: lines compared after stripping; numbers within 1e-6 also match."""
    def lines(text):
        rows = [line.strip() for line in str(text).strip().splitlines()]
        return rows
    a, b = lines(got), lines(expected)
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        xs, ys = x.split(), y.split()
        if len(xs) != len(ys):
            return False
        for u, v in zip(xs, ys):
            if u == v:
                continue
            try:
                fu, fv = float(u), float(v)
            except ValueError:
                return False
            if not math.isclose(fu, fv, rel_tol=1e-6, abs_tol=1e-6):
                return False
    return True


def judge_value(test: Test, outs: list) -> bool | None:
    """Judge in this process. None when the test needs the sandboxed judge (see :func:`evaluate`)."""
    if test.kind == "equals":
        return outs[0] == test.expected
    if test.kind == "approx":
        return approx_equal(outs[0], test.expected, test.atol)
    if test.kind == "json_equals":
        return _tuples_to_lists(outs[0]) == test.expected
    if test.kind == "stdout":
        return stdout_matches(outs[0], test.expected)
    env = {k: _resolve_refs(v, outs) for k, v in test.env.items()}
    if not safe_expression(test.expr, list(env) + ["_out"]):
        return None
    env["_out"] = outs
    return bool(eval_safe(test.expr, env))


def evaluate(sandbox: Sandbox, program: str, tests: Sequence[Test], *, mode: str = "call",
             judge_context: str | None = None, limits: SandboxLimits | None = None) -> Evaluation:
    """Run ``program`` on the calls of ``tests`` (one process) and judge each test here.

    Tests whose judge expression is not safe to evaluate here (it calls helper functions of the
    data set) are judged in a second sandboxed run of the trusted ``judge_context`` code, fed only
    the plain values the first run returned."""
    calls: list[Call] = []
    spans = []
    for test in tests:
        spans.append((len(calls), len(calls) + len(test.calls)))
        calls.extend(test.calls)
    execution = sandbox.run(program, calls, mode=mode, limits=limits)
    if execution.load_status == "syntax":
        return Evaluation("format", [TestResult("not_run") for _ in tests], execution,
                          message="syntax error")
    results: list[TestResult] = []
    deferred: list[tuple[int, Test, list]] = []
    for ti, (test, (a, b)) in enumerate(zip(tests, spans)):
        outcomes = execution.outcomes[a:b]
        bad = next((o for o in outcomes if o.status != "ok"), None)
        seconds = sum(o.seconds or 0.0 for o in outcomes)
        if bad is not None:
            status = {"exception": "error", "timeout": "timeout", "unsupported": "fail",
                      "not_run": "not_run"}[bad.status]
            results.append(TestResult(status, error=bad.error, detail=bad.detail, seconds=seconds))
            continue
        outs = [o.value for o in outcomes]
        got = outs[0] if len(outs) == 1 else outs
        try:
            verdict = judge_value(test, outs)
        except Exception as err:  # noqa: BLE001 - a judge expression failing on the values is a fail
            verdict = False
            results.append(TestResult("fail", got=got, has_got=True, seconds=seconds,
                                      detail=f"the check raised {type(err).__name__}"))
            continue
        if verdict is None:
            deferred.append((ti, test, outs))
            results.append(TestResult("fail", got=got, has_got=True, seconds=seconds))
            continue
        results.append(TestResult("pass" if verdict else "fail", got=got, has_got=True, seconds=seconds))
    if deferred:
        _judge_in_sandbox(sandbox, deferred, results, judge_context or "")
    return Evaluation(_program_status(execution, results), results, execution)


def _judge_in_sandbox(sandbox: Sandbox, deferred, results, context: str) -> None:
    calls = []
    for _, test, outs in deferred:
        env = {k: _resolve_refs(v, outs) for k, v in test.env.items()}
        env["_out"] = outs
        calls.append(Call(expr=f"bool({test.expr})", env=env))
    limits = replace(sandbox.limits, timeout_s=max(sandbox.limits.timeout_s, 30.0))
    ex = sandbox.run(context, calls, mode="expr", limits=limits)
    for (ti, _, _), outcome in zip(deferred, ex.outcomes):
        if outcome.status == "ok":
            results[ti].status = "pass" if outcome.value is True else "fail"
        else:
            results[ti].status = "fail"
            results[ti].detail = "the check could not be evaluated"


def _program_status(execution: Execution, results: list[TestResult]) -> str:
    if execution.load_status in ("exception", "crash"):
        return "error"
    if execution.load_status == "timeout":
        return "timeout"
    statuses = {r.status for r in results}
    if statuses <= {"pass"}:
        return "pass"
    if "error" in statuses:
        return "error"
    if "timeout" in statuses:
        return "timeout"
    if "not_run" in statuses:
        return "error"
    return "fail"
