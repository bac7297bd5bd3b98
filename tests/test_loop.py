"""The training loop, the run store and resume, on the tiny in-process model."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vpd_bench.cli import main

TINY = ["rollout.max_new_tokens=12", "train.prompts_per_step=2", "eval.num_problems=4", "eval.samples=2"]
HEALTH = ["step", "loss", "reward_mean", "pass_rate", "no_signal_frac", "masked_teacher_frac", "divergence",
          "entropy", "response_len", "grad_norm", "teacher_trunc_frac", "teacher_gain", "wall_time_s", "lr"]


def run_cli(*args):
    return main(["run", "--task", "debug", "--model", "tiny-random", *args, *TINY])


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def the_run(out, method="grpo", feedback="none"):
    return Path(out) / "debug" / method / feedback / "seed0"


def test_resume_gives_identical_losses(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    common = ["--methods", "grpo", "train.checkpoint_every=2", "rollout.max_new_tokens=32", "train.group_size=8"]
    assert run_cli(*common, "--steps", "4", "--out", str(a)) == 0
    assert run_cli(*common, "--steps", "2", "--out", str(b)) == 0
    assert run_cli(*common, "--steps", "4", "--out", str(b), "--resume") == 0
    la, lb = losses(the_run(a)), losses(the_run(b))
    assert len(la) == 4 and la == lb
    assert any(x != 0 for x in la)          # the comparison is not between empty updates


@pytest.mark.parametrize("extra", [[], ["method.prior_timing=rollout"]])   # rollout: the buffer carries priors
def test_resume_is_exact_for_vpd_across_an_estep(tmp_path, extra):
    a, b = tmp_path / "A", tmp_path / "B"
    common = ["--methods", "vpd", "method.estep_every=2", "train.checkpoint_every=1", "rollout.max_new_tokens=24",
              *extra]
    assert run_cli(*common, "--steps", "4", "--out", str(a)) == 0
    assert run_cli(*common, "--steps", "3", "--out", str(b)) == 0
    assert run_cli(*common, "--steps", "4", "--out", str(b), "--resume") == 0
    ra = [json.loads(x) for x in (the_run(a, "vpd", "env+sibling") / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (the_run(b, "vpd", "env+sibling") / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r.get("estep_loss") for r in ra] == [r.get("estep_loss") for r in rb]


def test_existing_run_needs_resume(tmp_path, capsys):
    assert run_cli("--methods", "grpo", "--steps", "1", "--out", str(tmp_path)) == 0
    # complete runs are skipped, partial ones need --resume
    assert run_cli("--methods", "grpo", "--steps", "2", "--out", str(tmp_path)) == 2
    assert "--resume" in capsys.readouterr().err


def test_run_folder_contents(tmp_path):
    assert run_cli("--methods", "sdpo", "--steps", "2", "--out", str(tmp_path)) == 0
    d = the_run(tmp_path, "sdpo", "env+sibling")
    for name in ["config.yaml", "metrics.jsonl", "samples.jsonl", "results.json", "eval.jsonl", "train.log"]:
        assert (d / name).stat().st_size > 0, name
    res = json.loads((d / "results.json").read_text())
    assert res["status"] == "complete" and res["steps_completed"] == 2 and res["run"]["seed"] == 0
    assert res["versions"]["torch"] and "revision" in res["git"] and res["config"]["method"]["name"] == "sdpo"
    assert [e["step"] for e in res["eval_history"]] == [0, 2]
    sample = json.loads((d / "samples.jsonl").read_text().splitlines()[0])
    for key in ["prompt", "response", "reward", "status", "feedback", "teacher_prompt"]:
        assert key in sample
    assert (d / "checkpoints" / "LATEST").exists()


@pytest.mark.parametrize("method", ["grpo", "dr_grpo", "sdpo", "sdft", "opsd", "vpd", "grpo_sdpo"])
def test_every_method_runs_six_steps_with_health_signals(tmp_path, method):
    assert run_cli("--methods", method, "--steps", "6", "--out", str(tmp_path), "eval.samples=0",
                   "eval.greedy=false") == 0
    d = next(tmp_path.glob(f"debug/{method}/*/seed0"))
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        for key in HEALTH:
            assert key in r, (method, key)
        assr = r["loss"]
        assert assr is not None
    if method == "vpd":
        assert "estep_loss" in rows[4] and "delta" in rows[4] and "estep_loss" not in rows[3]


def test_vpd_estep_runs_exactly_every_f_iterations(tmp_path):
    assert run_cli("--methods", "vpd", "--steps", "10", "--out", str(tmp_path), "method.estep_every=5",
                   "eval.samples=0", "eval.greedy=false", "train.checkpoint_every=10") == 0
    rows = [json.loads(x) for x in (the_run(tmp_path, "vpd", "env+sibling") / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "estep_loss" in r] == [5, 10]


def test_sigkill_mid_run_resumes_and_completes(tmp_path):
    out = tmp_path / "K"
    args = [sys.executable, "-m", "vpd_bench", "run", "--methods", "grpo", "--task", "debug", "--model", "tiny-random",
            "--steps", "40", "--out", str(out), "train.checkpoint_every=3", "rollout.max_new_tokens=24",
            "eval.samples=0", "eval.greedy=false"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = the_run(out) / "metrics.jsonl"
    latest = the_run(out) / "checkpoints" / "LATEST"
    # kill it past its first checkpoint (step 3) and mid-way between checkpoints; wait for that
    # however loaded the machine is (a fixed 60 s once killed a run that had not reached step 3)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed mid-run"
    assert latest.exists(), "the run did not reach its first checkpoint within 600 s"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    d = the_run(out)
    # nothing half-written: every file parses, no temp file is left as the real name
    for line in metrics.read_text().splitlines():
        json.loads(line)
    assert (d / "checkpoints" / "LATEST").exists()
    assert run_cli("--methods", "grpo", "--steps", "40", "--out", str(out), "--resume", "train.checkpoint_every=3",
                   "rollout.max_new_tokens=24", "eval.samples=0", "eval.greedy=false") == 0
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert json.loads((d / "results.json").read_text())["status"] == "complete"


def test_sweep_expands_and_skips_completed_runs(tmp_path, capsys):
    args = ["--methods", "grpo,sdft", "--steps", "1", "--seeds", "2", "--out", str(tmp_path), "eval.samples=0",
            "eval.greedy=false"]
    assert run_cli(*args) == 0
    dirs = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("debug/*/*/seed*"))
    assert dirs == ["debug/grpo/none/seed0", "debug/grpo/none/seed1", "debug/sdft/reference/seed0",
                    "debug/sdft/reference/seed1"]
    stamp = (tmp_path / dirs[0] / "metrics.jsonl").stat().st_mtime_ns
    assert run_cli(*args) == 0
    assert (tmp_path / dirs[0] / "metrics.jsonl").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("feedback", ["env", "sibling", "hint", "self_critique", "noisy", "env+sibling"])
def test_every_feedback_source_runs(tmp_path, feedback):
    assert run_cli("--methods", "sdpo", "--feedback", feedback, "--steps", "2", "--out", str(tmp_path),
                   "eval.samples=0", "eval.greedy=false", "train.group_size=2", "feedback.max_chars=200") == 0
    d = the_run(tmp_path, "sdpo", feedback)
    res = json.loads((d / "results.json").read_text())
    assert res["run"]["feedback"] == feedback and res["config"]["feedback"]["name"] == feedback


EVAL_SAMPLE_KEYS = {"step", "problem_id", "sample", "response", "reward", "status", "answer", "feedback"}


def test_every_evaluation_logs_each_problem_and_sample(tmp_path):
    """eval_samples.jsonl: one row per held-out problem x sample (and the greedy one) at every
    evaluation, and the rows re-score to the pass@1 / greedy numbers of eval.jsonl."""
    assert run_cli("--methods", "grpo", "--steps", "4", "--out", str(tmp_path), "eval.every=2",
                   "eval.greedy=true") == 0
    d = the_run(tmp_path)
    rows = [json.loads(x) for x in (d / "eval_samples.jsonl").read_text().splitlines()]
    evals = {e["step"]: e["metrics"] for e in map(json.loads, (d / "eval.jsonl").read_text().splitlines())}
    assert sorted(evals) == [0, 2, 4]
    for row in rows:
        assert set(row) == EVAL_SAMPLE_KEYS
        assert row["status"] in ("pass", "fail", "timeout", "error", "format") and 0.0 <= row["reward"] <= 1.0
    for step, m in evals.items():
        at = [r for r in rows if r["step"] == step]
        problems = sorted({r["problem_id"] for r in at})
        assert len(problems) == 4 and len(at) == 4 * (2 + 1)
        for pid in problems:
            assert sorted(str(r["sample"]) for r in at if r["problem_id"] == pid) == ["0", "1", "greedy"]
        sampled = [r for r in at if r["sample"] != "greedy"]
        per_problem = [sum(r["reward"] >= 1 for r in sampled if r["problem_id"] == p) / 2 for p in problems]
        assert sum(per_problem) / 4 == pytest.approx(m["pass@1"])
        greedy = [r["reward"] >= 1 for r in at if r["sample"] == "greedy"]
        assert sum(greedy) / 4 == pytest.approx(m["greedy"])


def test_resuming_under_another_git_revision_warns_and_records_both(tmp_path, monkeypatch, caplog):
    import vpd_bench.training.loop as loop
    common = ["--methods", "grpo", "train.checkpoint_every=1", "--out", str(tmp_path)]
    monkeypatch.setattr(loop, "git_info", lambda: {"revision": "a" * 40, "dirty": False})
    assert run_cli(*common, "--steps", "2") == 0
    # the interrupted run's results.json is gone: the checkpoint alone must tell the revision
    (the_run(tmp_path) / "results.json").unlink()
    monkeypatch.setattr(loop, "git_info", lambda: {"revision": "b" * 40, "dirty": False})
    with caplog.at_level("WARNING", logger="vpd_bench"):
        assert run_cli(*common, "--steps", "3", "--resume") == 0
    assert any("checkpoint was written at aaaaaaaaaaaa" in r.getMessage() and "bbbbbbbbbbbb" in r.getMessage()
               for r in caplog.records)
    git = json.loads((the_run(tmp_path) / "results.json").read_text())["git"]
    assert git["revision"] == "b" * 40 and git["resumed_from"]["revision"] == "a" * 40
    # the same revision resumes quietly
    caplog.clear()
    with caplog.at_level("WARNING", logger="vpd_bench"):
        assert run_cli(*common, "--steps", "4", "--resume") == 0
    assert not any("checkpoint was written" in r.getMessage() for r in caplog.records)
    git = json.loads((the_run(tmp_path) / "results.json").read_text())["git"]
    assert git["revision"] == "b" * 40 and git["resumed_from"]["revision"] == "a" * 40   # still on record


def test_resume_cuts_eval_samples_back_to_the_checkpoint(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    common = ["--methods", "grpo", "train.checkpoint_every=2", "eval.every=1"]
    assert run_cli(*common, "--steps", "3", "--out", str(a)) == 0
    assert run_cli(*common, "--steps", "2", "--out", str(b)) == 0
    assert run_cli(*common, "--steps", "3", "--out", str(b), "--resume") == 0
    ra, rb = ((the_run(x) / "eval_samples.jsonl").read_text() for x in (a, b))
    assert ra == rb and sorted({json.loads(x)["step"] for x in ra.splitlines()}) == [0, 1, 2, 3]


def test_a_multi_run_invocation_ends_with_its_leaderboard(tmp_path, capsys):
    assert run_cli("--methods", "grpo,sdpo", "--seeds", "2", "--steps", "2", "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    tail = out[out.rindex("== vpd-bench: 4 run(s)"):]
    table = [line for line in tail.splitlines() if line.startswith("|")]
    assert "initial" in table[0] and "final" in table[0] and "vs grpo" in table[0]
    assert any("| grpo" in line for line in table[2:]) and any("| sdpo" in line for line in table[2:])
    assert "Smallest detectable difference" in tail
    assert tail.rstrip().splitlines()[-1].startswith("Full report") and "vpd-bench report" in tail


def test_closing_summary_says_when_a_run_had_no_learning_signal(tmp_path):
    from vpd_bench.report.summary import closing_summary, no_signal
    run = tmp_path / "code" / "grpo" / "none" / "seed0"
    run.mkdir(parents=True)
    rows = [{"step": s, "no_signal_frac": 1.0 if s != 3 else 0.5, "reward_mean": 0.0} for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.jsonl").write_text(json.dumps({"step": 0, "metrics": {"pass@1": 0.0}}) + "\n")
    assert no_signal(run) == {"flat_steps": 5, "steps": 6, "all_fail": True}
    text = closing_summary([run], tmp_path, ["grpo"])
    assert "No learning signal" in text and "5/6 steps" in text and "failing" in text
    assert "qwen2.5-coder-0.5b" in text
    mixed = [{"step": s, "no_signal_frac": 0.5, "reward_mean": 0.3} for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mixed))
    assert no_signal(run) is None and "No learning signal" not in closing_summary([run], tmp_path, ["grpo"])


def test_vpd_without_esteps_is_sdpo_with_a_live_teacher(tmp_path):
    """VPD's M-step is SDPO's loss with the live shared weights as teacher: with the E-step never
    firing, the two runs agree step for step on the same seed (losses and held-out scores)."""
    assert run_cli("--methods", "vpd", "--steps", "3", "--out", str(tmp_path / "V"), "method.estep_every=1000",
                   "eval.every=3") == 0
    assert run_cli("--methods", "sdpo", "--steps", "3", "--out", str(tmp_path / "S"), "method.teacher=live",
                   "eval.every=3") == 0
    rv = [json.loads(x) for x in (the_run(tmp_path / "V", "vpd", "env+sibling") / "metrics.jsonl").read_text().splitlines()]
    rs = [json.loads(x) for x in (the_run(tmp_path / "S", "sdpo", "env+sibling") / "metrics.jsonl").read_text().splitlines()]
    assert len(rv) == 3 and [r["loss"] for r in rv] == [r["loss"] for r in rs]
    assert any(r["loss"] != 0 for r in rv) and all("estep_loss" not in r or r["estep_loss"] is None for r in rv)
    ev = (the_run(tmp_path / "V", "vpd", "env+sibling") / "eval_samples.jsonl").read_text()
    es = (the_run(tmp_path / "S", "sdpo", "env+sibling") / "eval_samples.jsonl").read_text()
    assert ev == es


def test_parallel_plan_uses_every_core_once():
    from vpd_bench.launch.sweep import parallel_plan, parse_jobs
    assert parallel_plan(1, "auto", cores=2) == (1, 2)        # one run: in-process, both cores
    assert parallel_plan(4, "auto", cores=2) == (2, 1)        # a sweep: one single-threaded run per core
    assert parallel_plan(12, "auto", cores=16) == (12, 1)
    assert parallel_plan(3, "auto", cores=16) == (3, 5)
    assert parallel_plan(4, 1, cores=2) == (1, 2) and parallel_plan(4, 3, cores=2) == (3, 1)
    assert parse_jobs("auto") == "auto" and parse_jobs("2") == 2
    with pytest.raises(Exception, match="positive"):
        parse_jobs("0")


def test_an_in_process_sweep_logs_the_threads_it_runs_with(caplog):
    """--jobs 1 runs in this process: the plan names torch's thread count (OMP_NUM_THREADS=1 gives
    1), not the cores' share a subprocess would get."""
    import logging
    from vpd_bench.launch.sweep import run_local
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with caplog.at_level(logging.INFO, logger="vpd_bench"):
            assert run_local([], jobs=1) == 0
    finally:
        torch.set_num_threads(before)
    assert "1 parallel job(s) x 1 thread(s) each" in caplog.text


def test_validate_prints_the_parallel_plan(tmp_path, capsys):
    assert main(["validate", "--methods", "grpo,sdpo", "--task", "debug", "--model", "tiny-random", "--seeds", "2",
                 "--out", str(tmp_path), "--jobs", "2"]) == 0
    assert "2 parallel job(s) x" in capsys.readouterr().out


def test_results_record_the_revision_the_run_started_with(tmp_path, monkeypatch):
    """A long sweep outlives commits: results.json names the code the run executed, read at its start."""
    import vpd_bench.training.loop as loop
    revisions = iter([{"revision": "aaaa", "dirty": False}, {"revision": "bbbb", "dirty": False}])
    monkeypatch.setattr(loop, "git_info", lambda: next(revisions))
    assert run_cli("--methods", "grpo", "--steps", "1", "--out", str(tmp_path)) == 0
    assert json.loads((the_run(tmp_path) / "results.json").read_text())["git"]["revision"] == "aaaa"


def test_a_non_finite_gradient_skips_the_update_and_keeps_the_weights(make_trainer):
    """An inf gradient through the clip's scale would turn every weight into nan; the update is
    skipped instead, counted, and three in a row stop the run with advice."""
    t = make_trainer("grpo")
    before = [p.detach().clone() for p in t.model.parameters()]
    params = [p for p in t.model.parameters() if p.requires_grad]

    def bad_grads():
        for p in params:
            p.grad = torch.zeros_like(p)
        params[0].grad.view(-1)[0] = float("inf")
    bad_grads()
    norm = t.optimizer_step()
    assert not math.isfinite(norm) and t.skipped_updates == 1
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, t.model.parameters()))
    assert all(p.grad is None for p in params)
    for p in params:                                       # a finite update resets the streak
        p.grad = torch.ones_like(p) * 1e-3
    assert math.isfinite(t.optimizer_step()) and t.nonfinite_streak == 0
    bad_grads()
    t.optimizer_step()
    bad_grads()
    t.optimizer_step()
    bad_grads()
    with pytest.raises(FloatingPointError, match="in a row"):
        t.optimizer_step()
    assert t.skipped_updates == 4
