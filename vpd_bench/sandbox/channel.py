"""The verdict channel, parent side: the runner's records, read in order, on the parent's clock.

:class:`ResultChannel` is fed the bytes of the result pipe as they arrive. It splits them into
records (each capped before it is split off), decodes each with ``wire.py``, checks it against
the runner's grammar (``ready``, ``load``, then for each call ``start`` and one result, then
``done``; see ``wire.py``) and builds the :class:`CallOutcome` s as it goes.

Time is the parent's. Every step -- loading the program, each call -- must finish within
``case_timeout_s`` of the end of the step before it, measured when the parent reads the records
(plus :attr:`SandboxLimits.late_tolerance_s` for pipe latency). A result that arrives later is a
timeout whatever it holds, and the run stops there; when nothing arrives, :meth:`deadline` tells
the reader loop when to kill the process. Only the records that end a step move the clock on, so
writing records cannot buy time: ``start`` records, repeated or stray records move nothing, and
anything outside the grammar ends the run.

Anything the runner never writes -- a malformed or oversized record, an unknown key, a record out
of order or for another call, a value that does not decode -- is a *protocol error*: the run is
stopped, every call counts as not run (so the candidate's status is ``error``, reward 0) and the
reason becomes part of its feedback. Nothing the child sends raises in the parent.
"""
from __future__ import annotations

import signal

from .calls import CallOutcome
from .limits import SandboxLimits
from .wire import (ProtocolError, WireLimits, decode_value, parse_record, read_error, read_index, read_seconds,
                   read_text)

OVERRUN_DETAIL = "over the time limit (the harness's clock)"
SKIPPED_DETAIL = "skipped: an earlier call hit the time limit"


class ResultChannel:
    """Parses and times the records of one run. Not thread-safe (one per run)."""

    def __init__(self, n_calls: int, mode: str, limits: SandboxLimits, t0: float):
        self.n = n_calls
        self.mode = mode
        self.limits = limits
        self.wire = WireLimits.for_run(limits.max_value_bytes, mode)
        self.t0 = t0
        self.state = "start"            # start -> loading -> calls -> done | broken | overrun
        self.load_status: str | None = None
        self.load_error: dict | None = None
        self.outcomes: list[CallOutcome | None] = [None] * n_calls
        self.next = 0                   # the call whose result is due
        self.started = False            # its start record arrived
        self.skipping = False           # the runner is reporting the calls after a timeout
        self.protocol_error: str | None = None
        self.mark = t0                  # parent clock: when the current step began
        self.finished_at: float | None = None
        self._buf = bytearray()
        self._scanned = 0

    # -- state ------------------------------------------------------------------------------
    @property
    def open(self) -> bool:
        """Still expecting records (the run is neither over nor stopped)."""
        return self.state in ("start", "loading", "calls")

    @property
    def stop_now(self) -> bool:
        """The run must be stopped at once: a protocol error or a step over its time limit."""
        return self.state in ("broken", "overrun")

    @property
    def killed_reason(self) -> str | None:
        return {"broken": "protocol", "overrun": "timeout"}.get(self.state)

    def deadline(self) -> float:
        """Parent-clock time by which the next record must have arrived."""
        lim = self.limits
        if self.state == "start":
            return self.t0 + lim.startup_grace_s + lim.case_timeout_s
        if self.open:
            return self.mark + lim.case_timeout_s + lim.kill_grace_s
        # over: give the process a moment to exit (then it is killed anyway)
        return (self.finished_at if self.finished_at is not None else self.mark) + lim.kill_grace_s

    # -- reading ----------------------------------------------------------------------------
    def feed(self, chunk: bytes, now: float) -> None:
        """Bytes read from the result pipe at parent-clock time ``now``."""
        if not self.open:
            return
        buf = self._buf
        buf += chunk
        pos = 0
        while self.open:
            cut = buf.find(b"\n", max(pos, self._scanned))
            if cut < 0:
                break
            line = bytes(buf[pos:cut])
            pos = cut + 1
            try:
                self._take(parse_record(line, self.wire), now)
            except ProtocolError as err:
                self._break(str(err), now)
            except Exception as err:  # noqa: BLE001 - nothing the child sends may raise here
                self._break(f"an undecodable record ({type(err).__name__})", now)
        if not self.open:
            self._buf = bytearray()
            return
        del buf[:pos]
        self._scanned = len(buf)
        if len(buf) > self.wire.max_record_bytes:
            self._break(f"a record of over {self.wire.max_record_bytes} bytes", now)
            self._buf = bytearray()

    def _break(self, reason: str, now: float) -> None:
        self.protocol_error = reason[:300]
        self.state = "broken"
        self.finished_at = now

    def _finish(self, now: float) -> None:
        self.state = "done"
        self.finished_at = now

    def _late(self, now: float) -> bool:
        return now - self.mark > self.limits.case_timeout_s + self.limits.late_tolerance_s

    def _take(self, rec: dict, now: float) -> None:
        if self.state == "start":
            if rec != {"ready": 1}:
                raise ProtocolError("a record before the runner was ready")
            self.state, self.mark = "loading", now
            return
        if self.state == "loading":
            self._take_load(rec, now)
            return
        # calls
        if "start" in rec:
            if len(rec) != 1 or self.started or self.skipping or self.next >= self.n:
                raise ProtocolError("a start record out of order")
            read_index(rec["start"], self.next)
            self.started = True
            return
        if "done" in rec:
            if rec != {"done": 1}:
                raise ProtocolError("a malformed done record")
            if self.next != self.n or self.started:
                raise ProtocolError(f"done after {self.next} of {self.n} calls")
            self._finish(now)
            return
        if "i" not in rec:
            raise ProtocolError(f"an unknown record ({', '.join(sorted(map(str, rec)))[:60]})")
        if self.next >= self.n:
            raise ProtocolError(f"a record for call {str(rec['i'])[:20]} of {self.n}")
        i = read_index(rec["i"], self.next)
        if "skipped" in rec:
            if set(rec) != {"i", "skipped"} or self.started:
                raise ProtocolError("a malformed skipped record")
            read_text(rec["skipped"], 200)
            self.outcomes[i] = CallOutcome("not_run", detail=SKIPPED_DETAIL)
            self.skipping = True
            self.next += 1
            self.mark = now
            return
        if not self.started or self.skipping:
            raise ProtocolError(f"a result for call {i}, which had not started")
        outcome = self._outcome(rec, now)
        if self._late(now):
            if outcome.status != "timeout":
                outcome = CallOutcome("timeout", seconds=round(now - self.mark, 4), detail=OVERRUN_DETAIL)
            self.outcomes[i] = outcome
            self.state, self.finished_at = "overrun", now
            return
        self.outcomes[i] = outcome
        self.next += 1
        self.started = False
        self.mark = now

    def _take_load(self, rec: dict, now: float) -> None:
        status = rec.get("load")
        if status == "ok" and len(rec) == 1:
            if self._late(now):
                self.load_status = "timeout"
                self.state, self.finished_at = "overrun", now
                return
            self.load_status, self.state, self.mark = "ok", "calls", now
            return
        if status in ("syntax", "exception") and set(rec) == {"load", "error"}:
            err = read_error(rec["error"])
            self.load_status = "timeout" if err["timeout"] or self._late(now) else status
            self.load_error = {k: err[k] for k in ("type", "message", "line", "text")}
            self._finish(now)
            return
        raise ProtocolError("a record before the program loaded" if "load" not in rec
                            else "a malformed load record")

    def _outcome(self, rec: dict, now: float) -> CallOutcome:
        keys = set(rec)
        if "t" not in rec:
            raise ProtocolError("a result without a time")
        # the child's own measure (it excludes pipe latency), never more than the parent's
        seconds = round(min(read_seconds(rec["t"]), now - self.mark), 6)
        if "v" in rec:
            if self.mode == "stdio":
                if keys != {"i", "v", "t", "truncated"} or type(rec["truncated"]) is not bool:
                    raise ProtocolError("a malformed value record")
                value = read_text(rec["v"], self.wire.max_value_chars)
                return CallOutcome("ok", value=value, seconds=seconds, truncated=rec["truncated"])
            if keys != {"i", "v", "t"}:
                raise ProtocolError("a malformed value record")
            try:
                value = decode_value(rec["v"], self.wire)
            except ProtocolError as err:
                raise ProtocolError(f"an undecodable value for call {self.next}: {err}") from None
            except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as err:
                raise ProtocolError(f"an undecodable value for call {self.next} ({type(err).__name__})") from None
            return CallOutcome("ok", value=value, seconds=seconds)
        if "error" in rec and keys == {"i", "error", "t"}:
            err = read_error(rec["error"])
            status = "timeout" if err["timeout"] else "exception"
            return CallOutcome(status, error={k: err[k] for k in ("type", "message", "line", "text")},
                               seconds=seconds)
        if "unsupported" in rec and keys == {"i", "unsupported", "t"}:
            name = read_text(rec["unsupported"], 100)
            return CallOutcome("unsupported", seconds=seconds, detail=f"an object of type {name}")
        if "too_large" in rec and keys == {"i", "too_large", "t"}:
            size = rec["too_large"]
            if type(size) is not int or size < 0:
                raise ProtocolError("a malformed too_large record")
            return CallOutcome("unsupported", seconds=seconds,
                               detail=f"a value too large to check ({size} bytes encoded)")
        raise ProtocolError("a malformed result record")

    # -- the outcome --------------------------------------------------------------------------
    def finish(self, killed: str | None, exit_code: int | None) -> tuple[str, dict | None, list[CallOutcome]]:
        """(load_status, load_error, outcomes) once the process is gone."""
        if self.state == "broken":
            load_status = "ok" if self.load_status == "ok" else "crash"
            outcomes = [CallOutcome("not_run", detail="the program broke the result channel") for _ in range(self.n)]
            return load_status, None, outcomes
        load_status = self.load_status or ("timeout" if killed == "timeout" else "crash")
        final: list[CallOutcome] = []
        for i, outcome in enumerate(self.outcomes):
            if outcome is None:
                if load_status != "ok":
                    outcome = CallOutcome("not_run", detail="the program did not load")
                elif self.state == "overrun" or self.skipping:
                    outcome = CallOutcome("not_run", detail=SKIPPED_DETAIL)
                elif i == self.next and killed == "timeout":
                    outcome = CallOutcome("timeout", seconds=self.limits.case_timeout_s)
                elif i == self.next and self.started and killed is None \
                        and exit_code in (-signal.SIGXCPU, -signal.SIGKILL):
                    outcome = CallOutcome("timeout", seconds=None, detail="CPU time limit")
                else:
                    outcome = CallOutcome("not_run", detail="the program stopped before this call")
            final.append(outcome)
        return load_status, self.load_error, final
