"""The interpreter that runs inside the sandbox: which one, and where its files are."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ..errors import UserError

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
