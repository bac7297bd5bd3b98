"""Feedback echo (vpd_bench/evaluation/echo.py, `vpd-bench rescore --echo`): held-out responses that
repeat the verifier's sentences (logged on the run's training responses), and the score without the echo."""
from __future__ import annotations

import csv
import json

import pytest

from vpd_bench.cli import main
from vpd_bench.config import compose, to_yaml
from vpd_bench.errors import UserError
from vpd_bench.evaluation.echo import echo_start, feedback_sentences, run_feedback_sentences, sentence_spans, words
from vpd_bench.evaluation.rescore import rescore, rescore_run
from vpd_bench.tasks import build_task

PASS = "Your final answer is correct."


def test_sentences_split_at_newlines_and_stops_but_not_inside_numbers():
    text = "9 + 9 = 18\n\nYour answer is correct. It is 8.5 units!  Done"
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "9 + 9 = 18", "Your answer is correct.", "It is 8.5 units!", "Done"]
    # numbers and one-letter option labels drop out of a sentence's words
    assert words("Your choice (B) is incorrect: 12 of 4.") == {"your", "choice", "is", "incorrect", "of"}


def test_template_sentences_are_the_recurring_ones_not_the_quoted_response():
    quoted = "Your final answer The answer is 3. The answer is 4 is incorrect."
    messages = [PASS] * 12 + ["Your final answer 7 is incorrect."] * 7 + [quoted, None, ""]
    t = feedback_sentences(messages)
    assert t == {words(PASS), words("Your final answer 7 is incorrect.")}
    # a sentence seen once is not a template even in a short log; twice in two messages is
    assert feedback_sentences([quoted]) == set()
    assert feedback_sentences(["Try again now please.", "Try again now please."]) == {words("Try again now please.")}


def test_echo_start_finds_the_first_echoing_sentence_and_spares_plain_answers():
    t = feedback_sentences([PASS] * 3 + ["Your final answer 12 is incorrect."] * 3)
    resp = "9 + 9 = 18\n\nYour answer is correct.\n\nYour answer is correct."
    assert echo_start(resp, t) == resp.index("Your answer")          # 4 of 5 words shared: 0.8
    assert echo_start("9 + 9 = 18\nYour final answer 18 is incorrect.", t) == len("9 + 9 = 18\n")
    # "the final answer is 18": 3 of 6 words; two-word sentences never count
    assert echo_start("The final answer is 18.\nThe answer is 18.", t) is None
    assert echo_start("Answer correct.", t) is None
    assert echo_start(resp, t, threshold=0.9) is None
    assert echo_start(resp, set()) is None


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory):
    """Two math run folders sharing one config and held-out samples: an SDPO run that logged the
    verifier's messages on its training responses, and a run ("grpo") whose log holds none (as a
    task without verifier messages would). Step 30 holds a right answer
    followed by the echoed pass message (which the verifier fails), a clean right answer, a wrong
    answer with an echo, and a wrong answer."""
    cfg = compose(task="math", model="tiny-random", overrides=["eval.num_problems=4"])
    task = build_task(cfg)
    a, b = task.eval_problems()[:2]
    echoed = f"{a.answer}\n\nYour answer is correct.\n\nYour answer is correct."
    assert task.verify(a, echoed, split="eval").reward < 1.0 <= task.verify(a, f"\\boxed{{{a.answer}}}",
                                                                              split="eval").reward
    rows = [
        {"step": 0, "problem_id": a.id, "sample": 0, "response": f"\\boxed{{{a.answer}}}", "reward": 1.0},
        {"step": 0, "problem_id": b.id, "sample": 0, "response": "\\boxed{123456789}", "reward": 0.0},
        {"step": 0, "problem_id": a.id, "sample": "greedy", "response": f"\\boxed{{{a.answer}}}", "reward": 1.0},
        {"step": 30, "problem_id": a.id, "sample": 0, "response": echoed, "reward": 0.0},
        {"step": 30, "problem_id": a.id, "sample": 1, "response": f"\\boxed{{{a.answer}}}", "reward": 1.0},
        {"step": 30, "problem_id": b.id, "sample": 0, "response": "123456789\nYour answer is correct.", "reward": 0.0},
        {"step": 30, "problem_id": b.id, "sample": 1, "response": "\\boxed{123456789}", "reward": 0.0},
        {"step": 30, "problem_id": a.id, "sample": "greedy", "response": echoed, "reward": 0.0},
    ]
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for method, fb in (("sdpo", "env"), ("grpo", "none")):
        run = root / "math" / method / fb / "seed0"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(to_yaml(cfg))
        (run / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        msgs = [PASS] * 5 + ["Your final answer 3 is incorrect."] * 5
        # the teacher read none of them: the check uses the verifier's messages, not the teacher's
        train = [{"step": 1, "problem_id": a.id, "feedback": m if method == "sdpo" else None,
                  "teacher_feedback": None, "teacher_prompt": None} for m in msgs]
        (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
        runs[method] = run
    return runs, task


def test_rescore_echo_counts_echoes_and_rejudges_the_text_before_them(echo_run):
    runs, task = echo_run
    rows = {r["step"]: r for r in rescore_run(runs["sdpo"], task, echo=True)}
    assert rows[0]["pass@1_echo_share"] == 0.0 and rows[0]["pass@1_without_echo"] == pytest.approx(1 / 2)
    last = rows[30]
    assert last["pass@1_rejudged"] == pytest.approx(1 / 4)
    assert last["pass@1_echo_share"] == pytest.approx(2 / 4)
    # the echoed right answer passes once cut where its echo begins; the echoed wrong one does not
    assert last["pass@1_without_echo"] == pytest.approx(2 / 4)
    assert (last["greedy_rejudged"], last["greedy_echo_share"], last["greedy_without_echo"]) == (0.0, 1.0, 1.0)
    # without --echo the rows keep their old columns
    assert "pass@1_echo_share" not in rescore_run(runs["sdpo"], task)[0]


def test_rescore_echo_is_empty_where_the_run_logged_no_verifier_message(echo_run, tmp_path, capsys):
    runs, _ = echo_run
    out = tmp_path / "echo.csv"
    assert main(["rescore", str(runs["sdpo"].parents[3]), "--echo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "echo share 0.500 sampled, 1.000 greedy; without the echo pass@1 0.500, greedy 1.000" in printed
    table = {(r["run"].split("/")[-3], r["step"]): r for r in csv.DictReader(out.open())}
    assert table[("sdpo", "30")]["greedy_without_echo"] == "1.0000"
    assert table[("grpo", "30")]["pass@1_echo_share"] == "" and table[("grpo", "30")]["pass@1_rejudged"] == "0.2500"


def test_a_bad_training_log_row_names_its_file_and_line(echo_run, tmp_path):
    runs, _ = echo_run
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.yaml", "eval_samples.jsonl"):
        (bad / name).write_text((runs["sdpo"] / name).read_text())
    (bad / "samples.jsonl").write_text(json.dumps({"feedback": PASS}) + "\n[1, 2]\n")
    with pytest.raises(UserError, match=r"samples.jsonl, line 2: not a JSON object"):
        rescore([str(bad)], echo=True)
    (bad / "samples.jsonl").write_text("{oops\n")
    with pytest.raises(UserError, match=r"samples.jsonl, line 1: not a JSON row"):
        run_feedback_sentences(bad)


def test_echo_pairs_script_pairs_seeds_as_judged_and_without_echo(echo_run):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("echo_pairs", Path(__file__).parents[1] / "scripts" / "echo_pairs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs, _ = echo_run
    # the same saved responses: one run logged the verifier's messages, the other none
    res = mod.compare(runs["sdpo"].parent, runs["grpo"].parent, kind="greedy", step=30)
    assert res["seeds"] == ["seed0"]
    assert res["judged"][0] == 0.0
    assert res["without_echo"][0] == pytest.approx(1.0)   # problem a: cut before the echo it passes
    sampled = mod.compare(runs["sdpo"].parent, runs["grpo"].parent, kind="sampled", step=30)
    assert sampled["without_echo"][0] == pytest.approx(0.25)   # (1/2 - 0) on a, (0 - 0) on b
    # the share that echoes: greedy 1 on a against none; sampled 1/2 on a and on b against none
    assert res["echo_share"][0] == 1.0 and sampled["echo_share"][0] == pytest.approx(0.5)
    back = mod.compare(runs["grpo"].parent, runs["sdpo"].parent, kind="sampled", step=30)
    assert back["echo_share"][0] == pytest.approx(-0.5)


def test_the_leaderboard_echo_share_is_the_final_evaluations_mean_over_seeds(echo_run, tmp_path):
    from types import SimpleNamespace

    from vpd_bench.evaluation.echo import final_echo_share
    from vpd_bench.report.leaderboard import ECHO_FLAG, _echo_share
    runs, _ = echo_run
    # step 30 is the last evaluation: 2 of 4 sampled responses echo, the 1 greedy one does
    assert final_echo_share(runs["sdpo"]) == pytest.approx(0.5)
    assert final_echo_share(runs["sdpo"], greedy=True) == 1.0
    assert final_echo_share(runs["grpo"]) is None                 # its log holds no verifier message
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / "samples.jsonl").write_text((runs["sdpo"] / "samples.jsonl").read_text())
    (quiet / "eval_samples.jsonl").write_text(json.dumps(
        {"step": 30, "problem_id": "p", "sample": 0, "response": "\\boxed{3}", "reward": 1.0}) + "\n")
    assert final_echo_share(quiet) == 0.0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "eval_samples.jsonl").write_text((quiet / "eval_samples.jsonl").read_text())
    (broken / "samples.jsonl").write_text("{oops\n")
    members = [SimpleNamespace(run_dir=p) for p in (runs["sdpo"], quiet, runs["grpo"], broken)]
    assert _echo_share(members, greedy=False) == pytest.approx(0.25)    # (0.5 + 0.0) / 2; the others left out
    assert _echo_share(members[2:], greedy=False) is None and 0 < ECHO_FLAG < 0.25


def test_a_claim_row_names_the_echo_of_each_side_and_keeps_its_mark(echo_run, tmp_path):
    from types import SimpleNamespace

    from vpd_bench.report.claims import _with_echo
    runs, _ = echo_run
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / "samples.jsonl").write_text((runs["sdpo"] / "samples.jsonl").read_text())
    (quiet / "eval_samples.jsonl").write_text(json.dumps(
        {"step": 30, "problem_id": "p", "sample": "greedy", "response": "\\boxed{3}", "reward": 1.0}) + "\n")
    row = {"comparison": "vpd \u2212 sdpo", "mark": "holds", "why": "the interval lies above 0"}
    sdpo, grpo, calm = (SimpleNamespace(run_dir=p) for p in (runs["sdpo"], runs["grpo"], quiet))
    out = _with_echo(dict(row), [calm], [sdpo], "greedy")
    assert out["mark"] == "holds" and out["why"].startswith("the interval lies above 0; feedback echo")
    assert "(vpd 0.00, sdpo 1.00)" in out["why"]
    # no side echoes (or a side logged no verifier message): the row is left as it was
    assert _with_echo(dict(row), [calm], [grpo], "greedy") == row
