"""`vpd-bench rescore`: a run's saved held-out samples judged again by the current verifier."""
from __future__ import annotations

import csv
import json

import pytest

from vpd_bench.cli import main
from vpd_bench.config import compose, to_yaml
from vpd_bench.errors import UserError
from vpd_bench.evaluation.rescore import rescore, rescore_run
from vpd_bench.tasks import build_task
from vpd_bench.tasks.answers import answers_equal, to_number


@pytest.fixture(scope="module")
def math_run(tmp_path_factory):
    """A run folder on the math task whose saved samples hold one restated question that the old
    verifier passed, one right answer, one wrong answer and a greedy right answer."""
    cfg = compose(task="math", model="tiny-random", overrides=["eval.num_problems=4"])
    task = build_task(cfg)
    problems = task.eval_problems()[:2]
    run = tmp_path_factory.mktemp("runs") / "math" / "grpo" / "none" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))        # as a run writes it
    a, b = problems
    assert to_number(a.answer) is not None and answers_equal(a.answer, f"{a.answer} + 0", "string") is False
    rows = [
        {"step": 0, "problem_id": a.id, "sample": 0, "response": f"\\boxed{{{a.answer}}}", "reward": 1.0},
        {"step": 0, "problem_id": a.id, "sample": 1, "response": "\\boxed{123456789}", "reward": 0.0},
        {"step": 0, "problem_id": b.id, "sample": 0, "response": "\\boxed{123456789}", "reward": 0.0},
        {"step": 0, "problem_id": b.id, "sample": 1, "response": "\\boxed{123456789}", "reward": 0.0},
        {"step": 0, "problem_id": a.id, "sample": "greedy", "response": f"\\boxed{{{a.answer}}}", "reward": 1.0},
        # step 5: the restated question, recorded as a pass by an older verifier
        {"step": 5, "problem_id": a.id, "sample": 0, "response": f"The final answer is {a.answer} + 0.",
         "reward": 1.0},
        {"step": 5, "problem_id": a.id, "sample": 1, "response": f"\\boxed{{{a.answer}}}", "reward": 1.0},
        # a resumed run's later row for the same step, problem and sample replaces the earlier one
        {"step": 5, "problem_id": b.id, "sample": 0, "response": "\\boxed{123456789}", "reward": 1.0},
        {"step": 5, "problem_id": b.id, "sample": 0, "response": f"\\boxed{{{b.answer}}}", "reward": 1.0},
        {"step": 5, "problem_id": b.id, "sample": 1, "response": "\\boxed{123456789}", "reward": 0.0},
    ]
    (run / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, task


def test_rescore_rejudges_every_saved_response(math_run):
    run, task = math_run
    rows = {r["step"]: r for r in rescore_run(run, task)}
    assert rows[0]["problems"] == 2
    assert rows[0]["pass@1_recorded"] == rows[0]["pass@1_rejudged"] == pytest.approx(1 / 4)
    assert rows[0]["greedy_recorded"] == rows[0]["greedy_rejudged"] == 1.0
    assert (rows[0]["pass_to_fail"], rows[0]["fail_to_pass"]) == (0, 0)
    # the restated question (gold is a number) loses its pass; the replaced row does not count
    assert rows[5]["pass@1_recorded"] == pytest.approx(3 / 4)
    assert rows[5]["pass@1_rejudged"] == pytest.approx(2 / 4)
    assert (rows[5]["pass_to_fail"], rows[5]["fail_to_pass"]) == (1, 0)
    assert rows[5]["greedy_recorded"] is None


def test_rescore_command_writes_a_csv_and_reads_folders_above_runs(math_run, tmp_path, capsys):
    run, _ = math_run
    out = tmp_path / "rescored.csv"
    assert main(["rescore", str(run.parents[3]), "--out", str(out)]) == 0
    assert "1 saved response(s) change verdict" in capsys.readouterr().out
    table = list(csv.DictReader(out.open()))
    assert [(r["step"], r["pass@1_rejudged"]) for r in table] == [("0", "0.2500"), ("5", "0.5000")]


def test_rescore_names_the_file_and_line_of_a_bad_row(math_run, tmp_path):
    run, _ = math_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text((run / "config.yaml").read_text())
    lines = (run / "eval_samples.jsonl").read_text().splitlines()
    (bad / "eval_samples.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(UserError, match=r"eval_samples.jsonl, line 2"):
        rescore([str(bad)])
    (bad / "eval_samples.jsonl").write_text(lines[0].replace('"problem_id": "', '"problem_id": "nope/') + "\n")
    with pytest.raises(UserError, match=r"line 1: problem 'nope/.*' is not in the task"):
        rescore([str(bad)])
    (bad / "eval_samples.jsonl").write_text(lines[0] + "\n")
    (bad / "config.yaml").write_text("task:\n  name: math\n")
    with pytest.raises(UserError, match=r"config.yaml: cannot rebuild the run's task"):
        rescore([str(bad)])
    with pytest.raises(UserError, match="no run folders"):
        rescore([str(tmp_path / "bad" / "config.yaml")])
