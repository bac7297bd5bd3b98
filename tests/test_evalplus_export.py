"""`vpd-bench eval --export` on the code task writes evalplus samples, and evalplus itself (run
offline against the exported HumanEval+ subset) gives the harness's verdicts on hand-written
solutions: correct, wrong only on the plus inputs, crashing, markdown-fenced, no code at all."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpd_bench.launch.evaluate import export_evalplus
from vpd_bench.tasks.code import CodeTask, evalplus_dataset_rows

from test_code_task import FIXTURES, fence, make_cfg

HAS_CLOSE = '''def has_close_elements(numbers, threshold):
    s = sorted(numbers)
    return any(b - a < threshold for a, b in zip(s, s[1:]))'''
# passes every base input (none is empty) but crashes on the plus input []
HAS_CLOSE_NO_EMPTY = '''def has_close_elements(numbers, threshold):
    s = sorted(numbers)
    assert s, "empty"
    return min(b - a for a, b in zip(s, s[1:])) < threshold'''
TRUNCATE = "def truncate_number(number):\n    return number % 1.0"
# two decimals: 123.456 -> 0.46 fails a base input
TRUNCATE_ROUNDED = "def truncate_number(number):\n    return round(number % 1.0, 2)"
# right on the base inputs 3.5, 1.33, 123.456 (three decimals), wrong on the plus input 999.99999
TRUNCATE_3DP = "def truncate_number(number):\n    return round(number % 1.0, 3)"
CRASH = "def has_close_elements(numbers, threshold):\n    raise RuntimeError('boom')"

RESPONSES = {
    "HumanEval/0": [fence(HAS_CLOSE),                 # correct, markdown-fenced
                    HAS_CLOSE,                        # correct, bare code
                    fence(HAS_CLOSE_NO_EMPTY),        # wrong on a plus input only
                    fence(CRASH),                     # crashes on every input
                    "I do not know."],                # prose: the harness runs it and fails it
    "HumanEval/2": [fence(TRUNCATE), fence(TRUNCATE_3DP), fence(TRUNCATE_ROUNDED)],
}


@pytest.fixture(scope="module")
def task():
    return CodeTask(make_cfg(source="evalplus", evalplus_path=str(FIXTURES / "HumanEvalPlus.jsonl")))


def records_for(problems) -> list[dict]:
    return [{"step": 0, "problem_id": p.id, "sample": j, "response": r}
            for p in problems for j, r in enumerate(RESPONSES[p.id])]


def run_evalplus(samples: Path, dataset_file: Path, cache: Path) -> dict:
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(dataset_file), "XDG_CACHE_HOME": str(cache),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "evalplus.evaluate", "--dataset", "humaneval",
                           "--samples", str(samples), "--parallel", "1", "--i_just_wanna_run"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(samples.with_name(samples.stem + "_eval_results.json").read_text())["eval"]


def test_export_writes_one_sanitised_program_per_sample_and_the_evaluated_subset(task, tmp_path):
    problems = [task.all_problems()["HumanEval/2"]]               # a subset of the release file
    export_evalplus(tmp_path, task.cfg, problems, records_for(problems))
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["HumanEval/2"] * 3
    assert all("```" not in s["solution"] and "def truncate_number" in s["solution"] for s in samples)
    rows = [json.loads(line) for line in (tmp_path / "HumanEvalPlus.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/2"]
    env, _ = evalplus_dataset_rows(task.cfg, problems)
    assert env == "HUMANEVAL_OVERRIDE_PATH"


def test_evalplus_on_the_export_agrees_with_the_harness_sandbox(task, tmp_path):
    problems = list(task.all_problems().values())
    records = records_for(problems)
    export_evalplus(tmp_path, task.cfg, problems, records)
    results = run_evalplus(tmp_path / "samples.jsonl", tmp_path / "HumanEvalPlus.jsonl", tmp_path / "cache")
    by_id = {p.id: p for p in problems}
    ours, theirs = [], []
    for pid, rows in results.items():
        verdicts = [task.verify(by_id[pid], r, split="eval").status == "pass" for r in RESPONSES[pid]]
        ours += [(pid, i, v) for i, v in enumerate(verdicts)]
        theirs += [(pid, i, r["base_status"] == "pass" and r["plus_status"] == "pass") for i, r in enumerate(rows)]
    assert sorted(ours) == sorted(theirs)
    # the hand-written cases do test something: both verdicts occur, and the plus-only error is caught
    assert {v for *_, v in ours} == {True, False}
    plus_only = results["HumanEval/0"][2]
    assert plus_only["base_status"] == "pass" and plus_only["plus_status"] == "fail"
    three_dp = results["HumanEval/2"][1]
    assert three_dp["base_status"] == "pass" and three_dp["plus_status"] == "fail"


def test_evalplus_fails_a_raw_markdown_response_the_harness_extracts(task, tmp_path):
    """The disagreement by design (docs/code-task.md): evalplus runs a sample's text as Python, the
    harness first takes the code out of the markdown fence; the export hands evalplus the extracted
    program, so this only bites samples written some other way."""
    problem = task.all_problems()["HumanEval/2"]
    raw = fence(TRUNCATE)
    assert task.verify(problem, raw, split="eval").status == "pass"
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/2", "solution": raw}) + "\n")
    data = tmp_path / "HumanEvalPlus.jsonl"
    _, rows = evalplus_dataset_rows(task.cfg, [problem])
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_evalplus(samples, data, tmp_path / "cache")["HumanEval/2"][0]
    assert result["base_status"] != "pass"


def test_eval_cli_exports_evalplus_samples_for_the_code_task(tmp_path, capsys):
    from vpd_bench.cli import main
    exp = tmp_path / "exp"
    assert main(["eval", "--model", "tiny-random", "--task", "code", "--export", str(exp), "eval.num_problems=2",
                 "eval.samples=2", "eval.max_new_tokens=8"]) == 0
    assert "exported" in capsys.readouterr().out
    records = [json.loads(line) for line in (exp / "eval_samples.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (exp / "samples.jsonl").read_text().splitlines()]
    sampled = [r for r in records if r["sample"] != "greedy"]
    assert len(samples) == len(sampled) == 4
    assert sorted(s["task_id"] for s in samples) == sorted(r["problem_id"] for r in sampled)
    assert all(s["task_id"].startswith("HumanEval/") for s in samples)
    assert not (exp / "HumanEvalPlus.jsonl").exists() and not (exp / "vpd_bench_code.yaml").exists()
    assert (exp / "model" / "config.json").exists()
