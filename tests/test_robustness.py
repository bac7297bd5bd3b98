"""The noise-robustness table and figure (issue 19 §3): final score vs the noise level p.

A synthetic tree (task math, 8 held-out problems): sdpo on env+sibling (p = 0) and on noisy at
p = 0.3 and 0.6 (grid labels sdpo[p=...]), vpd on noisy at its configured p = 0.3 (plain label) and
on env+sibling; a sdpo[distill_stop=false] run on noisy that must be left out, a partial run that
must be left out, and grpo (no feedback) that has no curve.
"""
import csv
import json
import math

import pytest

from vpd_bench.evaluation.results import load_runs
from vpd_bench.report import write_report
from vpd_bench.report.robustness import noise_table


def write_run(root, folder, feedback, seed, final, p=None, status="complete"):
    method = folder.split("[")[0]
    d = root / "math" / folder / feedback / f"seed{seed}"
    d.mkdir(parents=True)
    fb = f"feedback:\n  name: {feedback}\n" + (f"  p: {p}\n  sources: [env, sibling]\n" if p is not None else "")
    (d / "config.yaml").write_text(f"seed: {seed}\nmethod:\n  name: {method}\ntask:\n  name: math\n{fb}")
    history = [{"step": 0, "wall_time_s": 0.0, "metrics": {"pass@1": 0.25, "k": 4, "n_problems": 8}},
               {"step": 10, "wall_time_s": 10.0, "metrics": {"pass@1": final, "k": 4, "n_problems": 8}}]
    (d / "eval.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 10, "reward_mean": 0.5}) + "\n")
    (d / "results.json").write_text(json.dumps({
        "schema_version": 1, "status": status, "steps_completed": 10, "wall_time_s": 10.0,
        "run": {"method": method, "task": "math", "feedback": feedback, "seed": seed},
        "git": {"revision": "abc1234", "dirty": False}, "eval_history": history,
        "final": history[-1]["metrics"], "higher_is_better": {"pass@1": True}}))


def make_tree(root):
    for s in (0, 1, 2):
        write_run(root, "sdpo", "env+sibling", s, 0.50 + 0.02 * s)
        write_run(root, "sdpo[p=0.3]", "noisy", s, 0.40 + 0.02 * s, p=0.3)
        write_run(root, "sdpo[p=0.6]", "noisy", s, 0.30 + 0.02 * s, p=0.6)
        write_run(root, "sdpo[distill_stop=false]", "noisy", s, 0.99, p=0.3)
        write_run(root, "vpd", "env+sibling", s, 0.45)
        write_run(root, "grpo", "none", s, 0.6)
    write_run(root, "vpd", "noisy", 0, 0.35, p=0.3)
    write_run(root, "vpd", "noisy", 1, 0.37, p=0.3)
    write_run(root, "vpd", "noisy", 2, 0.99, p=0.3, status="partial")
    return root


def test_noise_table_pairs_each_noise_level_with_the_clean_source(tmp_path):
    rows = noise_table(load_runs(make_tree(tmp_path / "runs")), "pass@1")
    got = {(r["method"], r["p"]): r for r in rows}
    assert set(got) == {("sdpo", 0.0), ("sdpo", 0.3), ("sdpo", 0.6), ("vpd", 0.0), ("vpd", 0.3)}
    assert got[("sdpo", 0.0)]["feedback"] == "env+sibling" and got[("sdpo", 0.3)]["feedback"] == "noisy"
    for p, base in ((0.0, 0.50), (0.3, 0.40), (0.6, 0.30)):       # the distill_stop run (0.99) is left out
        row = got[("sdpo", p)]
        assert row["n_seeds"] == 3 and row["final_mean"] == pytest.approx(base + 0.02)
        assert row["final_se"] == pytest.approx(0.02 / math.sqrt(3))           # s.d. 0.02 over 3 seeds
    vpd = got[("vpd", 0.3)]                                          # the partial seed-2 run is left out
    assert vpd["n_seeds"] == 2 and vpd["seeds"] == "0 1" and vpd["final_mean"] == pytest.approx(0.36)


def test_the_report_writes_the_robustness_csv_and_figure(tmp_path):
    written = write_report(make_tree(tmp_path / "runs"), tmp_path / "report")
    assert "figures/noise_robustness.png" in written and written["figures/noise_robustness.png"].stat().st_size > 0
    with open(written["robustness.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["p"]) for r in rows] == [("sdpo", "0"), ("sdpo", "0.3"), ("sdpo", "0.6"),
                                                     ("vpd", "0"), ("vpd", "0.3")]


def test_no_noisy_runs_no_figure_and_a_stale_table_goes(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "sdpo", "env+sibling", 0, 0.5)
    out = tmp_path / "report"
    out.mkdir()
    (out / "robustness.csv").write_text("stale\n")
    written = write_report(root, out)
    assert "robustness.csv" not in written and not (out / "robustness.csv").exists()
    assert not any("noise_robustness" in k for k in written)
