"""Runs that survive damage (issue 14 §2): checksummed checkpoints, logs rebuilt from the checkpoint,
a full disk as a clear error, a failing verifier scored as an error."""
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from vpd_bench.cli import main

TINY = ["rollout.max_new_tokens=8", "train.prompts_per_step=2", "eval.num_problems=2", "eval.samples=1",
        "eval.greedy=false"]


def run(out, *args):
    return main(["run", "--methods", "grpo", "--task", "debug", "--model", "tiny-random", "--out", str(out),
                 "train.checkpoint_every=2", "train.keep_checkpoints=3", *TINY, *args])


def the_run(out):
    return Path(out) / "debug" / "grpo" / "none" / "seed0"


def steps_logged(d):
    return [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip().startswith("{")
            and x.strip().endswith("}")]


def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_fallback(tmp_path, capsys):
    assert run(tmp_path, "--steps", "4") == 0
    d = the_run(tmp_path)
    state = d / "checkpoints" / "step_000004" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 8])
    state.write_bytes(bytes(data))
    assert run(tmp_path, "--steps", "6", "--resume") == 2
    err = capsys.readouterr().err
    assert "state.pt is damaged" in err and "step_000002" in err


def test_a_truncated_log_is_rebuilt_from_the_checkpoint(tmp_path):
    assert run(tmp_path, "--steps", "4") == 0
    d = the_run(tmp_path)
    text = (d / "metrics.jsonl").read_text()
    cut = text.index('"step": 2') + 5                       # mid-line inside step 2's record
    (d / "metrics.jsonl").write_text(text[:cut])
    assert run(tmp_path, "--steps", "6", "--resume") == 0
    assert steps_logged(d) == [1, 2, 3, 4, 5, 6]
    assert json.loads((d / "results.json").read_text())["status"] == "complete"


def test_a_full_disk_during_a_checkpoint_is_a_clear_error_and_keeps_the_last_one(tmp_path, capsys, monkeypatch):
    assert run(tmp_path, "--steps", "2") == 0
    d = the_run(tmp_path)
    import torch
    real_save = torch.save

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed (No space left on device)")
    monkeypatch.setattr(torch, "save", full)
    assert run(tmp_path, "--steps", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "inline_container" not in err
    assert (d / "checkpoints" / "LATEST").read_text().strip() == "step_000002"
    assert not list((d / "checkpoints").glob(".step_*"))
    monkeypatch.setattr(torch, "save", real_save)
    (d / ".metrics.jsonl.tmp-12345").write_text("half")       # a leftover of a crash mid-write
    assert run(tmp_path, "--steps", "4", "--resume") == 0
    assert not list(d.glob(".*.tmp-*")) and steps_logged(d) == [1, 2, 3, 4]


def test_a_verifier_that_fails_on_one_sample_scores_it_as_an_error():
    from vpd_bench.evaluation.policy import safe_verify
    from vpd_bench.tasks.base import Problem, Verdict

    class Flaky:
        def verify(self, problem, text, split="train"):
            if text == "boom":
                raise ZeroDivisionError("bad")
            return Verdict(1.0, "pass")

        def verify_batch(self, problems, texts, split="train"):
            return [self.verify(p, t, split) for p, t in zip(problems, texts)]
    probs = [Problem(id=str(i), prompt="") for i in range(3)]
    out = safe_verify(Flaky(), probs, ["ok", "boom", "ok"], "train")
    assert [v.status for v in out] == ["pass", "error", "pass"] and out[1].reward == 0.0
    assert "ZeroDivisionError" in out[1].feedback


def test_a_failing_feedback_source_leaves_its_feedback_out_and_the_run_goes_on(make_trainer, caplog):
    from _toy import step_on, toy_batch
    t = make_trainer("sdpo", feedback="env+sibling", overrides=["method.teacher=live"])
    env = t.feedback.sources[0]

    def broken(batch, ctx):
        raise KeyError("no such field")
    env.build = broken
    batch = toy_batch(t)
    m = step_on(t, batch)
    assert "failed" in caplog.text and m["loss"] == m["loss"]
    # the failures got no env text; the successes' siblings still reach the other responses
    assert all(not (fb.text or "") for fb in batch.feedback)


def test_resume_without_a_checkpoint_starts_afresh_instead_of_duplicating_steps(tmp_path):
    assert run(tmp_path, "--steps", "2", "train.keep_checkpoints=0") == 0      # checkpoints removed at the end
    d = the_run(tmp_path)
    results = d / "results.json"
    results.unlink()                                                          # as if killed before the end
    assert run(tmp_path, "--steps", "3", "--resume") == 0
    assert steps_logged(d) == [1, 2, 3]
    evals = [json.loads(x)["step"] for x in (d / "eval.jsonl").read_text().splitlines()]
    assert evals == sorted(set(evals)) and evals[0] == 0


def test_a_checkpoint_is_a_hugging_face_model_folder(tmp_path):
    """checkpoints/step_N/ loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained and holds the
    trained weights; the trainer's own state sits beside it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vpd_bench.config import compose
    from vpd_bench.models.loading import load_model
    assert run(tmp_path, "--steps", "2", "train.lr=1e-2") == 0
    ckpt = the_run(tmp_path) / "checkpoints" / "step_000002"
    assert (ckpt / "config.json").exists() and list(ckpt.glob("*.safetensors")) and (ckpt / "state.pt").exists()
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok("abc")["input_ids"]
    initial = load_model(compose("grpo", "debug", model="tiny-random").model).model
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert "model" not in state and "optimizer" in state
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, dict(initial.named_parameters())[n])]
    assert moved                                   # the trained weights, not the initial ones
    meta = json.loads((ckpt / "meta.json").read_text())
    assert {"config.json", "state.pt"} <= set(meta["sha256"])


def test_a_lora_checkpoint_holds_a_peft_adapter_folder_and_resumes(tmp_path):
    lora = ["train.lora.enabled=true", "train.lora.r=4"]
    assert run(tmp_path, "--steps", "2", *lora) == 0
    ckpt = the_run(tmp_path) / "checkpoints" / "step_000002"
    assert (ckpt / "adapter" / "adapter_config.json").exists()
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists()
    assert run(tmp_path, "--steps", "3", "--resume", *lora) == 0
    assert steps_logged(the_run(tmp_path)) == [1, 2, 3]


@contextmanager
def lock_held_by_a_child(run_dir):
    """A child process that holds the run folder's lock until the block ends (then it exits)."""
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from vpd_bench.launch.sweep import RunLock\n"
        f"with RunLock(Path({str(run_dir)!r})):\n    print('held', flush=True); sys.stdin.readline()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.communicate("\n", timeout=60)


def test_a_run_being_written_by_another_process_is_refused_naming_it(tmp_path, capsys):
    """Two processes resuming one run folder would interleave its files: the second is refused with
    the first's pid, and the lock goes when its holder ends (here: a child that holds it, then exits)."""
    from vpd_bench.launch.sweep import RunLock, run_holder
    d = the_run(tmp_path)
    with lock_held_by_a_child(d) as holder:
        assert run_holder(d) == holder.pid
        assert run(tmp_path, "--steps", "2") == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "being written by another process" in err
        assert not (d / "metrics.jsonl").exists()                   # nothing of the run was touched
    assert run_holder(d) is None                                    # released when the holder ended
    assert run(tmp_path, "--steps", "2") == 0
    assert run_holder(d) is None                                    # and by a run that finished
    with RunLock(d):                                                # the same process may take it again
        pass


def test_a_sweep_leaves_a_run_another_process_is_writing_and_counts_it_failed(tmp_path, caplog):
    from vpd_bench.launch.sweep import RunSpec, run_local
    spec = RunSpec(method="grpo", task="debug", feedback=None, seed=0, model="tiny-random",
                   overrides=["train.steps=1", *TINY], out=str(tmp_path))
    d = spec.run_dir()
    with lock_held_by_a_child(d) as holder:
        with caplog.at_level("ERROR", logger="vpd_bench"):
            assert run_local([spec, spec], jobs=2) == 2
        assert f"another process (pid {holder.pid}) is writing it" in caplog.text
        assert not (d / "stdout.log").exists()                      # no subprocess was started on it


def test_only_rank_zero_of_a_multi_process_launch_takes_the_run_lock(tmp_path, monkeypatch):
    """Under accelerate/torchrun every rank runs the same command on the same run folder; rank 0
    alone writes it (training/distributed.py), so the followers must not be refused by its lock."""
    from vpd_bench.launch.sweep import RunLock, run_holder
    d = tmp_path / "run"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with RunLock(d):
        assert run_holder(d) is not None
        monkeypatch.setenv("RANK", "1")
        with RunLock(d):                       # a follower: no lock taken, no refusal
            pass
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(Exception, match="being written by another process"):
            with RunLock(d):                   # a second single-process writer still is refused
                pass


def test_a_run_killed_by_sigkill_is_reported_with_the_out_of_memory_hint(tmp_path, caplog, monkeypatch):
    """A run the kernel's out-of-memory killer ends leaves no traceback: the sweep must say what
    SIGKILL usually means and what to lower, not only an exit code."""
    import subprocess
    from vpd_bench.launch import sweep
    from vpd_bench.launch.sweep import RunSpec, exit_reason, run_local
    real_popen = subprocess.Popen

    def killed(cmd, **kw):          # the run process dies of SIGKILL as an OOM-killed one does
        return real_popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], **kw)

    monkeypatch.setattr(sweep.subprocess, "Popen", killed)
    specs = [RunSpec(method="grpo", task="debug", feedback=None, seed=s, model="tiny-random",
                     overrides=["train.steps=1", *TINY], out=str(tmp_path)) for s in (0, 1)]
    with caplog.at_level("ERROR", logger="vpd_bench"):
        assert run_local(specs, jobs=2) == 2
    assert "killed by SIGKILL" in caplog.text and "out-of-memory" in caplog.text
    assert "train.micro_batch_size" in caplog.text and "resumes it" in caplog.text
    assert exit_reason(3) == "exit 3" and exit_reason(-15) == "killed by SIGTERM"


def test_git_info_names_the_changed_tracked_files(tmp_path):
    """A dirty tree is recorded with the paths that differ, so that a run made beside a rewritten
    results table can be told from one made with changed code."""
    import shutil
    import subprocess

    from vpd_bench.evaluation.results import git_info
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True,  # noqa: E731
                                    env={**__import__("os").environ, **env})
    run("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "table.md").write_text("| a |\n")
    run("add", ".")
    run("commit", "-qm", "init")
    clean = git_info(tmp_path)
    assert clean["dirty"] is False and "dirty_paths" not in clean and len(clean["revision"]) == 40
    (tmp_path / "table.md").write_text("| b |\n")
    (tmp_path / "new.txt").write_text("untracked files do not count\n")
    dirty = git_info(tmp_path)
    assert dirty["dirty"] is True and dirty["dirty_paths"] == ["table.md"]
