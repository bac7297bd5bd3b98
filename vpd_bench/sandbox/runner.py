"""The runner: the program that executes inside the sandbox, next to the untrusted code.

It reads its job (the program, the calls, the limits) as one ``marshal`` blob on stdin, sets
its resource limits, loads the program and runs the calls in order, writing one record per step
on the result pipe (file descriptor ``argv[1]``) in the grammar of ``wire.py``. It never sees an
expected value. The candidate shares its process and can rewrite any of it, which is why the
parent trusts nothing it sends (see ``channel.py``): the runner's job is to report honestly for
honest programs, quickly and without importing anything costly (json, signal, enum, re: each is
milliseconds per run).
"""
from __future__ import annotations

import inspect

from .wire import _JSON_ESCAPES, _dump, _dump_str, _structure

RUNNER_MARKER = "vpd-bench-sandbox-runner"      # in the runner's argv: lets tests find strays

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
    max_containers = int(job["max_containers"])
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
        if len(encoded) > max_value or (encoded.count("[") + encoded.count("{") > max_containers
                                        and _structure(encoded)[0] > max_containers):
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


def runner_source() -> str:
    """The runner as one ``python -c`` program (the codec is embedded, so nothing is imported)."""
    parts = [f"# {RUNNER_MARKER}", "import io, os, sys",
             "_JSON_ESCAPES = %r" % (_JSON_ESCAPES,),
             inspect.getsource(_dump_str), inspect.getsource(_dump), inspect.getsource(_structure),
             _RUNNER_BODY]
    return "\n".join(parts)


RUNNER_SOURCE = runner_source()
