"""Run untrusted Python programs on test inputs, and judge the outputs where the program can't reach.

Two layers:

* :class:`Sandbox` runs one program on a list of :class:`Call` s (function calls, stdin/stdout
  runs, or trusted expressions) in a fresh process and returns what each call produced
  (:class:`Execution`). With bubblewrap (``bwrap``) the process gets new user, pid, network,
  ipc, uts and mount namespaces, sees read-only binds of only what the interpreter needs and a
  private ``/tmp``; without it, a plain subprocess with the same resource limits runs instead,
  after a loud one-time warning that files and network are then *not* isolated.
* :func:`evaluate` judges an execution against :class:`Test` s in *this* (trusted) process.

The parts, each readable (and tested) on its own:

==================  ===========================================================================
``limits.py``       :class:`SandboxLimits` (``task.sandbox``), and the parent-clock margins
``wire.py``         the wire protocol: the runner's value encoder, the record grammar, and the
                    bounded decoder (:func:`decode_value`, :class:`ProtocolError`)
``runner.py``       the program that runs inside the sandbox next to the candidate's code
``channel.py``      the verdict channel, parent side: records in order, timed on the parent's clock
``process.py``      one process: feed the job, read the pipes under the deadlines, kill and reap
``bwrap.py``        the bubblewrap backend (binds, namespaces)
``fallback.py``     the rlimit-subprocess fallback (private directory, dedicated uid, the warning)
``interpreter.py``  which interpreter runs inside, and where its files are
``box.py``          :class:`Sandbox`: backend choice and self-check, :meth:`~Sandbox.run`
``calls.py``        :class:`Call` in, :class:`Execution` / :class:`CallOutcome` out
``judge.py``        :class:`Test`, :func:`evaluate` and the safe judge expressions
==================  ===========================================================================

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
  or environment);
* time is the parent's: each step (loading, each call) must end within ``case_timeout_s`` of the
  previous one on the parent's clock, whatever the child writes meanwhile (a late result is a
  timeout; silence past the limit is killed);
* the channel itself is hostile ground: every record is capped (bytes, characters, containers,
  depth, digits, hash collisions) before and while it is decoded, must fit the runner's grammar
  in order, and anything else is a protocol error -- the candidate's ``error``, never an
  exception in the parent and never another candidate's loss.

See ``docs/code-task.md`` for the full threat model.
"""
from __future__ import annotations

from .box import BACKENDS, Sandbox
from .bwrap import _bwrap_arguments, _bwrap_features
from .calls import MODES, Call, CallOutcome, Execution
from .channel import ResultChannel
from .fallback import kill_uid, reset_warning_for_tests
from .interpreter import default_python
from .judge import (PROGRAM_STATUSES, TEST_STATUSES, Evaluation, PendingRef, Test, TestResult, approx_equal,
                    eval_safe, evaluate, judge_value, safe_expression, stdout_matches)
from .limits import SandboxLimits
from .runner import RUNNER_MARKER, RUNNER_SOURCE
from .wire import DEFAULT_WIRE, ProtocolError, WireLimits, decode_value, parse_record

__all__ = [
    "BACKENDS", "MODES", "PROGRAM_STATUSES", "TEST_STATUSES", "RUNNER_MARKER", "RUNNER_SOURCE",
    "Sandbox", "SandboxLimits", "Call", "CallOutcome", "Execution", "Test", "TestResult", "Evaluation",
    "PendingRef", "evaluate", "judge_value", "approx_equal", "stdout_matches", "safe_expression", "eval_safe",
    "decode_value", "parse_record", "ProtocolError", "WireLimits", "DEFAULT_WIRE", "ResultChannel",
    "default_python", "kill_uid", "reset_warning_for_tests",
]
