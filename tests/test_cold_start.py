"""The cold-start setting: math from a base model with raw-completion prompts."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import vpd_bench.tasks as tasks
from vpd_bench.errors import UserError
from vpd_bench.tasks.answers import BOXED_INSTRUCTION
from vpd_bench.tasks.cold_start import ColdStartTask, raw_prompt
from vpd_bench.tasks.math import MathTask

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "vpd_bench" / "conf"


def make_cfg(name="cold_start", setting="instruct", **fields):
    task = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
    for key, value in fields.items():
        OmegaConf.update(task, key, value, merge=False)
    return OmegaConf.create({"seed": 0, "setting": setting, "task": task})


@pytest.fixture(scope="module")
def cold():
    return ColdStartTask(make_cfg(num_train=32, num_eval=8))


def test_raw_prompt_is_a_question_answer_completion():
    prompt = raw_prompt("  What is 3 + 4?  ")
    assert prompt == f"Question: What is 3 + 4?\n{BOXED_INSTRUCTION}\nAnswer:"
    assert "\\boxed{}" in prompt
    assert raw_prompt("What is 3 + 4?", None) == "Question: What is 3 + 4?\nAnswer:"
    assert raw_prompt("x", "Give the letter.").splitlines()[1] == "Give the letter."


def test_config_keeps_its_contract():
    conf = OmegaConf.load(CONF_DIR / "task" / "cold_start.yaml")
    assert conf.name == "cold_start" and conf.prompt_format == "raw"
    assert conf.distill_alpha == 0.5 and conf.base_task == "math"
    assert conf.default_model == "gemma3-270m"


def test_cold_start_task_is_math_with_raw_prompts(cold):
    assert tasks.TASKS["cold_start"] is ColdStartTask
    train, held_out = cold.train_problems(), cold.eval_problems()
    assert len(train) == 32 and len(held_out) == 8
    for problem in train + held_out:
        assert problem.prompt.startswith("Question: ") and problem.prompt.endswith("\nAnswer:")
        assert cold.render_prompt(problem) == problem.prompt
        assert "Solve the problem." not in problem.prompt          # the chat template's wording
    chat = MathTask(make_cfg("math", num_train=32, num_eval=8))
    assert [p.meta["question"] for p in train] == [p.meta["question"] for p in chat.train_problems()]


def test_cold_start_describe_records_the_setting(cold):
    info = cold.describe()
    assert info["name"] == "cold_start" and info["base_task"] == "math"
    assert info["prompt_format"] == "raw" and info["default_model"] == "gemma3-270m"
    assert info["source"] == "reasoning_gym" and info["num_train"] == 32
    assert info["generators"] == ["chain_sum", "basic_arithmetic"]


def test_base_model_completions_are_verified(cold):
    problem = cold.train_problems()[0]
    gold = problem.answer
    assert cold.verify(problem, f" \\boxed{{{gold}}}\n\nQuestion: next").status == "pass"
    assert cold.verify(problem, f" {gold}\n").status == "pass"              # lenient: last number
    assert cold.verify(problem, " I think it is seven hundred").status == "format"


def test_cold_start_math_fields_override_like_math():
    task = ColdStartTask(make_cfg(num_train=6, num_eval=2, **{"reasoning_gym.generators": ["chain_sum"]}))
    assert {p.meta["generator"] for p in task.train_problems()} == {"chain_sum"}


def test_hydra_composes_cold_start_from_math():
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=["task=cold_start", "task.num_train=5", "task.num_eval=2"])
    assert cfg.task.name == "cold_start" and cfg.task.prompt_format == "raw"
    assert cfg.task.source == "reasoning_gym"                 # inherited from math.yaml
    task = tasks.build_task(cfg)
    assert len(task.train_problems()) == 5
    assert task.train_problems()[0].prompt.startswith("Question: ")


def test_setting_cold_start_switches_any_task_to_raw_prompts():
    math_task = MathTask(make_cfg("math", setting="cold_start", num_train=4, num_eval=2))
    assert all(p.prompt.startswith("Question: ") for p in math_task.train_problems())
    instruct = MathTask(make_cfg("math", num_train=4, num_eval=2))
    assert not any(p.prompt.startswith("Question: ") for p in instruct.train_problems())


def test_other_base_tasks_are_refused_with_the_alternative():
    with pytest.raises(UserError, match="task=sciqa setting=cold_start"):
        ColdStartTask(make_cfg(base_task="sciqa"))


def test_raw_prompts_stop_at_the_next_question_unless_told_otherwise():
    from vpd_bench.config import compose
    from vpd_bench.tasks.answers import RAW_PROMPT_STOP
    cold = compose("grpo", "cold_start", None, "tiny-random", None, None, [])
    assert list(cold.rollout.stop) == list(RAW_PROMPT_STOP) == ["Question:", "Answer:"]
    other = compose("grpo", "sciqa", None, "tiny-random", None, None, ["setting=cold_start"])
    assert list(other.rollout.stop) == ["Question:", "Answer:"]
    assert list(compose("grpo", "math", None, "tiny-random", None, None, []).rollout.stop) == []
    off = compose("grpo", "cold_start", None, "tiny-random", None, None, ["rollout.stop=[]"])
    assert list(off.rollout.stop) == []
    mine = compose("grpo", "cold_start", None, "tiny-random", None, None, ["rollout.stop=[END]"])
    assert list(mine.rollout.stop) == ["END"]


class _Tok:
    """A word-level tokenizer: ids are word lengths, BOS is 0 (when it has one)."""

    def __init__(self, bos_token_id, adds_bos):
        self.bos_token_id, self.adds_bos = bos_token_id, adds_bos

    def encode(self, text, add_special_tokens=True):
        ids = [self.bos_token_id] if text.startswith("<bos>") else []
        ids += [len(w) for w in text.removeprefix("<bos>").split()]
        return ([self.bos_token_id] if add_special_tokens and self.adds_bos else []) + ids


def test_prompts_start_with_bos_where_the_tokenizer_adds_one_and_never_twice():
    from vpd_bench.training.teacher_prompt import encode_prompt
    gemma_like = _Tok(0, adds_bos=True)
    assert encode_prompt(gemma_like, "Question: what Answer:") == [0, 9, 4, 7]
    assert encode_prompt(gemma_like, "<bos>Question: what") == [0, 9, 4]        # a chat template wrote it
    assert encode_prompt(_Tok(100, adds_bos=False), "Question: what") == [9, 4]  # SmolLM2, Qwen
    assert encode_prompt(_Tok(None, adds_bos=False), "Question: what") == [9, 4]


def test_teacher_prompts_get_the_bos_too():
    from vpd_bench.rollout.batch import Feedback
    from vpd_bench.training.teacher_prompt import build_teacher_prompt
    templates = OmegaConf.create({"demonstration": "Shown: {demonstration}", "feedback": "Said: {feedback}",
                                  "instruction": "Again:"})
    tp = build_teacher_prompt("Question: what", Feedback(text="wrong"), templates, _Tok(0, adds_bos=True),
                              chat=False, max_length=64)
    assert tp.ids[0] == 0 and tp.ids[1:] == [len(w) for w in tp.text.split()]
