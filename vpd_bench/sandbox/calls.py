"""What goes into a sandboxed run (:class:`Call`) and what comes out (:class:`Execution`)."""
from __future__ import annotations

import marshal
import signal
from dataclasses import dataclass, field
from typing import Any

MODES = ("call", "stdio", "expr")


def _marshal(value, what: str) -> bytes:
    try:
        return marshal.dumps(value, 4)
    except ValueError:
        raise ValueError(f"{what} must be plain data (None, bool, int, float, complex, str, bytes and "
                         f"list / tuple / dict / set of those): {value!r:.200}") from None


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
    killed: str | None              # timeout | result_limit | protocol | None
    stdout: str
    stderr: str
    wall_s: float
    protocol_error: str | None = None   # what the child sent that the runner never writes

    @property
    def crashed(self) -> bool:
        return self.load_status == "crash" or any(o.status == "not_run" for o in self.outcomes)

    def exit_description(self) -> str:
        if self.killed == "protocol":
            return f"it broke the harness's result channel: {self.protocol_error or 'a malformed record'}"
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
