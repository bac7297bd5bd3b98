"""The claims table: each paper claim marked from paired differences by one stated rule.

A synthetic runs tree (task math, 3 seeds, 8 held-out problems x 4 samples, per-problem samples),
built so that each difference is a constant shift of whole samples and its value is known by hand:
  grpo                 start base, end base + 1 sample      -> positive control +0.25
  vpd                  end base + 2                         -> vpd - grpo +0.25, vpd - sdpo +0.75
  sdpo                 steps 2 / 5 / 8: base + 2 / + 1 / + 0, end base - 1 -> middle (step 5) - final +0.50,
                       grpo - sdpo +0.50
  vpd[prior=student]   end base + 1; vpd[prior=initial] end base -> student - initial +0.25
  vpd[estep_every=5]   end base;     vpd[estep_every=1] end base + 1 -> F5 - F1 = -0.25
  (no vpd[estep_every=10], no cold_start runs)
The teacher probe: vpd's log-ratio moves by 0.5 + 0.1 seed, sdpo's by 0.05 seed.
"""
import csv
import json
import math

import pytest

from vpd_bench.evaluation.results import load_runs
from vpd_bench.report import write_report
from vpd_bench.report.claims import FAILS, HOLDS, UNTESTABLE, evaluate_claims, mark
from vpd_bench.report.leaderboard import headline_feedback

PROBLEMS = [f"p{i}" for i in range(8)]
SEEDS = (0, 1, 2)


def base(seed):
    return [1 + (i + seed) % 2 for i in range(len(PROBLEMS))]       # 1 or 2 passing samples of 4


def write_run(root, method_folder, feedback, seed, counts_by_step, probe=None, task="math", method_config=None):
    """A complete run whose evaluation at each step passes counts_by_step[step][i] of 4 samples on problem i."""
    method = method_folder.split("[")[0]
    d = root / task / method_folder / feedback / f"seed{seed}"
    d.mkdir(parents=True)
    extra = "".join(f"  {k}: {v}\n" for k, v in (method_config or {}).items())
    (d / "config.yaml").write_text(f"seed: {seed}\nmethod:\n  name: {method}\n{extra}task:\n  name: {task}\n")
    history, samples = [], []
    for step, counts in sorted(counts_by_step.items()):
        history.append({"step": step, "wall_time_s": float(step),
                        "metrics": {"pass@1": sum(counts) / (4 * len(PROBLEMS)), "k": 4, "n_problems": len(PROBLEMS)}})
        for pid, c in zip(PROBLEMS, counts):
            samples += [{"step": step, "problem_id": pid, "sample": k, "reward": 1.0 if k < c else 0.0}
                        for k in range(4)]
    (d / "eval.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (d / "eval_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 10, "reward_mean": 0.5}) + "\n")
    if probe is not None:
        (d / "teacher_probe.jsonl").write_text("".join(
            json.dumps({"step": s, "probe_logratio": v, "teacher_pass": 0.5, "student_pass": 0.4}) + "\n"
            for s, v in probe))
    (d / "results.json").write_text(json.dumps({
        "schema_version": 1, "status": "complete", "steps_completed": 10, "wall_time_s": 10.0,
        "run": {"method": method, "task": task, "feedback": feedback, "seed": seed},
        "git": {"revision": "abc1234", "dirty": False}, "eval_history": history,
        "final": history[-1]["metrics"], "higher_is_better": {"pass@1": True}}))


def shift(seed, k):
    return [c + k for c in base(seed)]


def make_tree(root, seeds=SEEDS):
    for s in seeds:
        write_run(root, "grpo", "none", s, {0: base(s), 10: shift(s, 1)})
        write_run(root, "vpd", "env+sibling", s, {0: base(s), 10: shift(s, 2)},
                  probe=[(0, 0.1), (5, 0.3), (10, 0.1 + 0.5 + 0.1 * s)])
        write_run(root, "sdpo", "env+sibling", s, {0: base(s), 2: shift(s, 2), 5: shift(s, 1), 8: base(s),
                                                   10: shift(s, -1)},
                  probe=[(0, 0.2), (10, 0.2 + 0.05 * s)])
        write_run(root, "vpd[prior=student]", "env+sibling", s, {0: base(s), 10: shift(s, 1)})
        write_run(root, "vpd[prior=initial]", "env+sibling", s, {0: base(s), 10: base(s)})
        write_run(root, "vpd[estep_every=5]", "env+sibling", s, {0: base(s), 10: base(s)})
        write_run(root, "vpd[estep_every=1]", "env+sibling", s, {0: base(s), 10: shift(s, 1)})
    return root


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    rows = evaluate_claims(load_runs(make_tree(tmp_path_factory.mktemp("runs"))))
    return {(r["claim"], r["task"]): r for r in rows}


@pytest.mark.parametrize("lo, hi, n, effect, expected", [
    (0.01, 0.20, 3, None, HOLDS),
    (0.01, 0.20, 3, 0.045, HOLDS),
    (-0.20, -0.01, 3, 0.045, FAILS),          # the opposite is significant
    (-0.01, 0.03, 3, 0.045, FAILS),           # holds 0, but excludes the paper's +0.045
    (-0.05, 0.10, 3, 0.045, UNTESTABLE),      # holds 0 and reaches it: under-powered
    (-0.05, 0.10, 3, None, UNTESTABLE),       # no size to rule out
    (0.01, 0.20, 1, None, UNTESTABLE),        # one seed is not a comparison across seeds
    (math.nan, math.nan, 3, None, UNTESTABLE),
])
def test_the_mark_rule(lo, hi, n, effect, expected):
    assert mark(lo, hi, n, effect)[0] == expected


def test_the_positive_control_and_the_method_comparisons_are_oriented_as_claimed(claims):
    pc = claims[("positive_control", "math")]
    assert pc["estimate"] == pytest.approx(0.25) and pc["ci_low"] == pytest.approx(0.25)
    assert pc["mark"] == HOLDS and pc["n_seeds"] == 3 and pc["ci_method"] == "bootstrap(seeds x problems)"
    assert claims[("vpd_vs_grpo", "math")]["estimate"] == pytest.approx(0.25)
    assert claims[("vpd_vs_grpo", "math")]["mark"] == HOLDS
    assert claims[("vpd_vs_sdpo", "math")]["estimate"] == pytest.approx(0.75)
    below = claims[("sdpo_below_grpo", "math")]
    assert below["estimate"] == pytest.approx(0.5) and below["comparison"].startswith("grpo")
    late = claims[("sdpo_late_decline", "math")]
    assert late["estimate"] == pytest.approx(0.5) and late["mark"] == HOLDS     # the middle is step 5 (of 2, 5, 8)


def test_ablation_claims_pair_variants_of_one_method_and_a_reversal_does_not_hold(claims):
    prior = claims[("student_prior", "math")]
    assert prior["estimate"] == pytest.approx(0.25) and prior["mark"] == HOLDS
    assert prior["comparison"] == "vpd[prior=student] \u2212 vpd[prior=initial]"
    f1 = claims[("estep_5_vs_1", "math")]
    assert f1["estimate"] == pytest.approx(-0.25) and f1["mark"] == FAILS
    f10 = claims[("estep_5_vs_10", "math")]
    assert f10["mark"] == UNTESTABLE and "vpd[estep_every=10]" in f10["why"]
    cold = claims[("cold_start_grpo", "")]
    assert cold["mark"] == UNTESTABLE and cold["n_seeds"] == 0


def test_an_ablation_that_ran_only_the_other_value_pairs_with_the_plain_runs_at_the_default(tmp_path):
    """cpu_vpd_prior runs only vpd[prior=initial]: the comparison's plain vpd runs, whose config holds
    prior=student, are the other side; a variant folder at the same prior (distill_stop=false) is not."""
    root = tmp_path / "runs"
    defaults = {"prior": "student", "estep_every": 5}
    for s in SEEDS:
        write_run(root, "vpd", "env+sibling", s, {0: base(s), 10: shift(s, 2)}, method_config=defaults)
        write_run(root, "vpd[distill_stop=false]", "env+sibling", s, {0: base(s), 10: shift(s, -1)},
                  method_config=defaults)
        write_run(root, "vpd[prior=initial]", "env+sibling", s, {0: base(s), 10: shift(s, 1)})
        write_run(root, "vpd[estep_every=10]", "env+sibling", s, {0: base(s), 10: base(s)})
    claims = {(r["claim"], r["task"]): r for r in evaluate_claims(load_runs(root))}
    prior = claims[("student_prior", "math")]
    assert prior["estimate"] == pytest.approx(0.25) and prior["n_seeds"] == 3     # plain vpd +2 vs initial +1
    f10 = claims[("estep_5_vs_10", "math")]
    assert f10["estimate"] == pytest.approx(0.5)                                 # plain vpd +2 vs F=10 +0
    assert claims[("estep_5_vs_1", "math")]["mark"] == UNTESTABLE                # no F = 1 runs
    # plain runs whose config is not at the asked value are not a side
    other = tmp_path / "other"
    for s in SEEDS:
        write_run(other, "vpd", "env+sibling", s, {0: base(s), 10: shift(s, 2)},
                  method_config={"prior": "initial", "estep_every": 5})
        write_run(other, "vpd[prior=initial]", "env+sibling", s, {0: base(s), 10: shift(s, 1)})
    rows = {(r["claim"], r["task"]): r for r in evaluate_claims(load_runs(other))}
    assert rows[("student_prior", "math")]["mark"] == UNTESTABLE


def test_method_claims_are_asked_again_at_a_setting_both_methods_ran_alike(tmp_path):
    """sdpo[distill_stop=false] and vpd[distill_stop=false] give a second VPD-vs-SDPO row at that
    setting; vpd[prior=initial], which no sdpo run shares, and grpo, which ran no variant, give none."""
    root = make_tree(tmp_path / "runs")
    for s in SEEDS:
        write_run(root, "vpd[distill_stop=false]", "env+sibling", s, {0: base(s), 10: shift(s, 1)})
        write_run(root, "sdpo[distill_stop=false]", "env+sibling", s, {0: base(s), 10: shift(s, 2)})
        write_run(root, "sdpo[distill_stop=false]", "env", s, {0: base(s), 10: base(s)})   # vpd has no env runs
    rows = evaluate_claims(load_runs(root))
    vs_sdpo = [r for r in rows if r["claim"] == "vpd_vs_sdpo"]
    assert [r["comparison"] for r in vs_sdpo] == ["vpd \u2212 sdpo",
                                                  "vpd[distill_stop=false] \u2212 sdpo[distill_stop=false]"]
    at = vs_sdpo[1]
    # one sample of 4 fewer on every problem and seed: -0.25 exactly, on the source both share
    assert at["estimate"] == pytest.approx(-0.25) and at["ci_high"] == pytest.approx(-0.25)
    assert at["feedback"] == "env+sibling" and at["n_seeds"] == 3 and at["mark"] == FAILS
    assert vs_sdpo[0]["estimate"] == pytest.approx(0.75)                        # the plain row is unchanged
    assert len([r for r in rows if r["claim"] == "vpd_vs_grpo"]) == 1
    assert len([r for r in rows if r["claim"] == "sdpo_below_grpo"]) == 1
    assert not any("prior=initial" in r["comparison"] and r["claim"] == "vpd_vs_sdpo" for r in rows)


def test_teacher_growth_compares_each_seeds_probe_change_with_sdpos(claims):
    row = claims[("teacher_grows", "math")]
    # per seed: (0.5 + 0.1 s) - 0.05 s = 0.5 + 0.05 s -> 0.50, 0.55, 0.60; t(2) interval by hand
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert row["estimate"] == pytest.approx(0.55)
    assert row["ci_low"] == pytest.approx(0.55 - half) and row["ci_high"] == pytest.approx(0.55 + half)
    assert row["mark"] == HOLDS and row["n_seeds"] == 3


def test_one_seed_is_not_testable_and_every_claim_is_listed(tmp_path):
    rows = evaluate_claims(load_runs(make_tree(tmp_path / "runs", seeds=(0,))))
    assert {r["claim"] for r in rows} >= {"positive_control", "vpd_vs_grpo", "student_prior", "cold_start_grpo"}
    pc = next(r for r in rows if r["claim"] == "positive_control")
    assert pc["mark"] == UNTESTABLE and "1 paired seed" in pc["why"]


def test_the_report_writes_the_claims_table(tmp_path):
    written = write_report(make_tree(tmp_path / "runs"), tmp_path / "report")
    assert {"claims.md", "claims.csv"} <= set(written)
    with open(written["claims.csv"]) as fh:
        table = list(csv.DictReader(fh))
    control = next(r for r in table if r["claim"] == "positive_control")
    assert control["mark"] == HOLDS and float(control["estimate"]) == pytest.approx(0.25)
    md = written["claims.md"].read_text()
    assert "**does not hold**" in md and "Rule:" in md
    assert "The paper&#x27;s claims" in written["report.html"].read_text() or \
        "The paper's claims" in written["report.html"].read_text()


def test_the_cold_start_asks_the_method_comparisons_beside_the_papers_mirror_claim(tmp_path):
    """On task cold_start (the regime where the base model's teacher reads a sibling) VPD vs GRPO and
    VPD vs SDPO are asked as on any task, and the paper's "GRPO beats VPD from a cold start" is their
    mirror: the same paired difference with its sign turned."""
    root = tmp_path / "runs"
    for s in SEEDS:
        write_run(root, "grpo", "none", s, {0: base(s), 10: shift(s, 2)}, task="cold_start")
        write_run(root, "vpd", "sibling", s, {0: base(s), 10: shift(s, 1)}, task="cold_start")
        write_run(root, "sdpo", "sibling", s, {0: base(s), 5: shift(s, 1), 10: base(s)}, task="cold_start")
    rows = {(r["claim"], r["task"]): r for r in evaluate_claims(load_runs(root))}
    vs_grpo, mirror = rows[("vpd_vs_grpo", "cold_start")], rows[("cold_start_grpo", "cold_start")]
    assert vs_grpo["estimate"] == pytest.approx(-0.25) and vs_grpo["mark"] == FAILS
    assert mirror["estimate"] == pytest.approx(0.25) and mirror["mark"] == HOLDS
    assert vs_grpo["ci_low"] == pytest.approx(-mirror["ci_high"])
    assert rows[("vpd_vs_sdpo", "cold_start")]["estimate"] == pytest.approx(0.25)
    assert rows[("vpd_vs_sdpo", "cold_start")]["feedback"] == "sibling"
    assert rows[("sdpo_late_decline", "cold_start")]["estimate"] == pytest.approx(0.25)


def test_a_feedback_ablation_with_fewer_seeds_does_not_take_the_comparisons_place(tmp_path):
    """The cold start's comparison reads ``sibling`` (3 seeds here); its feedback ablation adds one
    seed of ``env+sibling``, where VPD loses. The claims stay on the source the comparison ran on;
    only when env+sibling has as many runs does the SDPO default win the tie."""
    root = tmp_path / "runs"
    for s in SEEDS:
        write_run(root, "vpd", "sibling", s, {0: base(s), 10: shift(s, 1)}, task="cold_start")
        write_run(root, "sdpo", "sibling", s, {0: base(s), 10: base(s)}, task="cold_start")
    write_run(root, "vpd", "env+sibling", 0, {0: base(0), 10: base(0)}, task="cold_start")
    write_run(root, "sdpo", "env+sibling", 0, {0: base(0), 10: shift(0, 1)}, task="cold_start")
    rows = {r["claim"]: r for r in evaluate_claims(load_runs(root)) if r["task"] == "cold_start"}
    assert rows["vpd_vs_sdpo"]["feedback"] == "sibling"
    assert rows["vpd_vs_sdpo"]["estimate"] == pytest.approx(0.25) and rows["vpd_vs_sdpo"]["n_seeds"] == 3
    for s in (1, 2):                              # now 6 runs on each source: the tie goes to env+sibling
        write_run(root, "vpd", "env+sibling", s, {0: base(s), 10: base(s)}, task="cold_start")
        write_run(root, "sdpo", "env+sibling", s, {0: base(s), 10: shift(s, 1)}, task="cold_start")
    rows = {r["claim"]: r for r in evaluate_claims(load_runs(root)) if r["task"] == "cold_start"}
    assert rows["vpd_vs_sdpo"]["feedback"] == "env+sibling"
    assert rows["vpd_vs_sdpo"]["estimate"] == pytest.approx(-0.25)


def test_the_headline_feedback_is_the_source_with_most_runs_ties_to_env_sibling():
    assert headline_feedback({"sibling": 10, "env": 6, "env+sibling": 6, "noisy": 12, "none": 20}) == "sibling"
    assert headline_feedback({"sibling": 6, "env+sibling": 6, "env": 6}) == "env+sibling"
    assert headline_feedback({"env": 3, "sibling": 3}) == "env"                      # then the feedback order
    assert headline_feedback({"none": 5, "reference": 5, "noisy": 4}) is None
    assert headline_feedback({}) is None


def test_a_setting_one_method_ran_labelled_pairs_with_the_other_methods_plain_runs_at_that_value(tmp_path):
    """vpd[teacher=ema] against plain sdpo, whose own config holds teacher=ema (its default): a
    VPD-vs-SDPO row at that setting; plain sdpo runs at another teacher give none."""
    root = tmp_path / "runs"
    for s in SEEDS:
        write_run(root, "sdpo", "env+sibling", s, {0: base(s), 10: shift(s, 1)}, method_config={"teacher": "ema"})
        write_run(root, "vpd", "env+sibling", s, {0: base(s), 10: base(s)}, method_config={"teacher": "trained"})
        write_run(root, "vpd[teacher=ema]", "env+sibling", s, {0: base(s), 10: shift(s, 2)})
    rows = [r for r in evaluate_claims(load_runs(root)) if r["claim"] == "vpd_vs_sdpo"]
    assert [r["comparison"] for r in rows] == ["vpd \u2212 sdpo", "vpd[teacher=ema] \u2212 sdpo (at teacher=ema)"]
    assert rows[0]["estimate"] == pytest.approx(-0.25)
    assert rows[1]["estimate"] == pytest.approx(0.25) and rows[1]["n_seeds"] == 3 and rows[1]["mark"] == HOLDS
    other = tmp_path / "other"
    for s in SEEDS:
        write_run(other, "sdpo", "env+sibling", s, {0: base(s), 10: base(s)}, method_config={"teacher": "live"})
        write_run(other, "vpd[teacher=ema]", "env+sibling", s, {0: base(s), 10: shift(s, 1)})
    assert not any("teacher=ema" in r["comparison"] for r in evaluate_claims(load_runs(other)))
