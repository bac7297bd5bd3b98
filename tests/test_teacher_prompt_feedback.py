"""Teacher prompts and feedback sources: pure functions, no model."""
import random

import pytest
import torch
from omegaconf import OmegaConf

from vpd_bench.rollout.batch import Feedback, RolloutBatch
from vpd_bench.config import compose
from vpd_bench.errors import UserError
from vpd_bench.training.feedback import CombinedFeedback, SelfCritiqueFeedback, add_noise, cap_text
from vpd_bench.models.loading import build_tiny_tokenizer
from vpd_bench.training.teacher_prompt import build_teacher_prompt
from vpd_bench.tasks.base import Problem

TOK = build_tiny_tokenizer()
TEMPLATES = compose().teacher_prompt


def test_teacher_prompt_orders_demonstration_feedback_instruction():
    tp = build_teacher_prompt("Solve 2+2.", Feedback("DEMO", "FEEDBACK"), TEMPLATES, TOK, True, 4096)
    text = tp.text
    assert text.index("Solve 2+2.") < text.index("DEMO") < text.index("FEEDBACK") < text.index(TEMPLATES.instruction)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert tp.ids == TOK.encode(text, add_special_tokens=False) and not tp.truncated


def test_no_demonstration_and_no_feedback_means_no_teacher():
    tp = build_teacher_prompt("Solve.", Feedback(None, None), TEMPLATES, TOK, True, 4096)
    assert tp.text is None and tp.ids is None


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_cuts_the_context_not_the_problem(side):
    long_feedback = "\n".join(f"line {i:03d}" for i in range(300))
    tp = build_teacher_prompt("THE PROBLEM", Feedback(None, long_feedback), TEMPLATES, TOK, True, 400)
    assert tp.truncated and len(tp.ids) <= 400
    assert "THE PROBLEM" in tp.text and TEMPLATES.instruction in tp.text
    if side == "left":
        assert "line 299" in tp.text and "line 000" not in tp.text
    tp_r = build_teacher_prompt("THE PROBLEM", Feedback(None, long_feedback), TEMPLATES, TOK, True, 400,
                                truncation="right")
    assert "line 000" in tp_r.text and "line 299" not in tp_r.text


def test_truncation_error_policy_raises():
    with pytest.raises(UserError, match="max_length"):
        build_teacher_prompt("P", Feedback(None, "x" * 2000), TEMPLATES, TOK, True, 100, truncation="error")


class Ctx:
    success_threshold = 1.0
    allow_self_demonstration = False
    feedback_on_success = True
    seed = 0
    stop_strings = ()          # chat runs: no stop strings

    def __init__(self):
        self.critique_prompts = []

    def encode_prompt(self, text):
        self.critique_prompts.append(text)
        return [1, 2, 3]

    def generate_texts(self, prompts, max_new_tokens, seed):
        return [f"critique {i}" for i in range(len(prompts))]


def batch(rewards, G=4, n_problems=None):
    n_problems = n_problems or len(rewards) // G
    problems = [Problem(id=f"p{k}", prompt=f"problem {k}", answer="SECRET", reference=f"REFERENCE {k}",
                        hint=f"hint {k}") for k in range(n_problems)]
    b = RolloutBatch(step=1, group_size=G, problems=problems, prompt_texts=[""] * n_problems,
                     prompt_ids=[[0]] * n_problems)
    b.response_texts = [f"response {i}" for i in range(len(rewards))]
    b.response_ids = [[1]] * len(rewards)
    b.rewards = torch.tensor(rewards, dtype=torch.float)
    b.statuses = ["pass" if r >= 1 else "fail" for r in rewards]
    b.verdict_feedback = [f"verdict {i}" for i in range(len(rewards))]
    return b


def fb_cfg(name):
    return compose(feedback=name).feedback


def test_sibling_demonstration_is_another_success_never_itself():
    b = batch([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    fbs = CombinedFeedback(fb_cfg("sibling")).build(b, Ctx())
    assert [f.demonstration for f in fbs[:4]] == ["response 2", "response 0", "response 0", "response 0"]
    # the only success of group 2 gets no demonstration; its failures get it
    assert fbs[7].demonstration is None and fbs[4].demonstration == "response 7"


def test_a_sibling_is_shown_without_the_stop_string_that_ended_it():
    # raw-prompt runs keep the stop string in the response; a demonstration must not end with it
    b = batch([1.0, 0.0, 1.0, 0.0])
    b.response_texts[0] = " 5 + 8 = 13\n\nQuestion:"
    b.response_texts[2] = " 13\nAnswer: "
    ctx = Ctx()
    ctx.stop_strings = ("Question:", "Answer:")
    fbs = CombinedFeedback(fb_cfg("sibling")).build(b, ctx)
    assert fbs[1].demonstration == " 5 + 8 = 13" and fbs[0].demonstration == " 13"
    # chat runs (no stop strings) and text that merely mentions a stop word are left alone
    b.response_texts[0] = "The Question: is 13"
    assert CombinedFeedback(fb_cfg("sibling")).build(b, ctx)[1].demonstration == "The Question: is 13"
    b.response_texts[0] = " 5 + 8 = 13\n\nQuestion:"
    assert CombinedFeedback(fb_cfg("sibling")).build(b, Ctx())[1].demonstration == " 5 + 8 = 13\n\nQuestion:"


def test_env_plus_sibling_merges_both():
    b = batch([1.0, 0.0, 1.0, 0.0])
    fbs = CombinedFeedback(fb_cfg("env+sibling")).build(b, Ctx())
    assert fbs[1].demonstration == "response 0" and fbs[1].text == "verdict 1"


def test_feedback_on_success_false_withholds_the_message_from_passing_responses_only():
    b = batch([1.0, 0.0, 1.0, 0.0])
    ctx = Ctx()
    ctx.feedback_on_success = False
    fbs = CombinedFeedback(fb_cfg("env+sibling")).build(b, ctx)
    assert [f.text for f in fbs] == [None, "verdict 1", None, "verdict 3"]
    # a passing response keeps its sibling; the default shows every response its message
    assert fbs[0].demonstration == "response 2"
    assert [f.text for f in CombinedFeedback(fb_cfg("env")).build(b, Ctx())] == [f"verdict {i}" for i in range(4)]


def test_hint_source_uses_the_problem_hint():
    fbs = CombinedFeedback(fb_cfg("hint")).build(batch([0.0] * 4), Ctx())
    assert all(f.text == "hint 0" for f in fbs)


def test_self_critique_sees_the_verdict_never_the_reference():
    ctx = Ctx()
    b = batch([1.0, 0.0, 0.0, 1.0])
    fbs = SelfCritiqueFeedback(fb_cfg("self_critique")).build(b, ctx)
    assert fbs[0].empty and fbs[3].empty                      # successes are not critiqued
    assert fbs[1].text == "critique 0" and fbs[2].text == "critique 1"
    assert len(ctx.critique_prompts) == 2
    for prompt in ctx.critique_prompts:
        assert "verdict" in prompt and "REFERENCE" not in prompt and "SECRET" not in prompt


def test_noisy_feedback_swaps_in_other_problems():
    fbs = [Feedback(text=f"about problem {i // 2}") for i in range(8)]
    assert add_noise(fbs, 2, 0.0, random.Random(0)) == fbs
    swapped = add_noise(fbs, 2, 1.0, random.Random(0))
    for i, f in enumerate(swapped):
        assert f.text != f"about problem {i // 2}"
    # noisy config draws from the same sources as env+sibling
    assert list(fb_cfg("noisy").sources) == ["env", "sibling"] and fb_cfg("noisy").p == 0.3


def test_cap_text_limits_chars_and_lines():
    text = "\n".join(["x" * 50] * 30)
    capped = cap_text(text, max_chars=200, max_lines=3)
    assert len(capped) <= 200 + len(" [...]") and capped.count("\n") <= 3


def test_a_raw_teacher_prompt_ends_with_the_student_prompts_answer_cue():
    """Completion prompts (cold start): the teacher prompt ends with the student prompt's last line,
    so the response is scored right after the cue it was sampled after; chat prompts, and
    answer_cue=none, end at the instruction."""
    from tasks.answers import raw_prompt
    student = raw_prompt("2 + 2 =")
    assert student.endswith("\nAnswer:")
    tp = build_teacher_prompt(student, Feedback("DEMO", "FEEDBACK"), TEMPLATES, TOK, False, 4096)
    head = student[:-len("Answer:")].rstrip()             # the question and its instruction line
    assert tp.text.startswith(head + "\n\n") and tp.text.count("Answer:") == 1     # the cue moved to the end
    assert tp.text.endswith(TEMPLATES.instruction + "\nAnswer:")
    assert tp.text.index("DEMO") < tp.text.index(TEMPLATES.instruction) < tp.text.rindex("Answer:")
    off = OmegaConf.merge(TEMPLATES, {"answer_cue": "none"})
    before = build_teacher_prompt(student, Feedback("DEMO", None), off, TOK, False, 4096).text
    assert before.startswith(student + "\n\n") and before.endswith(TEMPLATES.instruction)
    older = OmegaConf.create({k: v for k, v in OmegaConf.to_container(TEMPLATES).items() if k != "answer_cue"})
    assert build_teacher_prompt(student, Feedback("DEMO", None), older, TOK, False, 4096).text.endswith(
        "\nAnswer:")                                   # a config from before the key: auto
    chat = build_teacher_prompt(student, Feedback("DEMO", None), TEMPLATES, TOK, True, 4096).text
    assert chat.endswith("<|im_start|>assistant\n") and TEMPLATES.instruction + "\nAnswer:" not in chat
    one_line = build_teacher_prompt("Solve 2+2.", Feedback("DEMO", None), TEMPLATES, TOK, False, 4096)
    assert one_line.text.endswith(TEMPLATES.instruction)        # no cue line to repeat
    with pytest.raises(UserError, match="answer_cue"):
        build_teacher_prompt(student, Feedback("DEMO", None), OmegaConf.merge(TEMPLATES, {"answer_cue": "yes"}),
                             TOK, False, 4096)


def test_a_truncated_raw_teacher_prompt_keeps_its_answer_cue():
    from tasks.answers import raw_prompt
    student = raw_prompt("2 + 2 =")
    tp = build_teacher_prompt(student, Feedback(None, "x " * 2000), TEMPLATES, TOK, False, 300)
    assert tp.truncated and len(tp.ids) <= 300 and tp.text.endswith("\nAnswer:")
    assert tp.text.startswith(student[:-len("Answer:")]) and tp.text.count("Answer:") == 1
