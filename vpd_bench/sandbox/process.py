"""One sandboxed process, driven from the parent: feed the job on stdin, read stdout / stderr and
the result pipe under the deadlines of :class:`~.channel.ResultChannel`, kill and reap."""
from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import time

from .channel import ResultChannel
from .fallback import kill_uid
from .limits import SandboxLimits

log = logging.getLogger("vpd_bench.sandbox")

_EXIT_DRAIN_S = 0.5     # after the process exits, how long its pipes may still be drained


def communicate(proc: subprocess.Popen, payload: bytes, result_fd: int, limits: SandboxLimits,
                channel: ResultChannel) -> dict:
    """Feed the job, read stdout / stderr / results until the run is over; stop it on overrun.

    The deadlines are the parent's (``channel.deadline()`` and ``limits.timeout_s`` from the
    channel's start): nothing the child writes extends them. Returns ``killed`` (None, "timeout",
    "result_limit" or "protocol") and the captured, capped stdout / stderr."""
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(result_fd, selectors.EVENT_READ, "result")
    out = {"stdout": bytearray(), "stderr": bytearray()}
    sizes = {"stdout": 0, "stderr": 0, "result": 0}
    pending = memoryview(payload)
    killed = None
    overall = channel.t0 + limits.timeout_s
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
            if channel.stop_now:
                killed = channel.killed_reason
                break
            streams_open = any(k.data in ("stdout", "stderr", "result") for k in sel.get_map().values())
            if not streams_open and (exited_at is not None or pidfd is None):
                break
            now = time.perf_counter()
            deadline = min(overall, channel.deadline())
            if exited_at is not None:
                deadline = min(deadline, exited_at + _EXIT_DRAIN_S)
            if now >= deadline:
                if exited_at is None and channel.open:
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
                try:
                    chunk = os.read(key.fd, 1 << 16)
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
                    channel.feed(chunk, time.perf_counter())
                    if not channel.open:        # over (or stopped): the rest is not read
                        sel.unregister(key.fileobj)
                        if channel.stop_now:
                            break
                else:
                    room = limits.max_output_bytes - len(out[name])
                    if room > 0:
                        out[name] += chunk[:room]
            if killed:
                break
        if channel.stop_now and not killed:
            killed = channel.killed_reason
        if not killed and pidfd is None:
            remaining = max(0.05, min(overall, channel.deadline()) - time.perf_counter())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                if channel.open:
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
    return {"killed": killed,
            "stdout": out["stdout"].decode("utf-8", "replace"),
            "stderr": out["stderr"].decode("utf-8", "replace"),
            "stdout_total": sizes["stdout"], "stderr_total": sizes["stderr"]}


def reap(proc: subprocess.Popen, uid: int | None) -> None:
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
