"""The math task: answer extraction, equivalence, feedback that never leaks, splits, loaders."""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
from pathlib import Path

import pytest

from vpd_bench.errors import UserError
from vpd_bench.tasks import answers
from vpd_bench.tasks.answers import (answers_equal, extract_answer, last_boxed, question_key,
                                     raw_prompt)
from vpd_bench.tasks.math import (FORMAT_FEEDBACK, PASS_FEEDBACK, MathTask, dapo_question,
                                  wrong_answer_feedback)

from _task_config import task_cfg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "vpd_bench" / "conf" / "task" / "math.yaml"
FIXTURES = ROOT / "tasks" / "fixtures" / "math"


def make_cfg(setting="instruct", **fields):
    return task_cfg(CONF, setting, **fields)


@pytest.fixture(scope="module")
def generated():
    return MathTask(make_cfg())


@pytest.fixture(scope="module")
def champ():
    return MathTask(make_cfg(source="champ", num_eval=32))


# -- extraction ------------------------------------------------------------------------------

@pytest.mark.parametrize("response, expected, rule", [
    ("so the total is \\boxed{42}.", "42", "boxed"),
    ("first \\boxed{3}, no wait \\boxed{-4}", "-4", "boxed"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "boxed"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}} done", "\\frac{\\sqrt{2}}{2}", "boxed"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", "boxed"),
    ("\\boxed 5", "5", "boxed"),
    ("$\\boxed{x^{2}+1}$", "x^{2}+1", "boxed"),
    ("\\fbox{12}", "12", "boxed"),
    ("The answer is 42 apples.", "42 apples", "answer_is"),
    ("Answer: $-3.5$", "-3.5", "answer_is"),
    ("**Final answer:** 17", "17", "answer_is"),
    ("the final answer is: \\frac{3}{4}.", "\\frac{3}{4}", "answer_is"),
    ("answer = -2/3", "-2/3", "answer_is"),
    ("The answer is \\boxed{7}", "7", "boxed"),
    ("We add them.\n#### 1,234", "1,234", "hashes"),
    ("1 - 6 = -5", "-5", "last_number"),
    ("so we get 3/4", "3/4", "last_number"),
    ("the value is .5", ".5", "last_number"),
    ("x = \\frac{3}{4} so", "\\frac{3}{4}", "last_number"),
    ("It costs 1,000 dollars", "1,000", "last_number"),
    ("between 2.5 and 7.25", "7.25", "last_number"),
    ("cut off \\boxed{12", "12", "last_number"),
])
def test_extracts_the_final_answer(response, expected, rule):
    assert extract_answer(response) == (expected, rule)


@pytest.mark.parametrize("response", ["", "I do not know.", "no digits at all", "\\boxed{}"])
def test_no_answer_means_none(response):
    assert extract_answer(response) == (None, "none")


def test_strict_mode_accepts_only_boxed():
    assert extract_answer("The answer is 5", "strict") == (None, "none")
    assert extract_answer("The answer is \\boxed{5}", "strict") == ("5", "boxed")
    with pytest.raises(UserError):
        extract_answer("5", "loose")


def test_last_boxed_handles_nested_braces():
    assert last_boxed("\\boxed{\\frac{a}{\\sqrt{b}}} and \\boxed{{x}}") == "{x}"
    assert last_boxed("no box") is None


# -- equivalence -----------------------------------------------------------------------------

EQUAL = [("1/2", "0.5"), ("\\frac{1}{2}", "0.5"), ("\\frac{1}{2}", "1/2"), ("0.5", "\\dfrac12"),
         ("-4", "-4.0"), ("1000", "1,000"), ("$7$", "7"), ("5", "x = 5"), ("-\\frac{3}{4}", "-0.75"),
         ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("x^2+1", "1+x^2"), ("No", "no"), ("2.50", "2.5"),
         ("13", "4 + 9 = 13"), ("2", "x = 7 - 5 = 2"), ("-3", "(-3)"), ("2^{10}", "2^10"), ("0.5", "2/4")]
UNEQUAL = [("1/2", "0.51"), ("3", "3.0001"), ("-4", "4"), ("7", "17"), ("x^2+1", "x^2-1"),
           ("\\frac{1}{3}", "0.33"), ("Yes", "No"),
           # unevaluated arithmetic restates the question; a symbolic backend would evaluate it
           ("11", "4 + 7"), ("2", "7-5"), ("-1", "7 - 8"), ("8", "2^3"), ("14", "(3+4)*2"),
           ("2", "x = 7 - 5"), ("12", "4 \\times 3"), ("0", "0 + 0."), ("3", "7 - 5 = 2")]


@pytest.mark.parametrize("gold, pred", EQUAL)
def test_equivalent_answers_match(gold, pred):
    assert answers_equal(gold, pred)


@pytest.mark.parametrize("gold, pred", UNEQUAL)
def test_different_answers_do_not_match(gold, pred):
    assert not answers_equal(gold, pred)


@pytest.mark.parametrize("backend", ["math_verify", "sympy", "string"])
def test_every_backend_reads_numbers_and_fractions(backend):
    for gold, pred in [("1/2", "0.5"), ("\\frac{1}{2}", "0.5"), ("-3", "-3.0"), ("1,000", "1000")]:
        assert answers_equal(gold, pred, backend)
    assert not answers_equal("1/2", "0.6", backend)


@pytest.mark.parametrize("backend", ["math_verify", "sympy"])
def test_no_backend_accepts_a_restated_arithmetic_question(backend):
    # math-verify and sympy evaluate "4 + 7" to 11: the rule must hold before they are asked
    assert not answers_equal("11", "4 + 7", backend)
    assert answers_equal("11", "4 + 7 = 11", backend)


def test_a_restated_question_fails_verification_even_through_the_leading_number(generated):
    problem = dataclasses.replace(generated.train_problems()[0], answer="4")
    for response in ("The final answer is 4 + 7.", "Answer: 4 - 0", "\\boxed{4+0}"):
        assert generated.verify(problem, response).status == "fail", response
    assert generated.verify(problem, "The final answer is 4 + 0 = 4.").status == "pass"
    assert generated.verify(problem, "The final answer is 4 apples.").status == "pass"


def test_sympy_backend_compares_expressions():
    assert answers_equal("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", "sympy")
    assert answers_equal("2\\pi", "2*pi", "sympy")
    assert not answers_equal("x+1", "x+2", "sympy")


def test_auto_falls_back_to_sympy_without_math_verify(monkeypatch):
    monkeypatch.setattr(answers, "has_math_verify", lambda: False)
    assert answers.resolve_backend("auto") == "sympy"
    with pytest.raises(UserError, match="math-verify"):
        answers.resolve_backend("math_verify")
    with pytest.raises(UserError, match="unknown equivalence backend"):
        answers.resolve_backend("exact")


# -- verification and feedback ---------------------------------------------------------------

def test_verdict_statuses(generated):
    problem = generated.train_problems()[0]
    gold = problem.answer
    assert generated.verify(problem, f"Done: \\boxed{{{gold}}}").status == "pass"
    assert generated.verify(problem, f"Done: \\boxed{{{gold}}}").reward == 1.0
    wrong = generated.verify(problem, "\\boxed{123456789}")
    assert (wrong.status, wrong.reward) == ("fail", 0.0)
    assert wrong.feedback == wrong_answer_feedback("123456789") == "Your final answer 123456789 is incorrect."
    missing = generated.verify(problem, "I am not sure.")
    assert (missing.status, missing.feedback) == ("format", FORMAT_FEEDBACK)
    assert "\\boxed{}" in FORMAT_FEEDBACK


def test_answer_followed_by_words_counts(generated):
    problem = generated.train_problems()[0]
    assert generated.verify(problem, f"The answer is {problem.answer} because I added.").status == "pass"


def test_fixed_feedback_holds_no_digits():
    for text in (FORMAT_FEEDBACK, PASS_FEEDBACK, wrong_answer_feedback("X")):
        assert not re.search(r"\d", text)


def _mentions(text: str, gold: str) -> bool:
    """Whether ``gold`` occurs in ``text`` as a token (not inside a longer word or number)."""
    return re.search(rf"(?<![\w.]){re.escape(gold)}(?![\w])", text) is not None


def _wrong_answers(gold: str):
    """Wrong final answers whose text does not mention the gold answer."""
    out = ["\\boxed{q}", "The answer is \\boxed{-987654}", "Answer: 31337 apples"]
    return [r for r in out if not _mentions(r, gold)]


def test_feedback_never_reveals_the_gold_answer(generated, champ):
    problems = generated.train_problems() + generated.eval_problems() + champ.train_problems()
    assert len(problems) > 600
    checked = 0
    for task, problem_list in ((generated, generated.train_problems() + generated.eval_problems()),
                               (champ, champ.train_problems() + champ.eval_problems())):
        for problem in problem_list:
            gold = str(problem.answer)
            responses = _wrong_answers(gold) + [
                "I cannot solve this.",                                    # format
                f"\\boxed{{{gold}}}",                                      # pass
                f"Maybe {gold}? No: \\boxed{{-987654}}",                   # gold in own reasoning
            ]
            for response in responses:
                verdict = task.verify(problem, response)
                if not _mentions(response, gold):
                    assert not _mentions(verdict.feedback, gold), (problem.id, response, verdict.feedback)
                if gold not in response and task is generated:   # numbers: plain substrings too
                    assert gold not in verdict.feedback, (problem.id, response, verdict.feedback)
                checked += 1
    assert checked > 3000


def test_every_reference_passes_its_own_verifier(generated, champ):
    for task in (generated, champ):
        for problem in task.train_problems() + task.eval_problems():
            assert problem.reference and "\\boxed{" in problem.reference
            assert task.verify(problem, problem.reference).status == "pass", problem.id


# -- splits ----------------------------------------------------------------------------------

def _keys(problems):
    return {question_key(p.meta["question"]) for p in problems}


@pytest.mark.parametrize("fields", [
    {},
    {"source": "champ", "num_eval": 32},
    {"source": "math500", "num_eval": 2, "local_files.eval": str(FIXTURES / "math500.jsonl")},
    {"source": "gsm8k", "num_eval": 2, "local_files.train": str(FIXTURES / "gsm8k.jsonl")},
    {"source": "dapo", "num_eval": 2, "local_files.train": str(FIXTURES / "dapo.jsonl")},
])
def test_splits_are_disjoint_and_deterministic(fields):
    first, second = MathTask(make_cfg(**fields)), MathTask(make_cfg(**fields))
    train, held_out = first.train_problems(), first.eval_problems()
    assert train and held_out
    assert not _keys(train) & _keys(held_out)
    assert len(_keys(train)) == len(train) and len(_keys(held_out)) == len(held_out)
    assert [p.id for p in train] == [p.id for p in second.train_problems()]
    assert [p.prompt for p in held_out] == [p.prompt for p in second.eval_problems()]


def test_split_seed_changes_the_split():
    a = MathTask(make_cfg(num_train=64, num_eval=16))
    b = MathTask(make_cfg(num_train=64, num_eval=16, split_seed=1))
    assert [p.prompt for p in a.eval_problems()] != [p.prompt for p in b.eval_problems()]
    c = MathTask(make_cfg(source="champ", num_eval=32, split_seed=1))
    assert _keys(c.eval_problems()) != _keys(MathTask(make_cfg(source="champ", num_eval=32)).eval_problems())


def test_generators_mix_and_difficulty():
    task = MathTask(make_cfg(num_train=40, num_eval=8))
    generators = {p.meta["generator"] for p in task.train_problems()}
    assert generators == {"chain_sum", "basic_arithmetic"}
    easy = task.describe()["generator_configs"]["chain_sum"]
    hard = MathTask(make_cfg(num_train=40, num_eval=8, **{"reasoning_gym.difficulty": 3})) \
        .describe()["generator_configs"]["chain_sum"]
    assert easy["max_digits"] == 1 and hard["max_digits"] > easy["max_digits"]
    only_sums = MathTask(make_cfg(num_train=20, num_eval=4, **{
        "reasoning_gym.generators": ["basic_arithmetic"],
        "reasoning_gym.overrides": {"basic_arithmetic": {"operators": ["+"]}}}))
    assert all("*" not in p.meta["question"] and "/" not in p.meta["question"]
               for p in only_sums.train_problems())


def test_unknown_names_get_a_suggestion():
    with pytest.raises(UserError, match="Did you mean 'chain_sum'"):
        MathTask(make_cfg(**{"reasoning_gym.generators": ["chain_sun"]})).train_problems()
    with pytest.raises(UserError, match="Did you mean 'math500'"):
        MathTask(make_cfg(source="math50"))
    with pytest.raises(UserError, match="no config field"):
        MathTask(make_cfg(**{"reasoning_gym.overrides": {"chain_sum": {"digits": 3}}})).train_problems()


def test_describe_records_source_sizes_seeds_and_generators(generated):
    info = generated.describe()
    assert info["source"] == "reasoning_gym" and info["split_seed"] == 0
    assert info["num_train"] == len(generated.train_problems()) == 512
    assert info["num_eval"] == len(generated.eval_problems()) == 64
    assert info["generators"] == ["chain_sum", "basic_arithmetic"]
    assert set(info["generator_seeds"]) == {"train", "eval"}
    assert info["generator_seeds"]["train"] != info["generator_seeds"]["eval"]
    json.dumps(info, default=list)


# -- prompts ---------------------------------------------------------------------------------

def test_prompt_asks_for_boxed_answer(generated):
    prompt = generated.train_problems()[0].prompt
    assert "\\boxed{}" in prompt and not prompt.startswith("Question:")


def test_cold_start_setting_renders_raw_prompts():
    task = MathTask(make_cfg(setting="cold_start", num_train=4, num_eval=2))
    problem = task.train_problems()[0]
    assert problem.prompt == raw_prompt(problem.meta["question"], task.cfg.task.raw_instruction)
    assert task.render_prompt(problem).endswith("Answer:") and task.prompt_format == "raw"


# -- CHAMP -----------------------------------------------------------------------------------

def test_champ_problems_carry_hints_and_solutions(champ):
    problems = champ.train_problems() + champ.eval_problems()
    assert len(problems) == 128                       # the verifiable answers of 270
    with_hints = [p for p in problems if p.hint]
    assert len(with_hints) >= 0.9 * len(problems)
    assert all(p.hint.startswith("Hints:\n- ") for p in with_hints)
    first = next(p for p in problems if p.id == "champ/P_Combinatorics_1")
    assert "end with digit 1, 2, 3" in first.hint
    assert "239" not in first.hint and first.answer == "239"
    assert first.reference.endswith("\\boxed{239}.")
    assert champ.describe()["champ"]["answers"] == "verifiable"


def test_champ_hint_parts_and_all_answers():
    only_hints = MathTask(make_cfg(source="champ", **{"champ.hint_parts": ["hints"]}))
    concept = "For non-negative"
    assert all(concept not in (p.hint or "") for p in only_hints.train_problems())
    everything = MathTask(make_cfg(source="champ", num_train=0, num_eval=70, **{"champ.answers": "all"}))
    assert len(everything.train_problems()) + len(everything.eval_problems()) == 270


# -- hub loaders on fixtures -----------------------------------------------------------------

def test_math500_fixture():
    task = MathTask(make_cfg(source="math500", num_eval=2, **{"local_files.eval": str(FIXTURES / "math500.jsonl")}))
    problems = {p.meta["question"]: p for p in task.train_problems() + task.eval_problems()}
    assert len(problems) == 6
    fraction = problems["What is the value of $\\frac{3}{4} + \\frac{1}{8}$? Express your answer as a common fraction."]
    assert fraction.answer == "\\frac{7}{8}" and "\\boxed{\\frac{7}{8}}" in fraction.reference
    assert fraction.id == "math500/test/prealgebra/9001.json" and fraction.meta["level"] == 1
    assert task.verify(fraction, "so \\boxed{0.875}").status == "pass"
    assert task.verify(fraction, "so \\boxed{7/8}").status == "pass"


def test_gsm8k_fixture():
    task = MathTask(make_cfg(source="gsm8k", num_eval=2, **{"local_files.train": str(FIXTURES / "gsm8k.jsonl")}))
    problems = task.train_problems() + task.eval_problems()
    assert len(problems) == 6
    farm = next(p for p in problems if "1,200 chickens" in p.meta["question"])
    assert farm.answer == "925"
    assert "<<" not in farm.reference and farm.reference.endswith("\\boxed{925}.")
    assert task.verify(farm, "The farm has 925 chickens.\n#### 925").status == "pass"


def test_dapo_fixture_strips_the_instruction_and_deduplicates():
    task = MathTask(make_cfg(source="dapo", num_eval=2, **{"local_files.train": str(FIXTURES / "dapo.jsonl")}))
    problems = task.train_problems() + task.eval_problems()
    assert len(problems) == 5                             # six rows, one repeated
    for problem in problems:
        assert "Remember to put" not in problem.meta["question"]
        assert not problem.meta["question"].startswith("Solve the following")
        assert problem.reference is None
    assert {p.id for p in problems} >= {"dapo/dapo-a1", "dapo/dapo-a5"}
    binomial = next(p for p in problems if "binom" in p.meta["question"])
    assert task.verify(binomial, "Answer: 56").status == "pass"
    assert dapo_question("plain text") == "plain text"


def test_eval_source_trains_on_one_set_and_tests_on_another():
    task = MathTask(make_cfg(source="dapo", eval_source="math500", num_eval=3, **{
        "local_files.train": str(FIXTURES / "dapo.jsonl"),
        "local_files.eval": str(FIXTURES / "math500.jsonl")}))
    assert {p.meta["source"] for p in task.train_problems()} == {"dapo"}
    assert {p.meta["source"] for p in task.eval_problems()} == {"math500"}
    assert len(task.train_problems()) == 5 and len(task.eval_problems()) == 3
    assert task.describe()["eval_source"] == "math500"


def _fake_datasets(rows_by_split):
    module = types.ModuleType("datasets")
    calls = []

    def load_dataset(name, *args, split):
        calls.append((name, args, split))
        return rows_by_split[split]
    module.load_dataset = load_dataset
    module.calls = calls
    return module


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_hub_path_parses_rows_like_the_local_copy(monkeypatch):
    fake = _fake_datasets({"train": _rows(FIXTURES / "gsm8k.jsonl"), "test": _rows(FIXTURES / "gsm8k.jsonl")[:2]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    hub = MathTask(make_cfg(source="gsm8k", num_eval=2))
    hub_problems = hub.train_problems() + hub.eval_problems()
    assert fake.calls == [("openai/gsm8k", ("main",), "train"), ("openai/gsm8k", ("main",), "test")]
    local = MathTask(make_cfg(source="gsm8k", num_eval=2, **{"local_files.train": str(FIXTURES / "gsm8k.jsonl")}))
    assert sorted((p.meta["question"], p.answer, p.reference) for p in hub_problems) == \
        sorted((p.meta["question"], p.answer, p.reference) for p in local.train_problems() + local.eval_problems())
    assert hub.describe()["hub"]["gsm8k"]["id"] == "openai/gsm8k"


def test_hub_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=re.escape("pip install 'vpd-bench[hub]'")):
        MathTask(make_cfg(source="math500")).train_problems()


def test_corrupt_fixture_line_names_file_and_line(tmp_path):
    good = (FIXTURES / "math500.jsonl").read_text().splitlines()[0]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good + "\n" + '{"problem": "2+2", "answer": \n')
    with pytest.raises(UserError, match=rf"{re.escape(str(broken))}: line 2: not valid JSON"):
        MathTask(make_cfg(source="math500", **{"local_files.eval": str(broken)})).train_problems()
    missing = tmp_path / "missing.jsonl"
    missing.write_text(good + "\n" + json.dumps({"problem": "What is 2+2?"}) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(missing))}: line 2: missing field 'answer'"):
        MathTask(make_cfg(source="math500", **{"local_files.eval": str(missing)})).train_problems()
    no_hashes = tmp_path / "gsm.jsonl"
    no_hashes.write_text(json.dumps({"question": "q", "answer": "4"}) + "\n")
    with pytest.raises(UserError, match="line 1: GSM8K answer has no"):
        MathTask(make_cfg(source="gsm8k", **{"local_files.train": str(no_hashes)})).train_problems()
