"""The fallback backend: a plain subprocess with resource limits (rlimits set by the runner),
a fresh private working directory, a minimal environment, no new privileges (``setpriv``) and,
when the harness runs as root, a dedicated unprivileged uid per worker. Files and network are
*not* isolated: it warns loudly, once."""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import time
import warnings

log = logging.getLogger("vpd_bench.sandbox")

_WARNED = False
_WARN_LOCK = threading.Lock()


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


def private_workdir(drop_uid: int | None) -> str:
    """A fresh directory only the run (or its dedicated uid) can use; removed after the run."""
    workdir = tempfile.mkdtemp(prefix="vpd-sandbox-")
    if drop_uid is not None:
        os.chown(workdir, drop_uid, drop_uid)
    os.chmod(workdir, 0o700)
    return workdir


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
