"""The sciqa task: MMLU science + generated calculations, option letters, units, feedback."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from vpd_bench.errors import UserError
from vpd_bench.tasks.base import Problem
from vpd_bench.tasks.answers import question_key
from vpd_bench.tasks.sciqa import (CALC_KINDS, SCIENCE_SUBJECTS, UNITS, SciQATask, extract_choice,
                                   format_value, lookup_unit, parse_mmlu, parse_quantity)

from _task_config import task_cfg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "vpd_bench" / "conf" / "task" / "sciqa.yaml"
FIXTURE = ROOT / "tasks" / "fixtures" / "sciqa" / "sciknoweval_l3.jsonl"


def make_cfg(setting="instruct", **fields):
    return task_cfg(CONF, setting, **fields)


@pytest.fixture(scope="module")
def offline():
    return SciQATask(make_cfg())


def calc_problem(value, unit):
    return Problem(id="t", prompt="p", answer={"kind": "calc", "value": value, "unit": unit,
                                              "dimension": UNITS[unit].dimension})


def mc_problem(letter="C"):
    return Problem(id="m", prompt="p", answer={"kind": "mc", "letter": letter, "labels": list("ABCD"),
                                               "choices": ["red", "green", "blue", "yellow"]})


# -- data ------------------------------------------------------------------------------------

def test_offline_mix_follows_calc_fraction(offline):
    info = offline.describe()
    assert info["num_train"] == 512 and info["num_eval"] == 64
    assert info["calc_problems"] == {"train": 256, "eval": 32}
    assert info["mmlu_problems"] == {"train": 256, "eval": 32}
    quarter = SciQATask(make_cfg(num_train=40, num_eval=8, calc_fraction=0.25)).describe()
    assert quarter["calc_problems"] == {"train": 10, "eval": 2}
    only_mc = SciQATask(make_cfg(num_train=20, num_eval=4, calc_fraction=0.0))
    assert all(p.answer["kind"] == "mc" for p in only_mc.train_problems())


def test_mmlu_questions_come_from_science_subjects_only(offline):
    mc = [p for p in offline.train_problems() + offline.eval_problems() if p.answer["kind"] == "mc"]
    assert mc and {p.meta["topic"] for p in mc} <= set(SCIENCE_SUBJECTS)
    assert offline.describe()["mmlu_pool"] == 2266      # 2,277 rows less 11 repeats
    physics = SciQATask(make_cfg(num_train=10, num_eval=4, calc_fraction=0.0,
                                 mmlu_subjects=["college physics"]))
    assert {p.meta["topic"] for p in physics.train_problems()} == {"college physics"}


def test_mmlu_junk_header_rows_are_skipped():
    header = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
              "answer_d": "answer_d", "correct_answer": "answer", "topic": "college mathematics"}
    assert parse_mmlu(header, "x: line 1") is None
    with pytest.raises(UserError, match="x: line 2: missing field 'answer_b'"):
        parse_mmlu({"question": "q", "answer_a": "1", "correct_answer": "A", "topic": "t"}, "x: line 2")


def test_unknown_subject_and_kind_get_suggestions():
    with pytest.raises(UserError, match="Did you mean 'college physics'"):
        SciQATask(make_cfg(mmlu_subjects=["college physic"])).train_problems()
    with pytest.raises(UserError, match="Did you mean 'ohms_law_voltage'"):
        SciQATask(make_cfg(calc_kinds=["ohms_law_volts"]))
    with pytest.raises(UserError, match="Did you mean 'offline'"):
        SciQATask(make_cfg(source="ofline"))


def test_splits_are_disjoint_and_deterministic(offline):
    again = SciQATask(make_cfg())
    train, held_out = offline.train_problems(), offline.eval_problems()
    keys = lambda ps: {question_key(p.meta["question"] + str(p.answer.get("choices", ""))) for p in ps}  # noqa: E731
    assert not keys(train) & keys(held_out)
    assert len(keys(train)) == len(train)
    assert [p.id for p in train] == [p.id for p in again.train_problems()]
    assert [p.prompt for p in held_out] == [p.prompt for p in again.eval_problems()]
    other = SciQATask(make_cfg(split_seed=1))
    assert [p.prompt for p in other.eval_problems()] != [p.prompt for p in held_out]


def test_calculations_have_hints_and_references_that_pass(offline):
    calc = [p for p in offline.train_problems() + offline.eval_problems() if p.answer["kind"] == "calc"]
    assert {p.meta["calc_kind"] for p in calc} == set(CALC_KINDS)
    for problem in calc:
        assert problem.hint.startswith("Use ")
        assert format_value(problem.answer["value"]) not in problem.hint
        assert offline.verify(problem, problem.reference).status == "pass", problem.reference
        assert "\\boxed{}" in problem.prompt


def test_mc_references_pass(offline):
    for problem in offline.eval_problems():
        if problem.answer["kind"] == "mc":
            assert offline.verify(problem, problem.reference).status == "pass"
            assert "\\boxed{}" in problem.prompt and "\nA. " in problem.prompt


# -- option letters --------------------------------------------------------------------------

@pytest.mark.parametrize("response, letter", [
    ("\\boxed{B}", "B"), ("\\boxed{(C)}", "C"), ("\\boxed{\\text{D}}", "D"), ("\\boxed{D. yellow}", "D"),
    ("\\boxed{green}", "B"), ("The answer is (C).", "C"), ("Answer: B", "B"), ("**Answer: D**", "D"),
    ("ANSWER: A", "A"), ("Thinking...\nC\n", "C"), ("B. because it is", "B"), ("(A) is right", "A"),
    ("I pick option D", "D"), ("C)", "C"), ("first A, then \\boxed{B}", "B"),
    ("A cat sat on the mat", None), ("the answer is b", None), ("\\boxed{E}", None), ("", None),
    ("I am not sure", None),
])
def test_extracts_option_letters(response, letter):
    assert extract_choice(response, list("ABCD"), ["red", "green", "blue", "yellow"]) == letter


@pytest.mark.parametrize("response, letter", [
    # a restated option list is not a choice (before the fix: "A", the first list item)
    ("A. X-ray\nB. Ultraviolet\nC. Visible\nD. Infrared", None),
    ("A. red (C)\nB. green (D)", None),
    ("  (A) red\n  (B) green\n  (C) blue", None),
    ("A) red\nB) green\nC)\n", None),
    # ... but an explicit answer, a box or "option B" after the list still is
    ("A. X-ray\nB. Ultraviolet\nC. Visible\nD. Infrared\nThe correct answer is C. Visible.", "C"),
    ("A. red\nB. green\n\\boxed{B}", "B"),
    ("A. red\nB. green\nI pick option B", "B"),
    # one option restated and then chosen stays a choice
    ("B. green, because leaves reflect it", "B"),
])
def test_a_restated_option_list_is_not_a_choice(response, letter):
    assert extract_choice(response, list("ABCD"), ["red", "green", "blue", "yellow"]) == letter


def test_listing_the_options_is_a_format_failure_not_a_lucky_pass(offline):
    problem = mc_problem("A")
    verdict = offline.verify(problem, "A. red\nB. green\nC. blue\nD. yellow")
    assert (verdict.reward, verdict.status) == (0.0, "format")
    assert "\\boxed{}" in verdict.feedback


def test_strict_choice_needs_a_box():
    assert extract_choice("Answer: B", list("ABCD"), mode="strict") is None
    assert extract_choice("\\boxed{B}", list("ABCD"), mode="strict") == "B"


def test_multiple_choice_statuses_and_feedback(offline):
    problem = mc_problem("C")
    assert offline.verify(problem, "\\boxed{C}").status == "pass"
    wrong = offline.verify(problem, "\\boxed{A}")
    assert (wrong.status, wrong.feedback) == ("fail", "Your choice (A) is incorrect.")
    missing = offline.verify(problem, "hmm, hard to say")
    assert missing.status == "format" and "\\boxed{}" in missing.feedback
    for verdict in (wrong, missing):
        assert not re.search(r"\bC\b", verdict.feedback) and "blue" not in verdict.feedback


def test_mc_feedback_never_names_the_right_option(offline):
    for problem in offline.train_problems():
        if problem.answer["kind"] != "mc":
            continue
        gold = problem.answer["letter"]
        right_text = problem.answer["choices"]["ABCD".index(gold)]
        for letter in "ABCD":
            if letter == gold:
                continue
            feedback = offline.verify(problem, f"\\boxed{{{letter}}}").feedback
            assert not re.search(rf"\b{gold}\b", feedback)
            assert right_text not in feedback


# -- numbers and units -----------------------------------------------------------------------

@pytest.mark.parametrize("text, value, unit", [
    ("24 W", 24, "W"), ("1.2e3 W", 1200, "W"), ("2.4 \\times 10^{3}\\,\\text{J}", 2400, "J"),
    ("P = 24 W", 24, "W"), ("24\\ \\mathrm{W}", 24, "W"), ("3.0 meters per second squared", 3, "m/s^2"),
    ("12 ohms", 12, "Ω"), ("5 \\Omega", 5, "Ω"), ("5 kΩ", 5, "kΩ"), ("0.5 mol/L", 0.5, "mol/L"),
    ("0.5 M", 0.5, "M"), ("1,200 J", 1200, "J"), ("-3 m/s", -3, "m/s"), ("4 watts.", 4, "W"),
    ("0.8 g/cm³", 0.8, "g/cm^3"), ("7 m s^-1", 7, "m·s^-1"), ("2 N m", 2, "N·m"), ("8.3 kPa", 8.3, "kPa"),
])
def test_reads_values_and_units(text, value, unit):
    parsed, rest = parse_quantity(text)
    assert parsed == pytest.approx(value)
    assert lookup_unit(rest).symbol == unit


def test_unit_conversion_counts_as_correct(offline):
    power = calc_problem(24.0, "W")
    for response in ["\\boxed{24 W}", "\\boxed{0.024 kW}", "\\boxed{24000 mW}", "\\boxed{24 J/s}",
                     "\\boxed{24}", "So the power is 24 watts.", "The answer is 24 W because P = VI."]:
        assert offline.verify(power, response).status == "pass", response
    pressure = calc_problem(249.42, "kPa")
    assert offline.verify(pressure, "\\boxed{2.49 \\times 10^{5} Pa}").status == "pass"
    assert offline.verify(pressure, "\\boxed{2.46 atm}").status == "pass"


def test_unit_of_the_wrong_kind_is_named(offline):
    verdict = offline.verify(calc_problem(24.0, "W"), "\\boxed{24 J}")
    assert verdict.status == "fail"
    assert verdict.feedback == "Your unit is J but the quantity is a power, expected W."
    energy = offline.verify(calc_problem(50.0, "J"), "\\boxed{50 N}")
    assert energy.feedback == "Your unit is N but the quantity is an energy, expected J."


def test_magnitude_sign_and_value_errors(offline):
    power = calc_problem(24.0, "W")
    big = offline.verify(power, "\\boxed{24 kW}")
    assert big.status == "fail" and "too large by a power of ten" in big.feedback
    small = offline.verify(power, "\\boxed{2.4 W}")
    assert "too small by a power of ten" in small.feedback
    assert offline.verify(power, "\\boxed{-24 W}").feedback == "Your value has the wrong sign."
    wrong = offline.verify(power, "\\boxed{31 W}")
    assert wrong.feedback == "Your final answer 31 W is incorrect." and wrong.extras["error"] == "value"
    unknown = offline.verify(power, "\\boxed{24 furlongs}")
    assert unknown.status == "fail" and "expected W" in unknown.feedback
    missing = offline.verify(power, "no idea")
    assert missing.status == "format" and "unit" in missing.feedback


def test_require_unit():
    strict = SciQATask(make_cfg(require_unit=True, num_train=4, num_eval=2))
    verdict = strict.verify(calc_problem(24.0, "W"), "\\boxed{24}")
    assert verdict.status == "fail" and verdict.feedback.startswith("Your final answer has no unit")


def test_calc_feedback_never_reveals_the_value(offline):
    checked = 0
    for problem in offline.train_problems() + offline.eval_problems():
        if problem.answer["kind"] != "calc":
            continue
        value, unit = problem.answer["value"], problem.answer["unit"]
        golds = {format_value(value), f"{value:g}", str(value)}
        for response in [f"\\boxed{{{value * 1000:g} {unit}}}", f"\\boxed{{{value:g} kg·s}}",
                         f"\\boxed{{{-value:g} {unit}}}", f"\\boxed{{{value * 1.37 + 0.11:.4f} {unit}}}",
                         "I give up", f"\\boxed{{{value:g} mol}}"]:
            feedback = offline.verify(problem, response).feedback
            for gold in golds:
                if not re.search(rf"(?<![\d.]){re.escape(gold)}(?![\d])", response):
                    assert not re.search(rf"(?<![\d.]){re.escape(gold)}(?![\d])", feedback), (response, feedback)
            checked += 1
    assert checked > 1000


# -- SciKnowEval -----------------------------------------------------------------------------

def test_sciknoweval_fixture_keeps_l3_multiple_choice():
    task = SciQATask(make_cfg(source="sciknoweval", num_eval=2, **{"sciknoweval.local_file": str(FIXTURE)}))
    problems = task.train_problems() + task.eval_problems()
    assert len(problems) == 7                       # an L2 row and an open-ended row are dropped
    assert all(p.meta["level"] == "L3" and p.meta["type"].startswith("mcq") for p in problems)
    two = next(p for p in problems if p.meta["type"] == "mcq-2-choices")
    assert two.answer["labels"] == ["A", "B"] and "\nB. G1" in two.prompt
    assert task.verify(two, "\\boxed{A}").status == "pass"
    assert task.verify(two, "\\boxed{C}").status == "format"
    physics = SciQATask(make_cfg(source="sciknoweval", num_eval=1, **{
        "sciknoweval.local_file": str(FIXTURE), "sciknoweval.domains": ["Physics"]}))
    assert {p.meta["domain"] for p in physics.train_problems() + physics.eval_problems()} == {"Physics"}
    assert task.describe()["sciknoweval_pool"] == 7


def test_sciknoweval_hub_path_parses_like_the_local_copy(monkeypatch):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    module = types.ModuleType("datasets")
    module.load_dataset = lambda name, split: rows if (name, split) == ("hicai-zju/SciKnowEval", "test") else None
    monkeypatch.setitem(sys.modules, "datasets", module)
    hub = SciQATask(make_cfg(source="sciknoweval", num_eval=2))
    local = SciQATask(make_cfg(source="sciknoweval", num_eval=2, **{"sciknoweval.local_file": str(FIXTURE)}))
    assert [(p.prompt, p.answer) for p in hub.train_problems()] == [(p.prompt, p.answer) for p in local.train_problems()]


def test_sciknoweval_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=re.escape("pip install 'vpd-bench[hub]'")):
        SciQATask(make_cfg(source="sciknoweval")).train_problems()


def test_corrupt_sciknoweval_line_names_file_and_line(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    broken = tmp_path / "ske.jsonl"
    broken.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(broken))}: line 4: not valid JSON"):
        SciQATask(make_cfg(source="sciknoweval", **{"sciknoweval.local_file": str(broken)})).train_problems()
    bad_key = tmp_path / "key.jsonl"
    row = json.loads(lines[0])
    row["answerKey"] = "E"
    bad_key.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"line 1: answerKey 'E' is not one of the labels"):
        SciQATask(make_cfg(source="sciknoweval", **{"sciknoweval.local_file": str(bad_key)})).train_problems()


# -- prompts ---------------------------------------------------------------------------------

def test_cold_start_setting_renders_raw_prompts():
    task = SciQATask(make_cfg(setting="cold_start", num_train=6, num_eval=2))
    for problem in task.train_problems():
        assert problem.prompt.startswith("Question: ") and problem.prompt.endswith("\nAnswer:")
    assert task.describe()["prompt_format"] == "raw"
