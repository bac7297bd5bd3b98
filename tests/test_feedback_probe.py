"""`vpd-bench probe` (issue 19 §1): does the teacher read the feedback? Teacher-prompt vs plain
resamples of the failed responses, per feedback source, with intervals over problems."""
import dataclasses
import json
import math
import random
import re

import pytest

from vpd_bench.cli import main
from vpd_bench.rollout.engine import Generation

TINY = ["--model", "tiny-random", "--task", "debug"]


class FeedbackEngine:
    """A stand-in for the rollout engine on the debug task: from the student prompt it answers right
    with probability ``p``; from a teacher prompt (one that carries feedback or a demonstration) it
    answers right always when ``reads`` (a teacher that reads the feedback), else with the same ``p``."""

    def __init__(self, tokenizer, reads: bool, p: float = 0.3):
        self.tokenizer, self.reads, self.p = tokenizer, reads, p
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, stop=(), seed=0,
                 greedy=False, ignore_eos=False):
        self.calls.append((len(prompts), seed))
        rng = random.Random(seed)
        texts = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            letter = re.search(r"letter '(.)'", text).group(1)
            teacher = "Feedback on your earlier attempt" in text or "Here is a correct solution" in text
            for _ in range(n):
                right = (teacher and self.reads) or rng.random() < self.p
                texts.append(f"{letter}{letter}" if right else "zz")
        out = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        return Generation(out, [[0.0] * len(r) for r in out], ["eos"] * len(out))


@pytest.fixture
def fake_engine(monkeypatch):
    """Install a FeedbackEngine in every Trainer; returns a setter for ``reads``."""
    from vpd_bench.training.loop import Trainer
    made = {}

    def use(reads: bool):
        def build(self):
            made["engine"] = FeedbackEngine(self.tokenizer, reads)
            return made["engine"]
        monkeypatch.setattr(Trainer, "_build_engine", build)
        return made
    return use


def _probe(tmp_path, *args, name="probe"):
    out = tmp_path / name
    code = main(["probe", *TINY, "--out", str(out), *args])
    return code, out


def _load(out):
    result = json.loads((out / "probe.json").read_text())
    rows = [json.loads(x) for x in (out / "probe_samples.jsonl").read_text().splitlines()]
    return result, rows


def test_runs_end_to_end_on_the_tiny_model_and_writes_three_files(tmp_path, capsys):
    code, out = _probe(tmp_path, "--problems", "3", "--samples", "2", "--sources", "env,hint",
                       "rollout.max_new_tokens=4")
    assert code == 0
    result, rows = _load(out)
    assert result["problems"] == 3 and result["samples"] == 2 and result["split"] == "train"
    assert result["problem_ids"] == ["debug-0", "debug-1", "debug-2"]       # the first training problems
    assert result["config"]["rollout"]["max_new_tokens"] == 4 and result["sampling"]["max_new_tokens"] == 4
    assert set(result["git"]) >= {"revision", "dirty"} and "torch" in result["versions"]
    assert result["elapsed_s"] > 0 and result["intervals"]["seed"] == 0
    assert list(result["sources"]) == ["env", "hint"]
    student = [r for r in rows if r["prompt_kind"] == "student"]
    assert len(student) == 6 and [r["sample"] for r in student] == [0, 1] * 3
    table = (out / "probe.md").read_text()
    assert "| env |" in table and "| hint |" in table and "**Student**" in table
    assert "probe.md" in capsys.readouterr().out


def test_counts_are_consistent(tmp_path, fake_engine):
    made = fake_engine(reads=False)
    code, out = _probe(tmp_path, "--problems", "12", "--samples", "4", "--sources", "env,sibling,env+sibling")
    assert code == 0
    result, rows = _load(out)
    s = result["student"]
    student = [r for r in rows if r["prompt_kind"] == "student"]
    assert s["n"] == len(student) == 48
    assert s["passes"] == sum(r["reward"] >= 1.0 for r in student) and s["failed"] == s["n"] - s["passes"]
    assert 0 < s["passes"] < s["n"]
    by_problem: dict[str, list[bool]] = {}
    for r in student:
        by_problem.setdefault(r["problem_id"], []).append(r["reward"] >= 1.0)
    mixed = {pid for pid, g in by_problem.items() if any(g) and not all(g)}
    assert s["mixed_groups"] == len(mixed) > 0
    failed_in_mixed = sum(not ok for pid in mixed for ok in by_problem[pid])
    src = result["sources"]
    assert src["sibling"]["with_feedback"] == src["sibling"]["scored"] == failed_in_mixed
    assert src["sibling"]["without_feedback"] == s["failed"] - failed_in_mixed
    assert src["env"]["with_feedback"] == src["env+sibling"]["with_feedback"] == s["failed"]   # debug always says why
    plain = [r for r in rows if r["prompt_kind"] == "plain"]
    assert len(plain) == s["failed"] == result["plain_all_failed"]["n"]
    for name, r in src.items():
        teacher = [x for x in rows if x["prompt_kind"] == "teacher" and x["source"] == name]
        assert len(teacher) == r["scored"] == r["teacher"]["n"] == r["plain"]["n"]
        assert r["teacher"]["passes"] == sum(x["reward"] >= 1.0 for x in teacher)
    # the sibling rows are the failed responses of mixed groups, each with a passing demonstration
    sib = [x for x in rows if x["source"] == "sibling"]
    assert {x["problem_id"] for x in sib} == mixed and all(x["demonstration"] for x in sib)
    # resampling is chunked and seeded as documented: the plain resample is one call at seed + 1
    assert (min(32, s["failed"]), 1) in made["engine"].calls


def _control(tmp_path, fake_engine, reads: bool, sources: str) -> dict:
    """The source rows of a probe of 16 problems x 4 samples with the stand-in engine."""
    fake_engine(reads=reads)
    code, out = _probe(tmp_path, "--problems", "16", "--samples", "4", "--sources", sources)
    assert code == 0
    assert all(f"| {name} |" in (out / "probe.md").read_text() for name in sources.split(","))
    return _load(out)[0]["sources"]


def test_the_instrument_sees_a_teacher_that_reads_the_feedback(tmp_path, fake_engine):
    """Positive control: the teacher prompt makes every answer right, the plain prompt does not."""
    for r in _control(tmp_path, fake_engine, True, "env,sibling").values():
        assert r["status"] == "ok" and r["teacher"]["rate"] == 1.0
        assert r["plain"]["rate"] < 0.6
        assert r["difference"]["estimate"] == pytest.approx(r["teacher"]["rate"] - r["plain"]["rate"])
        assert r["difference"]["ci"][0] > 0          # the interval excludes no advantage


def test_a_teacher_that_ignores_the_feedback_shows_no_advantage(tmp_path, fake_engine):
    """Negative control: teacher and plain prompts answer alike; the difference interval covers 0."""
    for r in _control(tmp_path, fake_engine, False, "env,env+sibling").values():
        lo, hi = r["difference"]["ci"]
        assert r["status"] == "ok" and lo < 0 < hi and r["teacher"]["rate"] < 0.6


def test_a_source_the_task_cannot_give_is_na_and_alone_an_error(tmp_path, fake_engine, monkeypatch, capsys):
    from vpd_bench.tasks.debug import DebugTask
    fake_engine(reads=True)
    original = DebugTask.train_problems
    monkeypatch.setattr(DebugTask, "train_problems",
                        lambda self: [dataclasses.replace(p, hint=None) for p in original(self)])
    code, out = _probe(tmp_path, "--problems", "4", "--samples", "2", "--sources", "hint,env")
    assert code == 0
    result, _ = _load(out)
    hint = result["sources"]["hint"]
    assert hint["status"] == "n/a" and "hint" in hint["reason"] and hint["with_feedback"] == 0
    assert result["sources"]["env"]["status"] == "ok"
    assert "| hint | 0 of" in (out / "probe.md").read_text() and "n/a: " in (out / "probe.md").read_text()
    capsys.readouterr()
    code, out = _probe(tmp_path, "--problems", "4", "--sources", "hint", name="hint-only")
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot give any of the sources" in err and "hint" in err
    assert not (out / "probe.json").exists()


def test_teacher_prompts_cut_away_by_the_length_cap_are_counted_and_na(tmp_path, fake_engine):
    fake_engine(reads=True)
    code, out = _probe(tmp_path, "--problems", "4", "--samples", "2", "--sources", "env",
                       "teacher_prompt.max_length=8")
    assert code == 0
    env = _load(out)[0]["sources"]["env"]
    assert env["status"] == "n/a" and "cut every teacher prompt away" in env["reason"]
    assert env["with_feedback"] == env["prompt_cut_away"] == env["failed"] > 0 and env["scored"] == 0


def test_unknown_source_is_an_error_listing_the_known_ones(tmp_path, capsys):
    code, out = _probe(tmp_path, "--sources", "env,sibbling")
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown feedback source 'sibbling'" in err and "Did you mean 'sibling'" in err
    assert all(name in err for name in ("env", "env+sibling", "hint", "self_critique"))
    assert not out.exists()


def test_bad_numbers_and_options_are_errors(tmp_path, capsys):
    assert _probe(tmp_path, "--problems", "0")[0] == 2
    assert _probe(tmp_path, "--samples", "0")[0] == 2
    assert _probe(tmp_path, "--seed", "-1")[0] == 2
    assert _probe(tmp_path, "rollout.max_new_tokenz=4")[0] == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_feedback_overrides_go_to_the_sources_that_have_the_key():
    from vpd_bench.errors import UserError
    from vpd_bench.training.feedback_probe import compose_configs
    base, cfgs = compose_configs("debug", "tiny-random", None, None, ["env", "self_critique"],
                                 ["feedback.critique_max_new_tokens=8", "feedback.max_chars=100"])
    assert cfgs["self_critique"].feedback.critique_max_new_tokens == 8
    assert cfgs["env"].feedback.max_chars == cfgs["self_critique"].feedback.max_chars == 100
    assert "critique_max_new_tokens" not in cfgs["env"].feedback
    with pytest.raises(UserError, match="no source in --sources env"):
        compose_configs("debug", "tiny-random", None, None, ["env"], ["feedback.critique_max_new_tokens=8"])


def test_cluster_bootstrap_pools_values_and_widens_for_correlated_clusters():
    from vpd_bench.evaluation.stats import cluster_bootstrap
    est, lo, hi = cluster_bootstrap([[1, 1, 1, 1], [0], [0], [1, 0]])
    assert est == pytest.approx(5 / 8) and lo < est < hi
    # the same 40 values as 10 perfectly correlated clusters of 4, or as 40 clusters of 1
    values = [1.0] * 4 + [0.0] * 6
    _, lo_c, hi_c = cluster_bootstrap([[v] * 4 for v in values], seed=1)
    _, lo_i, hi_i = cluster_bootstrap([[v] for v in values for _ in range(4)], seed=1)
    assert hi_c - lo_c > 1.5 * (hi_i - lo_i)
    est, lo, hi = cluster_bootstrap([[1.0, 0.0]])          # one cluster: no interval
    assert est == 0.5 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in cluster_bootstrap([[], [None]]))
