"""Judging, in the trusted parent: :func:`evaluate` runs a program on the calls of its
:class:`Test` s and compares the values that came back with expected values that never enter
the sandbox; judge expressions run here when they are provably harmless, else in a second
sandboxed run of trusted data-set code."""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .calls import Call, Execution
from .limits import SandboxLimits

if TYPE_CHECKING:
    from .box import Sandbox

TEST_STATUSES = ("pass", "fail", "error", "timeout", "not_run")
PROGRAM_STATUSES = ("pass", "fail", "timeout", "error", "format")

class PendingRef:
    """Stands for "the value returned by call ``index`` of this test" inside a judge's env."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = int(index)

    def __repr__(self):
        return f"PendingRef({self.index})"

    def __eq__(self, other):
        return isinstance(other, PendingRef) and other.index == self.index

    def __hash__(self):
        return hash(("PendingRef", self.index))


@dataclass
class Test:
    """One test: the calls it needs and how to judge their values.

    ``kind``:
      * ``equals``      -- ``value == expected`` (one call)
      * ``approx``      -- equal, or numbers within ``atol`` (evalplus-style, one call)
      * ``json_equals`` -- equal after turning tuples into lists (LiveCodeBench functional)
      * ``stdout``      -- captured stdout matches ``expected`` text, whitespace-insensitive
      * ``expr``        -- the boolean ``expr`` over ``_out`` (the calls' values, in order) and
                           ``env`` (plain values; :class:`PendingRef` s stand for call values)
    """
    calls: list[Call]
    kind: str = "equals"
    expected: Any = None
    expr: str | None = None
    env: dict = field(default_factory=dict)
    atol: float = 0.0
    label: str = ""          # the input as shown in feedback, e.g. ``add(1, 2)``
    check: str = ""          # the original assertion, shown for ``expr`` tests
    __test__ = False         # not a pytest class

    def __post_init__(self):
        if self.kind not in ("equals", "approx", "json_equals", "stdout", "expr"):
            raise ValueError(f"unknown test kind {self.kind!r}")


@dataclass
class TestResult:
    __test__ = False
    status: str              # pass | fail | error | timeout | not_run
    got: Any = None
    error: dict | None = None
    detail: str = ""
    seconds: float | None = None
    has_got: bool = False


@dataclass
class Evaluation:
    status: str                          # pass | fail | timeout | error | format
    results: list[TestResult]
    execution: Execution | None
    message: str = ""                    # format / load problems, in words

    @property
    def passed(self) -> int:
        return sum(r.status == "pass" for r in self.results)


# a small, safe expression evaluator for judge expressions over plain data -------------------

_SAFE_FUNCS = {f.__name__: f for f in (abs, all, any, bool, dict, enumerate, float, frozenset, int,
                                       isinstance, len, list, max, min, range, reversed, round, set,
                                       sorted, str, sum, tuple, zip)}
_SAFE_MATH = {name: getattr(math, name) for name in (
    "isclose", "fabs", "sqrt", "floor", "ceil", "isnan", "isinf", "isfinite", "inf", "nan", "pi", "e",
    "log", "log2", "log10", "exp", "fsum", "trunc", "gcd", "hypot")}


class _MathNamespace:
    def __init__(self):
        self.__dict__.update(_SAFE_MATH)


_SAFE_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call,
               ast.Name, ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Subscript, ast.Slice,
               ast.Load, ast.Store, ast.keyword, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp,
               ast.comprehension, ast.Attribute, ast.Starred, ast.operator, ast.unaryop, ast.cmpop,
               ast.boolop, ast.expr_context)


def safe_expression(expr: str, names: Iterable[str]) -> bool:
    """True when ``expr`` uses only plain operators, the whitelisted functions, ``math.<name>``
    and the given ``names`` -- i.e. it can be evaluated here on plain data without risk."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    allowed = set(names) | set(_SAFE_FUNCS) | {"math"}
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            return False
        if isinstance(node, ast.Name) and (node.id.startswith("__") or node.id not in allowed | bound):
            return False
        if isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _SAFE_MATH):
                return False
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                if func.id not in _SAFE_FUNCS:
                    return False
            elif not isinstance(func, ast.Attribute):
                return False
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.LShift)):
            right = node.right
            if not (isinstance(right, ast.Constant) and isinstance(right.value, int) and abs(right.value) <= 64):
                return False
    return True


def eval_safe(expr: str, env: dict) -> Any:
    """Evaluate an expression accepted by :func:`safe_expression` (no builtins but the whitelist)."""
    scope = {"__builtins__": {}, **_SAFE_FUNCS, "math": _MathNamespace(), **env}
    return eval(compile(expr, "<judge>", "eval"), scope)  # noqa: S307 - validated above


def _resolve_refs(value, outs: list):
    if isinstance(value, PendingRef):
        return outs[value.index]
    if isinstance(value, list):
        return [_resolve_refs(v, outs) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve_refs(v, outs) for v in value)
    if isinstance(value, dict):
        return {k: _resolve_refs(v, outs) for k, v in value.items()}
    return value


def _is_float_like(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(i, float) for i in x)
    return False


def approx_equal(out, exp, atol: float) -> bool:
    """evalplus-style comparison: equal, or (for floats) within ``atol`` (1e-6 when 0)."""
    if isinstance(out, bool) or isinstance(exp, bool):
        return type(out) is type(exp) and out == exp
    try:
        if out == exp:
            return True
    except Exception:  # noqa: BLE001 - plain data, but be safe
        return False
    if atol == 0 and _is_float_like(exp):
        atol = 1e-6
    if not atol:
        return False
    if isinstance(exp, (int, float)) and isinstance(out, (int, float)):
        return math.isclose(out, exp, rel_tol=1e-7, abs_tol=atol)
    if isinstance(exp, (list, tuple)) and isinstance(out, (list, tuple)) and len(out) == len(exp):
        return all(approx_equal(o, e, atol) for o, e in zip(out, exp))
    return False


def _tuples_to_lists(x):
    if isinstance(x, (list, tuple)):
        return [_tuples_to_lists(v) for v in x]
    if isinstance(x, dict):
        return {k: _tuples_to_lists(v) for k, v in x.items()}
    return x


def stdout_matches(got: str, expected: str) -> bool:
    """LiveCodeBench-style: lines compared after stripping; numbers within 1e-6 also match."""
    def lines(text):
        rows = [line.strip() for line in str(text).strip().splitlines()]
        return rows
    a, b = lines(got), lines(expected)
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        xs, ys = x.split(), y.split()
        if len(xs) != len(ys):
            return False
        for u, v in zip(xs, ys):
            if u == v:
                continue
            try:
                fu, fv = float(u), float(v)
            except ValueError:
                return False
            if not math.isclose(fu, fv, rel_tol=1e-6, abs_tol=1e-6):
                return False
    return True


def judge_value(test: Test, outs: list) -> bool | None:
    """Judge in this process. None when the test needs the sandboxed judge (see :func:`evaluate`)."""
    if test.kind == "equals":
        return outs[0] == test.expected
    if test.kind == "approx":
        return approx_equal(outs[0], test.expected, test.atol)
    if test.kind == "json_equals":
        return _tuples_to_lists(outs[0]) == test.expected
    if test.kind == "stdout":
        return stdout_matches(outs[0], test.expected)
    env = {k: _resolve_refs(v, outs) for k, v in test.env.items()}
    if not safe_expression(test.expr, list(env) + ["_out"]):
        return None
    env["_out"] = outs
    return bool(eval_safe(test.expr, env))


def evaluate(sandbox: Sandbox, program: str, tests: Sequence[Test], *, mode: str = "call",
             judge_context: str | None = None, limits: SandboxLimits | None = None) -> Evaluation:
    """Run ``program`` on the calls of ``tests`` (one process) and judge each test here.

    Tests whose judge expression is not safe to evaluate here (it calls helper functions of the
    data set) are judged in a second sandboxed run of the trusted ``judge_context`` code, fed only
    the plain values the first run returned."""
    calls: list[Call] = []
    spans = []
    for test in tests:
        spans.append((len(calls), len(calls) + len(test.calls)))
        calls.extend(test.calls)
    execution = sandbox.run(program, calls, mode=mode, limits=limits)
    if execution.load_status == "syntax":
        return Evaluation("format", [TestResult("not_run") for _ in tests], execution,
                          message="syntax error")
    results: list[TestResult] = []
    deferred: list[tuple[int, Test, list]] = []
    for ti, (test, (a, b)) in enumerate(zip(tests, spans)):
        outcomes = execution.outcomes[a:b]
        bad = next((o for o in outcomes if o.status != "ok"), None)
        seconds = sum(o.seconds or 0.0 for o in outcomes)
        if bad is not None:
            status = {"exception": "error", "timeout": "timeout", "unsupported": "fail",
                      "not_run": "not_run"}[bad.status]
            results.append(TestResult(status, error=bad.error, detail=bad.detail, seconds=seconds))
            continue
        outs = [o.value for o in outcomes]
        got = outs[0] if len(outs) == 1 else outs
        try:
            verdict = judge_value(test, outs)
        except Exception as err:  # noqa: BLE001 - a judge expression failing on the values is a fail
            verdict = False
            results.append(TestResult("fail", got=got, has_got=True, seconds=seconds,
                                      detail=f"the check raised {type(err).__name__}"))
            continue
        if verdict is None:
            deferred.append((ti, test, outs))
            results.append(TestResult("fail", got=got, has_got=True, seconds=seconds))
            continue
        results.append(TestResult("pass" if verdict else "fail", got=got, has_got=True, seconds=seconds))
    if deferred:
        _judge_in_sandbox(sandbox, deferred, results, judge_context or "")
    return Evaluation(_program_status(execution, results), results, execution)


def _judge_in_sandbox(sandbox: Sandbox, deferred, results, context: str) -> None:
    calls = []
    for _, test, outs in deferred:
        env = {k: _resolve_refs(v, outs) for k, v in test.env.items()}
        env["_out"] = outs
        calls.append(Call(expr=f"bool({test.expr})", env=env))
    limits = replace(sandbox.limits, timeout_s=max(sandbox.limits.timeout_s, 30.0))
    ex = sandbox.run(context, calls, mode="expr", limits=limits)
    for (ti, _, _), outcome in zip(deferred, ex.outcomes):
        if outcome.status == "ok":
            results[ti].status = "pass" if outcome.value is True else "fail"
        else:
            results[ti].status = "fail"
            results[ti].detail = "the check could not be evaluated"


def _program_status(execution: Execution, results: list[TestResult]) -> str:
    if execution.killed == "protocol":          # it wrote on the result channel: never a pass
        return "error"
    if execution.load_status in ("exception", "crash"):
        return "error"
    if execution.load_status == "timeout":
        return "timeout"
    statuses = {r.status for r in results}
    if statuses <= {"pass"}:
        return "pass"
    if "error" in statuses:
        return "error"
    if "timeout" in statuses:
        return "timeout"
    if "not_run" in statuses:
        return "error"
    return "fail"
