"""The bubblewrap backend: new user, pid, network, ipc, uts and mount namespaces; read-only
binds of only what the interpreter needs; a private ``/tmp``, ``/proc`` and ``/dev``."""
from __future__ import annotations

import os
import subprocess

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


def bwrap_argv(bwrap_path: str, bwrap_args: list[str], tmpfs_mb: int, env: dict) -> list[str]:
    """The bwrap part of one run's argv (the interpreter and the runner follow it): the
    per-run private mounts (their size is a limit) and the environment."""
    sandbox_env: list[str] = []
    for key, value in {**env, "HOME": "/tmp", "TMPDIR": "/tmp"}.items():
        sandbox_env += ["--setenv", key, value]
    private = ["--proc", "/proc", "--dev", "/dev",
               "--size", str(tmpfs_mb << 20), "--tmpfs", "/tmp",
               "--size", str(1 << 20), "--tmpfs", "/dev/shm", "--chdir", "/tmp"]
    if "--size" not in _bwrap_features(bwrap_path):
        private = [a for a in private if a != "--size" and not a.isdigit()]
    return [bwrap_path] + bwrap_args + private + sandbox_env + ["--"]
