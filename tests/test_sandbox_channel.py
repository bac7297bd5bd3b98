"""The verdict channel, parent side, on its own: records in the runner's order, timed on the
parent's clock (a fake one here, so nothing waits), and everything else a protocol error."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vpd_bench.sandbox import ResultChannel
from vpd_bench.sandbox.channel import OVERRUN_DETAIL, SKIPPED_DETAIL

from test_sandbox import small_limits  # noqa: E402

LIMITS = replace(small_limits(), case_timeout_s=1.0, startup_grace_s=2.0)
ERROR = {"type": "ValueError", "message": "no", "line": 3, "text": "raise ValueError('no')", "timeout": False}


def rec(**fields) -> bytes:
    return (json.dumps(fields) + "\n").encode()


def honest(n: int, values=None) -> list[bytes]:
    out = [rec(ready=1), rec(load="ok")]
    for i in range(n):
        out += [rec(start=i), rec(i=i, v=(values or list(range(n)))[i], t=0.01)]
    return out + [rec(done=1)]


def play(lines, n=3, mode="call", step=0.01, at=None):
    """Feed ``lines`` one per ``step`` seconds (or at the given times) from t0 = 100."""
    ch = ResultChannel(n, mode, LIMITS, 100.0)
    for k, line in enumerate(lines):
        ch.feed(line, at[k] if at else 100.0 + step * (k + 1))
    return ch


def test_an_honest_transcript_gives_every_value():
    ch = play(honest(3))
    assert ch.state == "done" and not ch.stop_now
    load, _, outcomes = ch.finish(None, 0)
    assert load == "ok" and [o.value for o in outcomes] == [0, 1, 2]
    assert all(o.status == "ok" for o in outcomes)


def test_records_may_arrive_in_any_chunks():
    stream = b"".join(honest(3))
    ch = ResultChannel(3, "call", LIMITS, 100.0)
    for k in range(0, len(stream), 3):
        ch.feed(stream[k:k + 3], 100.5)
    assert ch.state == "done" and [o.value for o in ch.finish(None, 0)[2]] == [0, 1, 2]


def test_errors_timeouts_and_skips_are_the_runners_words():
    lines = [rec(ready=1), rec(load="ok"), rec(start=0), rec(i=0, error=ERROR, t=0.1),
             rec(start=1), rec(i=1, error={**ERROR, "timeout": True}, t=1.0),
             rec(i=2, skipped="an earlier call hit the time limit"), rec(done=1)]
    _, _, outcomes = play(lines).finish(None, 0)
    assert [o.status for o in outcomes] == ["exception", "timeout", "not_run"]
    assert outcomes[0].error["line"] == 3 and outcomes[2].detail == SKIPPED_DETAIL


def test_a_result_later_than_the_limit_is_a_timeout_whatever_it_holds():
    """The parent's clock: call 1 ends 1.3 s after call 0 did (limit 1 s)."""
    lines = honest(3)
    times = [100.1, 100.2, 100.3, 100.4, 100.5, 101.8]
    ch = play(lines[:6], at=times)
    assert ch.stop_now and ch.killed_reason == "timeout"
    _, _, outcomes = ch.finish("timeout", None)
    assert outcomes[0].status == "ok"
    assert outcomes[1].status == "timeout" and outcomes[1].detail == OVERRUN_DETAIL
    assert outcomes[2].status == "not_run"


def test_start_records_do_not_move_the_deadline():
    ch = play(honest(3)[:3], at=[100.1, 100.2, 100.3])
    first = ch.deadline()
    assert first == pytest.approx(100.2 + LIMITS.case_timeout_s + LIMITS.kill_grace_s)
    ch.feed(rec(start=0), 100.9)             # a second start: a protocol error, and no extension
    assert ch.stop_now and ch.killed_reason == "protocol"


def test_a_late_load_is_a_load_timeout():
    ch = play([rec(ready=1), rec(load="ok")], at=[100.1, 101.5])
    assert ch.stop_now
    load, _, outcomes = ch.finish("timeout", None)
    assert load == "timeout" and all(o.status == "not_run" for o in outcomes)


def test_startup_gets_its_grace_then_each_step_its_limit():
    ch = ResultChannel(1, "call", LIMITS, 100.0)
    assert ch.deadline() == pytest.approx(100.0 + LIMITS.startup_grace_s + LIMITS.case_timeout_s)
    ch.feed(rec(ready=1), 100.5)
    assert ch.deadline() == pytest.approx(100.5 + LIMITS.case_timeout_s + LIMITS.kill_grace_s)


@pytest.mark.parametrize("stray", [
    rec(i=0, v=4, t=0.0),                       # a result before its start
    rec(i=5, v=4, t=0.0),                       # another call's record
    rec(i=-1, v=4, t=0.0), rec(i="0", v=4, t=0.0), rec(i=True, v=4, t=0.0), rec(i=0.0, v=4, t=0.0),
    rec(start=1), rec(start=0, extra=1), rec(done=1), rec(ready=1), rec(load="ok"),
    rec(keepalive=1), b"{}\n", b"\n", b"garbage\n", b"[1,2]\n", b"\xff\xfe\n",
])
def test_anything_out_of_order_or_unknown_is_a_protocol_error(stray):
    lines = honest(3)
    ch = play(lines[:2] + [stray] + lines[2:])
    assert ch.stop_now and ch.killed_reason == "protocol" and ch.protocol_error
    load, _, outcomes = ch.finish("protocol", None)
    assert load == "ok" and all(o.status == "not_run" for o in outcomes)


@pytest.mark.parametrize("bad", [
    {"i": 0, "v": {"$complex": []}, "t": 0.0},                    # the forged record of the issue
    {"i": 0, "v": 4},                                              # no time
    {"i": 0, "v": 4, "t": -1.0}, {"i": 0, "v": 4, "t": "0.1"},
    {"i": 0, "v": 4, "t": 0.0, "truncated": False},                # a stdio field in a call run
    {"i": 0, "error": {"type": "E"}, "t": 0.0},
    {"i": 0, "error": {**ERROR, "message": "m" * 501}, "t": 0.0},
    {"i": 0, "error": {**ERROR, "timeout": 1}, "t": 0.0},
    {"i": 0, "error": {**ERROR, "line": "3"}, "t": 0.0},
    {"i": 0, "unsupported": ["x"], "t": 0.0}, {"i": 0, "too_large": -5, "t": 0.0},
    {"i": 0, "skipped": "x"},                                       # skipped after its start
    {"i": 0, "v": 4, "error": ERROR, "t": 0.0},
])
def test_malformed_results_are_protocol_errors(bad):
    lines = honest(3)
    ch = play(lines[:3] + [rec(**bad)])
    assert ch.killed_reason == "protocol", ch.state


def test_stdio_values_are_strings_with_a_truncation_flag():
    lines = [rec(ready=1), rec(load="ok"), rec(start=0), rec(i=0, v="3\n", t=0.01, truncated=False), rec(done=1)]
    ch = play(lines, n=1, mode="stdio")
    assert ch.finish(None, 0)[2][0].value == "3\n"
    lines[3] = rec(i=0, v={"$tuple": []}, t=0.01, truncated=False)
    assert play(lines, n=1, mode="stdio").killed_reason == "protocol"


def test_a_record_that_never_ends_is_cut_at_the_cap():
    ch = play(honest(1)[:3], n=1)
    chunk = b"x" * (1 << 16)
    for _ in range(ch.wire.max_record_bytes // len(chunk) + 1):
        ch.feed(chunk, 100.5)
    assert ch.killed_reason == "protocol" and "bytes" in ch.protocol_error
    assert len(ch._buf) == 0


def test_an_unterminated_last_record_is_dropped_not_trusted():
    lines = honest(2)
    ch = play(lines[:3] + [lines[3][:-1]], n=2)       # the result of call 0 without its newline
    load, _, outcomes = ch.finish(None, 0)
    assert load == "ok" and [o.status for o in outcomes] == ["not_run", "not_run"]


def test_records_after_done_are_not_read():
    ch = play(honest(2, values=[1, 2]) + [rec(i=0, v=99, t=0.0), b"garbage\n"], n=2)
    assert ch.state == "done" and ch.protocol_error is None
    assert [o.value for o in ch.finish(None, 0)[2]] == [1, 2]


def test_a_load_failure_ends_the_transcript():
    err = {**ERROR, "type": "SyntaxError"}
    ch = play([rec(ready=1), rec(load="syntax", error=err), rec(load="ok")])
    load, error, outcomes = ch.finish(None, 0)
    assert load == "syntax" and error["type"] == "SyntaxError" and "timeout" not in error
    assert all(o.detail == "the program did not load" for o in outcomes)


def test_the_decoder_never_raises_into_the_parent(monkeypatch):
    from vpd_bench.sandbox import channel as channel_module

    def explode(*_):
        raise IndexError("a decoder bug")
    monkeypatch.setattr(channel_module, "decode_value", explode)
    ch = play(honest(1)[:4], n=1)
    assert ch.killed_reason == "protocol" and "IndexError" in ch.protocol_error
