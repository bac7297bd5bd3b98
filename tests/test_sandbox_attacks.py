"""Hostile children against the verdict channel, in the real sandbox (issue 14, section 1).

The candidate shares its process with the runner, so it can write anything on the result pipe
(its file descriptor is ``sys.argv[1]``), cancel the runner's alarm, or take the pipe over. Each
attack must score 0, never raise in the parent, never cost another candidate its verdict, and
finish in seconds with the parent's memory bounded.

The first four are the attacks of the issue; the rest are new ones aimed at the decoder and the
watchdog.
"""
from __future__ import annotations

import time
import tracemalloc
import warnings

import pytest

from vpd_bench.sandbox import Call, Sandbox, Test, evaluate

from test_sandbox import (SQUARES, bwrap, bwrap_or_skip_factory, fallback, no_process_left_behind,  # noqa: F401
                          small_limits)

# the candidate's toolkit: the result pipe, and a writer that does not care about partial writes
PRELUDE = '''
import os, signal, sys, time
FD = int(sys.argv[1])
def w(data):
    data = data.encode() if isinstance(data, str) else data
    while data:
        data = data[os.write(FD, data):]
'''


def run_attack(box, body: str, tests=SQUARES, mode: str = "call"):
    """(evaluation, wall seconds, peak bytes traced in this process) of one hostile program."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        ev = evaluate(box, PRELUDE + body, tests, mode=mode)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return ev, time.perf_counter() - t0, peak


def assert_scores_zero(ev, *, status=None):
    assert ev.passed == 0 and ev.status != "pass", (ev.status, [r.status for r in ev.results])
    if status:
        assert ev.status == status, (ev.status, ev.execution.protocol_error)


def assert_protocol_error(ev):
    assert_scores_zero(ev, status="error")
    assert ev.execution.killed == "protocol" and ev.execution.protocol_error
    assert "result channel" in ev.execution.exit_description()


@pytest.fixture(params=["bwrap", "subprocess"])
def box(request, bwrap_or_skip_factory):  # noqa: F811
    return bwrap_or_skip_factory(request.param)


# ------------------------------------------------------------------------------------------
# the four attacks of the issue
# ------------------------------------------------------------------------------------------

def test_keepalive_records_do_not_extend_the_time_limit(box):
    """Issue: cancel the alarm, write a record every second, take 3x the limit, return the right
    value. The parent's clock decides: the stray record stops the run at once."""
    for record in ('{"start":0}', '{"keepalive":1}', '{}'):
        ev, wall, _ = run_attack(box, f'''
def f(x):
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    end = time.time() + 3 * {box.limits.case_timeout_s}
    while time.time() < end:
        w({record!r} + "\\n")
        time.sleep(0.3)
    return x * x
''')
        assert_protocol_error(ev)
        assert wall < box.limits.case_timeout_s + 1.5


def test_a_call_over_its_limit_is_a_timeout_even_when_it_returns_the_right_value(box):
    """Issue: a test that overruns its limit is a timeout. No alarm and no records: the value
    arrives 0.3 s after the limit, before the kill, and still does not count."""
    ev, wall, _ = run_attack(box, f'''
def f(x):
    signal.setitimer(signal.ITIMER_REAL, 0)
    time.sleep({box.limits.case_timeout_s} + 0.3)
    return x * x
''')
    assert_scores_zero(ev, status="timeout")
    assert ev.results[0].status == "timeout" and ev.results[1].status == "not_run"
    assert wall < box.limits.case_timeout_s + 1.5


def test_a_silent_overrun_is_killed_by_the_parent(box):
    ev, wall, _ = run_attack(box, '''
def f(x):
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(30)
    return x * x
''')
    assert_scores_zero(ev, status="timeout")
    assert ev.results[0].status == "timeout"
    assert wall < box.limits.case_timeout_s + box.limits.kill_grace_s + 1.0


def test_a_forged_undecodable_record_is_the_candidates_error(box):
    """Issue: ``{"i":0,"v":{"$complex":[]}}`` raised IndexError out of the decoder."""
    ev, _, _ = run_attack(box, '''
def f(x):
    w('{"i":0,"v":{"$complex":[]},"t":0.0}\\n')
    return x * x
''')
    assert_protocol_error(ev)
    assert "complex" in ev.execution.protocol_error


def test_a_forged_record_costs_no_other_candidate_its_verdict():
    """Issue: the IndexError went through verify_batch and lost all 8 verdicts of the batch."""
    from vpd_bench.tasks.code import CodeTask

    from test_code_task import fence, make_cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = CodeTask(make_cfg(**{"sandbox.case_timeout_s": 1.0, "sandbox.workers": 2, "max_problems": 4}))
        problem = task.all_problems()["HumanEval/0"]
        entry = problem.answer.entry_point
        forged = fence(PRELUDE + f'def {entry}(*a):\n    w(\'{{"i":0,"v":{{"$complex":[]}},"t":0.0}}\\n\')\n')
        responses = [problem.reference] * 7 + [forged]
        verdicts = task.verify_batch([problem] * 8, responses, split="eval")
    assert [v.reward for v in verdicts] == [1.0] * 7 + [0.0]
    assert verdicts[7].status == "error" and "result channel" in verdicts[7].feedback


@pytest.mark.parametrize("payload", [
    "[' + ','.join(str(M * k) for k in range(1, 30001)) + ']",                        # ints
    "[' + ','.join('{\"$tuple\":[%d]}' % (M * k) for k in range(1, 10001)) + ']",      # tuples of them
])
def test_colliding_hashes_cost_the_parent_nothing(bwrap, payload):
    """Issue: a $set of ints of one hash value kept the parent busy for 455 s."""
    ev, wall, peak = run_attack(bwrap, f'''
M = (1 << 61) - 1
def f(x):
    w('{{"i":0,"v":{{"$set":{payload}}},"t":0.0}}\\n')
    return x * x
''')
    assert_protocol_error(ev)
    assert "hash" in ev.execution.protocol_error
    assert wall < 3 and peak < 12 << 20


def test_a_huge_record_of_empty_dicts_is_refused_unparsed(bwrap):
    """Issue: one 8 MB record of empty dicts took the parent from 32 MB to 258 MB."""
    ev, wall, peak = run_attack(bwrap, '''
def f(x):
    w('{"i":0,"v":[' + ','.join(['{}'] * 2800000) + '],"t":0.0}\\n')
    return x * x
''')
    assert_protocol_error(ev)
    assert wall < 3 and peak < 12 << 20
    # within the byte caps (1 MB), the container cap refuses it before a dict is built
    ev, wall, peak = run_attack(bwrap, '''
def f(x):
    w('{"i":0,"v":[' + ','.join(['{}'] * 330000) + '],"t":0.0}\\n')
    return x * x
''')
    assert_protocol_error(ev)
    assert "containers" in ev.execution.protocol_error and peak < 8 << 20


# ------------------------------------------------------------------------------------------
# new attacks on the decoder
# ------------------------------------------------------------------------------------------

NEW_DECODER_ATTACKS = {
    # nesting: 200,000 levels of lists, and a tagged value deeper than the runner ever sends
    "deep_lists": "w('{\"i\":0,\"v\":' + '[' * 200000 + ']' * 200000 + ',\"t\":0}\\n')",
    "deep_tuples": "w('{\"i\":0,\"v\":' + '{\"$tuple\":[' * 150 + ']}' * 150 + ',\"t\":0}\\n')",
    # huge numbers and strings: a million-digit int (as JSON and tagged), a 3 MB string
    "huge_int": "w('{\"i\":0,\"v\":' + '9' * 1000000 + ',\"t\":0}\\n')",
    "huge_tagged_int": "w('{\"i\":0,\"v\":{\"$int\":\"' + '9' * 1000000 + '\"},\"t\":0}\\n')",
    "huge_string": "w('{\"i\":0,\"v\":\"' + 'x' * 3000000 + '\",\"t\":0}\\n')",
    # NaN / infinity tricks the runner never writes
    "bare_nan": "w('{\"i\":0,\"v\":NaN,\"t\":0}\\n')",
    "overflow_float": "w('{\"i\":0,\"v\":1e999,\"t\":0}\\n')",
    "infinity_tag": "w('{\"i\":0,\"v\":{\"$float\":\"Infinity\"},\"t\":0}\\n')",
    "nan_time": "w('{\"i\":0,\"v\":4,\"t\":NaN}\\n')",
    # equal elements, unhashable keys, a float that is a tuple, bytes that are not hex
    "duplicate_set": "w('{\"i\":0,\"v\":{\"$set\":[' + ','.join(['1'] * 50000) + ']},\"t\":0}\\n')",
    "unhashable_key": "w('{\"i\":0,\"v\":{\"$dict\":[[[1],4]]},\"t\":0}\\n')",
    "bad_bytes": "w('{\"i\":0,\"v\":{\"$bytes\":\"zz\"},\"t\":0}\\n')",
    # not UTF-8, not JSON, not an object
    "binary": "w(bytes(range(256)) + b'\\n')",
    "json_list": "w('[0, 4]\\n')",
}


@pytest.mark.parametrize("name", sorted(NEW_DECODER_ATTACKS))
def test_new_decoder_attacks_score_zero(bwrap, name):
    ev, wall, peak = run_attack(bwrap, f"def f(x):\n    {NEW_DECODER_ATTACKS[name]}\n    return x * x\n")
    assert_protocol_error(ev)
    assert wall < 3 and peak < 16 << 20


def test_records_for_another_call_or_candidate_are_refused(box):
    """Records for a call not yet started, for an index out of range, or written at import
    (before the runner asked for anything): all the candidate's error."""
    for when, record in (("call", '{"i":2,"v":1,"t":0}'), ("call", '{"i":99,"v":1,"t":0}'),
                         ("call", '{"i":-1,"v":1,"t":0}'), ("import", '{"i":0,"v":4,"t":0}'),
                         ("import", '{"start":0}')):
        if when == "call":
            body = f"def f(x):\n    w({record!r} + '\\n')\n    return x * x\n"
        else:
            body = f"w({record!r} + '\\n')\ndef f(x):\n    return x * x\n"
        ev, _, _ = run_attack(box, body)
        assert_protocol_error(ev)


def test_partial_and_unterminated_records_never_count(box):
    """A record cut short and an endless one: never a value, never a hang."""
    ev, _, _ = run_attack(box, '''
def f(x):
    w('{"i":0,"v":' + str(x * x))
    os._exit(0)
''')
    assert_scores_zero(ev, status="error")
    ev, wall, peak = run_attack(box, '''
def f(x):
    chunk = '9' * 65536
    while True:
        w(chunk)
''')
    assert_protocol_error(ev)
    assert wall < 3 and peak < 16 << 20


def test_a_flood_of_records_is_stopped_at_the_first(box):
    for record in ('{"ready":1}', '{"start":0}', '{"i":0,"v":4,"t":0}', '{"done":1}'):
        ev, wall, peak = run_attack(box, f'''
def f(x):
    line = ({record!r} + "\\n") * 4096
    while True:
        w(line)
''')
        assert_protocol_error(ev)
        assert wall < 3 and peak < 4 << 20


def test_a_full_takeover_of_the_pipe_is_still_timed_and_judged(box):
    """The candidate silences the runner (its pipe now leads to /dev/null) and writes a perfect
    transcript itself. Wrong values are judged as wrong; right values that arrive too late
    are timeouts."""
    takeover = '''
MINE = os.dup(FD)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, FD)
def say(text):
    os.write(MINE, (text + "\\n").encode())
say('{"load":"ok"}')
'''
    ev, _, _ = run_attack(box, takeover + '''
for i, v in enumerate([4, 10, 2]):
    say('{"start":%d}' % i)
    say('{"i":%d,"v":%d,"t":0.0}' % (i, v))
say('{"done":1}')
time.sleep(5)
def f(x):
    return 0
''')
    assert ev.status == "fail" and ev.passed == 1                           # reward 0
    assert [r.got for r in ev.results] == [4, 10, 2]                         # its claims, judged here
    ev, wall, _ = run_attack(box, takeover + f'''
signal.setitimer(signal.ITIMER_REAL, 0)
for i, v in enumerate([4, 9, 1]):
    say('{{"start":%d}}' % i)
    time.sleep({box.limits.case_timeout_s} + 0.4)
    say('{{"i":%d,"v":%d,"t":0.0}}' % (i, v))
def f(x):
    return 0
''')
    assert_scores_zero(ev, status="timeout")
    assert wall < 2 * box.limits.case_timeout_s + 2


def test_records_after_the_verdict_change_nothing(box):
    """A grandchild that outlives the runner writes a perfect transcript after ``done``."""
    ev, wall, _ = run_attack(box, '''
if os.fork() == 0:
    time.sleep(0.5)
    for i, v in enumerate([4, 9, 1]):
        w('{"start":%d}\\n{"i":%d,"v":%d,"t":0.0}\\n' % (i, i, v))
    w('{"done":1}\\n')
    os._exit(0)
def f(x):
    return x + x
''')
    assert ev.status == "fail" and [r.got for r in ev.results] == [4, 6, -2] and ev.passed == 1
    assert wall < 3


def test_closing_or_redirecting_the_pipe_scores_zero(box):
    for setup in ("os.close(FD)",                                           # runner cannot report
                  "os.close(FD); os.pipe()",                               # the number reopened
                  "os.dup2(1, FD)",                                        # reports go to stdout
                  "os.dup2(FD, 1); print('{\"i\":0,\"v\":%d,\"t\":0}' % (x * x), flush=True)"):
        # (the last prints its forged records on the pipe; its own values are wrong)
        ev, wall, _ = run_attack(box, f"def f(x):\n    {setup}\n    return x + x\n")
        assert_scores_zero(ev, status="error")
        assert wall < 3


def test_a_forged_load_then_a_long_import_is_a_timeout(box):
    """Forge ``load ok`` at import to skip the load limit, then keep importing."""
    ev, wall, _ = run_attack(box, '''
signal.setitimer(signal.ITIMER_REAL, 0)
w('{"load":"ok"}\\n')
time.sleep(30)
def f(x):
    return x * x
''')
    assert_scores_zero(ev)
    assert ev.status in ("timeout", "error")
    assert wall < 2 * box.limits.case_timeout_s + 2


def test_stdio_runs_hold_strings_only(bwrap):
    tests = [Test([Call(stdin="2\n")], "stdout", expected="4")]
    ev, _, _ = run_attack(bwrap, "w('{\"i\":0,\"v\":[4],\"t\":0,\"truncated\":false}\\n')\nprint(4)\n",
                          tests, mode="stdio")
    assert_protocol_error(ev)


def test_honest_values_at_the_caps_are_too_large_not_protocol_errors(bwrap):
    """The runner refuses what the parent would refuse, so an honest program is never blamed
    for the channel: a value over the byte cap or the container cap is 'too large to check'."""
    for program in ("def f(x):\n    return 'x' * (2 << 20)\n",
                    "def f(x):\n    return [[]] * 100000\n"):
        ev = evaluate(bwrap, program, SQUARES[:1])
        assert ev.status == "fail" and ev.execution.killed is None
        assert "too large" in ev.results[0].detail


def test_the_harness_still_works_after_every_attack():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        box = Sandbox(limits=small_limits(), backend="auto", workers=2)
        assert evaluate(box, "def f(x):\n    return x * x\n", SQUARES).status == "pass"
