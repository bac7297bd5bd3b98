"""The ablations table (ablations.csv / .md): every variant and feedback source against the runs it changes.

A synthetic tree (task math, no per-problem samples, so intervals are t-intervals over seeds):
sdpo on env+sibling (the plain runs); sdpo[distill_stop=false] in the same folder; sdpo on env (a
feedback source); sdpo[p=0.3] on noisy (no plain sdpo there: paired with env+sibling); sdft[...] in
its own folder `reference`; a partial variant run and grpo, which are not ablations.
"""
import csv
import json
import math

import pytest

from vpd_bench.evaluation.results import load_runs
from vpd_bench.evaluation.stats import t_interval
from vpd_bench.report import write_report
from vpd_bench.report.ablations import COLUMNS, ablation_table

PLAIN = {0: 0.30, 1: 0.35, 2: 0.40}
MIDDLE = {0: 0.32, 1: 0.36, 2: 0.38}


def write_run(root, folder, feedback, seed, final, middle=0.3, status="complete", task="math", sources=None):
    method = folder.split("[")[0]
    d = root / task / folder / feedback / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"seed: {seed}\nmethod:\n  name: {method}\ntask:\n  name: {task}\n"
                                   f"feedback:\n  name: {feedback}\n"
                                   + (f"  sources: [{', '.join(sources)}]\n" if sources else ""))
    history = [{"step": s, "wall_time_s": float(s), "metrics": {"pass@1": v, "k": 4, "n_problems": 8}}
               for s, v in ((0, 0.25), (10, middle), (20, final))]
    (d / "eval.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 20, "reward_mean": 0.5}) + "\n")
    (d / "results.json").write_text(json.dumps({
        "schema_version": 1, "status": status, "steps_completed": 20, "wall_time_s": 20.0,
        "run": {"method": method, "task": task, "feedback": feedback, "seed": seed},
        "git": {"revision": "abc1234", "dirty": False}, "eval_history": history,
        "final": history[-1]["metrics"], "higher_is_better": {"pass@1": True}}))


def make_tree(root):
    for s in (0, 1, 2):
        write_run(root, "sdpo", "env+sibling", s, PLAIN[s], MIDDLE[s])
        write_run(root, "sdpo[distill_stop=false]", "env+sibling", s, PLAIN[s] + (0.10, 0.05, 0.12)[s],
                  MIDDLE[s] + (0.01, 0.03, 0.02)[s])
        write_run(root, "sdpo", "env", s, PLAIN[s] - (0.02, 0.04, 0.03)[s])
        write_run(root, "sdft", "reference", s, 0.5)
        write_run(root, "grpo", "none", s, 0.6)
    write_run(root, "sdpo[p=0.3]", "noisy", 0, 0.20)
    write_run(root, "sdpo[p=0.3]", "noisy", 1, 0.30)
    write_run(root, "sdft[distill_stop=false]", "reference", 1, 0.58)
    write_run(root, "sdpo[prior=x]", "env+sibling", 7, 0.9)           # no seed in common: no row
    write_run(root, "vpd[prior=initial]", "env+sibling", 0, 0.1)      # no plain vpd at all: no row
    write_run(root, "sdpo[distill_stop=false]", "env+sibling", 3, 0.99, status="partial")
    return root


def rows_by_key(root):
    return {(r["method"], r["feedback"]): r for r in ablation_table(load_runs(root), "pass@1")}


def test_each_ablation_is_paired_with_the_runs_it_changes(tmp_path):
    got = rows_by_key(make_tree(tmp_path / "runs"))
    assert set(got) == {("sdpo[distill_stop=false]", "env+sibling"), ("sdpo", "env"), ("sdpo[p=0.3]", "noisy"),
                        ("sdft[distill_stop=false]", "reference")}
    row = got[("sdpo[distill_stop=false]", "env+sibling")]                  # the partial seed 3 is left out
    assert (row["against"], row["against_feedback"], row["n_seeds"]) == ("sdpo", "env+sibling", 3)
    est, lo, hi = t_interval([0.10, 0.05, 0.12])
    assert row["diff_final"] == pytest.approx(0.09) == pytest.approx(est)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi)) and lo > 0
    assert row["diff_middle"] == pytest.approx(0.02)
    assert row["final_mean"] == pytest.approx(0.35 + 0.09) and row["against_final_mean"] == pytest.approx(0.35)
    source = got[("sdpo", "env")]                                           # a feedback source: vs the headline one
    assert (source["against"], source["against_feedback"]) == ("sdpo", "env+sibling")
    assert source["diff_final"] == pytest.approx(-0.03) and source["ci_high"] < 0
    noisy = got[("sdpo[p=0.3]", "noisy")]                                   # no plain sdpo on noisy: env+sibling
    assert (noisy["against_feedback"], noisy["n_seeds"]) == ("env+sibling", 2)
    assert noisy["diff_final"] == pytest.approx(((0.20 - 0.30) + (0.30 - 0.35)) / 2)
    one = got[("sdft[distill_stop=false]", "reference")]       # one seed, no per-problem samples: no interval
    assert one["n_seeds"] == 1 and one["diff_final"] == pytest.approx(0.08)
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])


def test_on_a_task_whose_comparison_read_a_sibling_the_sources_pair_with_the_sibling_runs(tmp_path):
    """The cold start: the comparison ran on ``sibling`` (4 seeds), the feedback ablation adds
    3 seeds of ``env`` and one of ``env+sibling``, and the noisy runs corrupt the sibling (their
    ``feedback.sources``). Every row pairs with the sibling runs, none with env+sibling."""
    root = tmp_path / "runs"
    for s in (0, 1, 2):
        write_run(root, "sdpo", "sibling", s, PLAIN[s], task="cold_start")
        write_run(root, "sdpo", "env", s, PLAIN[s] - 0.10, task="cold_start")
        write_run(root, "sdpo[p=0.3]", "noisy", s, PLAIN[s] - 0.05, task="cold_start", sources=["sibling"])
    write_run(root, "sdpo", "sibling", 3, 0.5, task="cold_start")        # the comparison has more seeds
    write_run(root, "sdpo", "env+sibling", 0, 0.9, task="cold_start")
    got = {(r["method"], r["feedback"]): r for r in ablation_table(load_runs(root), "pass@1")}
    assert set(got) == {("sdpo", "env"), ("sdpo", "env+sibling"), ("sdpo[p=0.3]", "noisy")}
    assert {r["against_feedback"] for r in got.values()} == {"sibling"}
    assert got[("sdpo", "env")]["diff_final"] == pytest.approx(-0.10) and got[("sdpo", "env")]["n_seeds"] == 3
    assert got[("sdpo[p=0.3]", "noisy")]["diff_final"] == pytest.approx(-0.05)
    assert got[("sdpo", "env+sibling")]["diff_final"] == pytest.approx(0.6) and got[("sdpo", "env+sibling")]["n_seeds"] == 1


def test_the_report_writes_the_ablations_table(tmp_path):
    written = write_report(make_tree(tmp_path / "runs"), tmp_path / "report")
    with open(written["ablations.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["feedback"]) for r in rows] == [
        ("sdft[distill_stop=false]", "reference"), ("sdpo", "env"), ("sdpo[distill_stop=false]", "env+sibling"),
        ("sdpo[p=0.3]", "noisy")]
    assert float(rows[2]["diff_final"]) == pytest.approx(0.09) and rows[0]["ci_low"] == ""
    md = written["ablations.md"].read_text()
    assert "| math | sdpo[distill_stop=false] | env+sibling | sdpo (env+sibling) | 3 |" in md
    assert "Ablations against the runs they change" in written["report.html"].read_text()


def test_no_ablations_the_table_says_so(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "grpo", "none", 0, 0.5)
    written = write_report(root, tmp_path / "report")
    assert "no ablation has a seed in common" in written["ablations.md"].read_text()
    with open(written["ablations.csv"]) as f:
        assert list(csv.reader(f)) == [COLUMNS]
