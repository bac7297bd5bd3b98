"""The report: loading a runs tree, the leaderboard numbers, the written files.

The synthetic tree (task debug), laid out as the run store writes it:
  grpo/none/seed0,1                   complete, evaluations at steps 0 / 5 / 10 (wall 0 / 50 / 100 s);
                                      GRPO reads no feedback: folder "none", results.json still says env+sibling
  vpd/env+sibling/seed0,1             complete, same evaluation schedule
  sdpo/env+sibling/seed0              partial (results.json status "partial"), evaluations at 0 / 5
  sdpo/env_sibling/seed1              complete but no evaluation, in a folder spelt env_sibling
  grpo seed0 metrics.jsonl line 3 is corrupt; vpd seed1 eval.jsonl ends in a truncated line
"""
import csv
import json
import math
import re

import pytest

from vpd_bench.errors import UserError
from vpd_bench.cli import main as cli_main
from vpd_bench.report import (ReportWarning, build_leaderboard, leaderboard_markdown, load_run, load_runs,
                              method_style, score_of, summary_table, write_report)

# pass@1 at steps 0, 5, 10 per (method, seed)
SCORES = {
    ("grpo", 0): [0.2, 0.5, 0.4],
    ("grpo", 1): [0.2, 0.3, 0.6],
    ("vpd", 0): [0.2, 0.7, 0.6],
    ("vpd", 1): [0.2, 0.4, 0.8],
}
# reward_mean of the last training step that logged one
LAST_REWARD = {("grpo", 0): 0.45, ("grpo", 1): 0.55, ("vpd", 0): 0.6, ("vpd", 1): 0.7}


def write_run(root, method, seed, evals, steps=10, status="complete", feedback_folder="env+sibling",
              results=True, eval_file=True, last_reward=0.5, extra_eval_text="", corrupt_metrics_line=None,
              method_folder=None, task="debug", git=None, eval_steps=(0, 5, 10), n_problems=16):
    run_dir = root / task / (method_folder or method) / feedback_folder / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        f"seed: {seed}\nmethod:\n  name: {method}\ntask:\n  name: debug\nfeedback:\n  name: env+sibling\ntrain:\n  steps: 10\n")
    lines = []
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 1.0 / step, "reward_mean": 0.05 * step, "pass_rate": 0.04 * step,
               "no_signal_frac": 0.5, "masked_teacher_frac": 0.25, "divergence": 0.1, "entropy": 2.0 - 0.1 * step,
               "response_len": 20 + step, "grad_norm": 1.0, "teacher_trunc_frac": 0.0,
               "teacher_gain": None if method == "grpo" else 0.1 * step, "lr": 1e-5,
               "wall_time_s": 10.0 * step, "step_time_s": 10.0, "tokens_generated": 100 * step}
        if method == "vpd" and step % 5 == 0:
            row.update(estep_loss=0.7, delta=0.01)
        if step == steps:
            row["reward_mean"] = last_reward
        lines.append(json.dumps(row))
    if method == "grpo" and seed == 1:
        # The last step logged no reward: the report falls back to the step before.
        lines.append(json.dumps({"step": steps + 1, "reward_mean": None, "wall_time_s": 10.0 * (steps + 1)}))
    if corrupt_metrics_line is not None:
        lines.insert(corrupt_metrics_line - 1, '{"step": 3, "loss": 0.3, "reward_')
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    history = [{"step": s, "wall_time_s": 10.0 * s,
                "metrics": {"pass@1": v, "pass@k": min(1.0, v + 0.2), "avg@k": v, "greedy": v, "k": 4, "n_problems": n_problems}}
               for s, v in zip(eval_steps, evals)]
    if eval_file and history:
        (run_dir / "eval.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history) + extra_eval_text)
    if results:
        record = {"schema_version": 1, "status": status,
                  "run": {"method": method, "task": task, "feedback": "env+sibling", "model": "tiny-random",
                          "seed": seed, "preset": "quick"},
                  "git": git or {"revision": "abc1234def5678", "dirty": method == "vpd"},
                  "config": {}, "steps_completed": steps, "wall_time_s": 10.0 * steps, "tokens_generated": 100 * steps,
                  "eval_history": history, "final": history[-1]["metrics"] if history else {},
                  "train_final": {"reward_mean": last_reward}, "higher_is_better": {"pass@1": True}}
        (run_dir / "results.json").write_text(json.dumps(record))
    return run_dir


def make_tree(root):
    for (method, seed), evals in SCORES.items():
        write_run(root, method, seed, evals, last_reward=LAST_REWARD[(method, seed)],
                  feedback_folder="none" if method == "grpo" else "env+sibling",
                  corrupt_metrics_line=3 if (method, seed) == ("grpo", 0) else None,
                  extra_eval_text='{"step": 15, "wall_ti' if (method, seed) == ("vpd", 1) else "")
    write_run(root, "sdpo", 0, [0.2, 0.35], steps=5, status="partial", last_reward=0.3)
    write_run(root, "sdpo", 1, [], feedback_folder="env_sibling", eval_file=False, last_reward=0.4)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def report(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with pytest.warns(ReportWarning):
        written = write_report(tree, out, budget_steps=5)
    return out, written


def rows_by_method(rows):
    return {r["method"]: r for r in rows}


def load_quietly(tree):
    with pytest.warns(ReportWarning):
        return load_runs(tree)


def test_every_run_is_loaded_with_its_identity_and_status(tree):
    runs = load_quietly(tree)
    assert len(runs) == 6
    # The env_sibling folder folds into env+sibling; GRPO is filed under "none", as the store files it.
    assert {(r.method, r.feedback) for r in runs} == {("grpo", "none"), ("vpd", "env+sibling"), ("sdpo", "env+sibling")}
    status = {(r.method, r.seed): r.status for r in runs}
    assert status[("sdpo", 0)] == "partial" and status[("grpo", 0)] == "complete"
    no_eval = [r for r in runs if not r.has_eval]
    assert [(r.method, r.seed) for r in no_eval] == [("sdpo", 1)]


def test_corrupt_lines_are_skipped_with_a_warning_naming_file_and_line(tree):
    with pytest.warns(ReportWarning) as caught:
        runs = load_runs(tree)
    messages = [str(w.message) for w in caught]
    assert any("grpo/none/seed0/metrics.jsonl:3" in m for m in messages)
    assert any("vpd/env+sibling/seed1/eval.jsonl:4" in m for m in messages)
    grpo0 = next(r for r in runs if (r.method, r.seed) == ("grpo", 0))
    assert [row["step"] for row in grpo0.train_metrics] == list(range(1, 11))
    vpd1 = next(r for r in runs if (r.method, r.seed) == ("vpd", 1))
    assert [e["step"] for e in vpd1.eval_history] == [0, 5, 10]


def test_final_and_best_are_mean_and_stderr_over_seeds(tree):
    rows = rows_by_method(build_leaderboard(load_quietly(tree)))
    grpo, vpd = rows["grpo"], rows["vpd"]
    # final: grpo (0.4, 0.6), vpd (0.6, 0.8); stderr of two values = |a - b| / 2
    assert (grpo["final_mean"], grpo["final_stderr"]) == (pytest.approx(0.5), pytest.approx(0.1))
    assert (vpd["final_mean"], vpd["final_stderr"]) == (pytest.approx(0.7), pytest.approx(0.1))
    # best over the full run: grpo (0.5, 0.6), vpd (0.7, 0.8)
    assert (grpo["best_mean"], grpo["best_stderr"]) == (pytest.approx(0.55), pytest.approx(0.05))
    assert (vpd["best_mean"], vpd["best_stderr"]) == (pytest.approx(0.75), pytest.approx(0.05))
    assert grpo["initial_mean"] == pytest.approx(0.2) and grpo["initial_stderr"] == pytest.approx(0.0)
    # train reward: last logged reward_mean (grpo seed1's last step logged null)
    assert (grpo["train_reward_mean"], grpo["train_reward_stderr"]) == (pytest.approx(0.5), pytest.approx(0.05))
    assert grpo["n_seeds"] == 2 and grpo["seeds"] == [0, 1]
    # Ranked within the task, across feedback sources: the feedback-free GRPO competes with all.
    assert (vpd["rank"], grpo["rank"], rows["sdpo"]["rank"]) == (1, 2, 3)


def test_best_within_budget_respects_step_and_wall_budgets(tree):
    runs = load_quietly(tree)
    by_step = rows_by_method(build_leaderboard(runs, budget_steps=5))
    # steps <= 5: grpo (0.5, 0.3), vpd (0.7, 0.4); final is unchanged by the budget
    assert (by_step["grpo"]["best_mean"], by_step["grpo"]["best_stderr"]) == (pytest.approx(0.4), pytest.approx(0.1))
    assert (by_step["vpd"]["best_mean"], by_step["vpd"]["best_stderr"]) == (pytest.approx(0.55), pytest.approx(0.15))
    assert by_step["vpd"]["final_mean"] == pytest.approx(0.7)
    by_wall = rows_by_method(build_leaderboard(runs, budget_wall_s=49.0))
    assert by_wall["vpd"]["best_mean"] == pytest.approx(0.2)          # only the step-0 evaluation fits
    both = rows_by_method(build_leaderboard(runs, budget_steps=10, budget_wall_s=60.0))
    assert both["vpd"]["best_mean"] == pytest.approx(0.55)
    with pytest.raises(UserError):
        build_leaderboard(runs, budget_steps=-1)


def test_partial_and_evaluation_less_runs_are_counted_and_flagged(tree):
    sdpo = rows_by_method(build_leaderboard(load_quietly(tree)))["sdpo"]
    assert sdpo["n_runs"] == 2 and sdpo["n_seeds"] == 1
    assert sdpo["n_partial"] == 1 and sdpo["n_no_eval"] == 1
    assert sdpo["final_mean"] == pytest.approx(0.35) and math.isnan(sdpo["final_stderr"])
    assert "1 partial" in sdpo["flags"]


def test_report_writes_every_file_non_empty(report):
    out, written = report
    for name in ["leaderboard.md", "leaderboard.csv", "report.html", "figures/score_vs_step.png",
                 "figures/score_vs_step.svg", "figures/score_vs_wall.png", "figures/score_vs_tokens.png", "figures/final_scores.png",
                 "figures/final_scores.svg", "figures/train_reward.png", "figures/health_debug_env-sibling.png",
                 "figures/health_debug_env-sibling.svg"]:
        assert name in written, name
        assert written[name] == out / name and written[name].stat().st_size > 0
    # GRPO (feedback "none") joins the env+sibling panels instead of getting panels of its own.
    assert not any("none" in name for name in written)
    # One feedback source only: the ablation has no data and is skipped, not drawn empty.
    assert "figures/feedback_ablation.png" not in written
    assert not (out / "figures" / "feedback_ablation.png").exists()


def test_a_second_report_of_the_same_runs_is_byte_identical(tree, report, tmp_path):
    # Committed reports are regenerated whenever a run lands: a figure whose data did not change
    # must not change either (matplotlib draws random SVG element ids unless svg.hashsalt is set).
    out, written = report
    again = tmp_path / "again"
    with pytest.warns(ReportWarning):
        second = write_report(tree, again, budget_steps=5)
    assert sorted(second) == sorted(written)
    stamp = re.compile(rb"Generated \d{4}-\d\d-\d\dT[\d:]+\+00:00")     # the one line meant to differ
    changed = [name for name in written
               if stamp.sub(b"", (out / name).read_bytes()) != stamp.sub(b"", (again / name).read_bytes())]
    assert changed == []
    assert stamp.search((out / "leaderboard.md").read_bytes())


def test_csv_and_markdown_hold_the_leaderboard(report):
    out, _ = report
    rows = {r["method"]: r for r in csv.DictReader(open(out / "leaderboard.csv"))}
    assert float(rows["vpd"]["final_mean"]) == pytest.approx(0.7)
    assert float(rows["vpd"]["best_mean"]) == pytest.approx(0.55)       # budget_steps=5
    assert rows["sdpo"]["final_stderr"] == "" and rows["sdpo"]["n_partial"] == "1"
    md = (out / "leaderboard.md").read_text()
    # vpd beats grpo by exactly 0.2 on both seeds: a t-interval has no spread to work with, so no
    # interval, no significance and no bold, however large the gap of the means.
    assert "**" not in md.split("| task |")[1]
    assert rows["vpd"]["verdict"].startswith("n/a") and rows["vpd"]["significant"] == ""
    assert float(rows["vpd"]["vs_baseline"]) == pytest.approx(0.2) and rows["vpd"]["vs_baseline_ci_low"] == ""
    assert "sdpo \u2020" in md and "step \u2264 5" in md


def test_html_is_self_contained_and_flags_partial_runs(report):
    out, _ = report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert 'src="figures/' not in page
    assert "Runs: <b>6</b>" in page and "<b>1 partial</b>" in page and "1 without a held-out evaluation" in page
    assert "Generated 20" in page and "How to read this report" in page
    assert 'class="partial"' in page and "no results.json" not in page
    assert "metrics.jsonl:3" in page                                     # the skipped line is listed
    assert "feedback ablation" in page.lower() and "panel skipped" in page


def test_each_method_keeps_its_colour_across_figures(report):
    out, _ = report
    vpd, grpo = method_style("vpd")["color"].lower(), method_style("grpo")["color"].lower()
    for name in ["score_vs_step", "final_scores", "train_reward"]:
        svg = (out / "figures" / f"{name}.svg").read_text().lower()
        assert vpd in svg and grpo in svg, name
    assert method_style("some_new_method") == method_style("some_new_method")


def test_headline_metric_falls_back_to_the_first_score():
    assert score_of({"accuracy": 0.3, "k": 4}) == (0.3, "accuracy")
    assert score_of({"k": 4, "n_problems": 8, "exact": 0.5}) == (0.5, "exact")
    assert score_of({"pass@1": 0.1, "accuracy": 0.3}) == (0.1, "pass@1")
    assert score_of({"accuracy": 0.3}, "pass@k") == (None, None)


def test_an_empty_runs_folder_gives_an_empty_report(tmp_path):
    (tmp_path / "runs").mkdir()
    written = write_report(tmp_path / "runs", tmp_path / "out")
    assert set(written) == {"leaderboard.md", "leaderboard.csv", "report.html", "claims.md", "claims.csv", "ablations.md",
                            "ablations.csv"}
    assert "No runs found" in written["report.html"].read_text()
    # every claim is listed, none can be tested
    assert written["claims.md"].read_text().count("not testable at this scale") >= 10


def test_identity_keeps_grid_labels_and_feedback_free_labels(tmp_path):
    # A sweep's grid variant is its own method; results.json names only the base method.
    variant = write_run(tmp_path, "vpd", 0, [0.2, 0.3, 0.4], method_folder="vpd[estep_every=1]")
    run = load_run(variant)
    assert (run.task, run.method, run.feedback, run.seed) == ("debug", "vpd[estep_every=1]", "env+sibling", 0)
    # Outside the store's layout, a method without a teacher is still filed under "none".
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "config.yaml").write_text("seed: 3\nmethod:\n  name: grpo\ntask:\n  name: math\nfeedback:\n  name: env+sibling\n")
    (loose / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": 0.5}) + "\n")
    run = load_run(loose)
    assert (run.task, run.method, run.feedback, run.seed, run.status) == ("math", "grpo", "none", 3, "partial")
    assert "no results.json" in run.notes[0]


def test_a_missing_runs_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="runs folder not found"):
        load_runs(tmp_path / "nowhere")


def test_a_rerun_removes_figures_it_no_longer_draws(tmp_path):
    (tmp_path / "runs").mkdir()                  # no runs: no figure is drawn this time
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "feedback_ablation.png").write_bytes(b"old")
    (out / "figures" / "health_debug_env.svg").write_bytes(b"old")
    (out / "figures" / "my_notes.png").write_bytes(b"mine")
    write_report(tmp_path / "runs", out)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["my_notes.png"]


# ----------------------------------------------------------------------------------------------
# section 4: paired statistics; section 5: what the report shows

FIRST_COLUMNS = ["task", "method", "feedback", "n_seeds", "initial", "final", "delta", "delta_ci_low", "delta_ci_high"]


def test_csv_starts_with_the_paired_statistics_columns(report):
    out, _ = report
    with open(out / "leaderboard.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:len(FIRST_COLUMNS)] == FIRST_COLUMNS
    assert {"ci_method", "vs_baseline", "vs_baseline_ci_low", "vs_baseline_ci_high", "significant", "mde"} <= set(header)


def test_without_samples_the_delta_interval_is_a_t_interval_over_seeds(tree):
    rows = rows_by_method(build_leaderboard(load_quietly(tree)))
    grpo = rows["grpo"]
    # grpo: initial 0.2, 0.2; final 0.4, 0.6 -> paired changes 0.2, 0.4: mean 0.3, s.e. 0.1, t(0.975, 1) = 12.7062
    assert grpo["delta"] == pytest.approx(0.3) and grpo["ci_method"] == "t(seeds)"
    assert grpo["delta_ci_low"] == pytest.approx(0.3 - 1.270620, abs=1e-5)
    assert grpo["delta_ci_high"] == pytest.approx(0.3 + 1.270620, abs=1e-5)
    assert grpo["initial"] == pytest.approx(0.2) and grpo["final"] == pytest.approx(0.5)
    assert grpo["verdict"] == "baseline" and grpo["baseline"] == "grpo (none)"
    # sdpo has one seed with a score: no interval, and only seed 0 to pair with grpo
    sdpo = rows["sdpo"]
    assert sdpo["ci_method"] == "n/a" and math.isnan(sdpo["delta_ci_low"]) and sdpo["delta"] == pytest.approx(0.15)
    assert sdpo["vs_baseline_n_seeds"] == 1 and sdpo["verdict"] == "n/a (1 paired seed)"
    # 16 problems x 4 samples x 2 seeds at p = 0.7 (vpd's final)
    assert rows["vpd"]["mde"] == pytest.approx(2.801585 * math.sqrt(2 * 0.7 * 0.3 / 128), rel=1e-4)
    # no baseline: no comparison, nothing significant
    plain = rows_by_method(build_leaderboard(load_quietly(tree), baseline="none"))
    assert plain["vpd"]["baseline"] is None and plain["vpd"]["significant"] is None


PROBLEMS = [f"p{i}" for i in range(8)]


def passes(seed, method, when):
    """Passing samples (of 4) per problem: grpo does not move; vpd gains one sample on every problem;
    sdft gains one on even problems and loses one on odd ones."""
    base = [1 + (i + seed) % 3 for i in range(len(PROBLEMS))]
    if when == "initial" or method == "grpo":
        return base
    if method == "vpd":
        return [c + 1 for c in base]
    return [c + (1 if i % 2 == 0 else -1) for i, c in enumerate(base)]


def write_samples_tree(root, seeds=(0, 1, 2)):
    for method, folder in [("grpo", "none"), ("vpd", "env+sibling"), ("sdft", "reference")]:
        for seed in seeds:
            counts = {w: passes(seed, method, w) for w in ("initial", "final")}
            scores = [sum(counts[w]) / (4 * len(PROBLEMS)) for w in ("initial", "final")]
            run_dir = write_run(root, method, seed, scores, feedback_folder=folder, eval_steps=(0, 10),
                                n_problems=len(PROBLEMS))
            lines = []
            for step, w in [(0, "initial"), (10, "final")]:
                for pid, c in reversed(list(zip(PROBLEMS, counts[w]))):   # order must not matter
                    for k in range(4):
                        lines.append({"step": step, "problem_id": pid, "sample": k, "response": "...",
                                      "reward": 1.0 if k < c else 0.0, "status": "ok", "answer": None, "feedback": ""})
                    # The greedy sample always passes; pass@1 must not count it.
                    lines.append({"step": step, "problem_id": pid, "sample": "greedy", "response": "...",
                                  "reward": 1.0, "status": "ok", "answer": None, "feedback": ""})
            (run_dir / "eval_samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_per_problem_samples_give_a_paired_bootstrap_and_bold_only_when_significant(tmp_path):
    runs = load_runs(write_samples_tree(tmp_path / "runs"))
    rows = build_leaderboard(runs)
    by = rows_by_method(rows)
    vpd, sdft, grpo = by["vpd"], by["sdft"], by["grpo"]
    for row in (vpd, sdft, grpo):
        assert row["ci_method"] == "bootstrap(seeds x problems)"
    # +1 of 4 samples on every problem: a constant +0.25 shift, interval excludes 0
    assert vpd["delta"] == pytest.approx(0.25)
    assert vpd["delta_ci_low"] == pytest.approx(0.25) and vpd["delta_ci_high"] == pytest.approx(0.25)
    assert vpd["vs_baseline"] == pytest.approx(0.25) and vpd["vs_baseline_ci_low"] > 0
    assert vpd["significant"] is True and vpd["verdict"] == "better than grpo"
    # +-0.25 on alternate problems: no net change, the interval straddles 0
    assert sdft["delta"] == pytest.approx(0.0, abs=1e-12)
    assert sdft["delta_ci_low"] < 0 < sdft["delta_ci_high"]
    assert sdft["significant"] is False and sdft["verdict"] == "no significant difference"
    assert grpo["delta"] == pytest.approx(0.0, abs=1e-12)
    md = leaderboard_markdown(rows, "pass@1", runs=runs)
    table = md.split("| task |")[1]
    bold = [line for line in table.splitlines() if "**" in line]
    assert len(bold) == 1 and "| vpd |" in bold[0]
    assert "no significant difference" in table
    assert "abc1234 (6 runs), abc1234+dirty (3 runs)" in md and "8 \u00d7 4" in md
    assert "Smallest detectable difference" in md and "2.80" in md


def test_summary_table_works_without_samples_and_with_one_seed(tmp_path, tree):
    text = summary_table(tree)
    assert "vs grpo [95% CI]" in text and "t(seeds)" in text
    lines = [line for line in text.splitlines() if line.startswith("| debug")]
    assert {line.split("|")[2].strip() for line in lines} == {"grpo", "vpd", "sdpo \u2020"}
    one = tmp_path / "one"
    write_run(one, "grpo", 0, [0.2, 0.3, 0.4], feedback_folder="none")
    write_run(one, "vpd", 0, [0.2, 0.5, 0.6])
    text = summary_table(one, baseline="grpo")
    vpd = next(line for line in text.splitlines() if "| vpd" in line)
    assert "+0.400 [n/a]" in vpd and "+0.200 [n/a]" in vpd and "n/a (1 paired seed)" in vpd
    assert "**" not in text
    samples = summary_table(write_samples_tree(tmp_path / "s", seeds=(0,)))
    assert "bootstrap(problems)" in samples


def test_an_unknown_metric_is_an_error_listing_the_available_ones(tree, tmp_path, capsys):
    with pytest.warns(ReportWarning):
        rc = cli_main(["report", str(tree), "--out", str(tmp_path / "out"), "--metric", "no_such_metric"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_such_metric" in err and "pass@1" in err and "avg@k" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="pass@1"):
        summary_table(tree, metric="no_such_metric")


def test_report_help_describes_every_option_with_units(capsys):
    with pytest.raises(SystemExit):
        cli_main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--out", "--metric", "--baseline", "--budget-steps", "--budget-wall"):
        assert option in text
    assert "seconds" in text and "training steps" in text and "pass@1" in text


def test_bars_name_each_methods_own_feedback_and_mark_the_start(report):
    out, _ = report
    svg = (out / "figures" / "final_scores.svg").read_text()
    assert "grpo (none)" in svg and "vpd (env+sibling)" in svg
    assert "initial (step 0)" in svg
    assert "(env+sibling)" not in svg.replace("vpd (env+sibling)", "").replace("sdpo (env+sibling)", "")


def test_html_shows_provenance_statistics_and_each_runs_revision(report):
    out, _ = report
    page = (out / "report.html").read_text()
    assert "Git revision(s): abc1234 (4 runs), abc1234+dirty (2 runs)" in page
    assert "Preset(s): quick" in page and "debug: 16 \u00d7 4" in page
    assert "Smallest detectable difference" in page and "(z_0.975 + z_0.80)" in page
    assert "<th>git revision</th>" in page and "<td>abc1234+dirty</td>" in page
    assert "<b>" not in page.split("<h2>Leaderboard</h2>")[1].split("</table>")[0]
    assert "score_vs_tokens" in page


def test_a_single_logged_step_is_drawn_as_points(tmp_path):
    from vpd_bench.report.figures import _fig_health
    run = load_run(write_run(tmp_path / "runs", "vpd", 0, [0.2, 0.3], steps=1, eval_steps=(0, 1)))
    notes = []
    fig = _fig_health([run], "debug", "env+sibling", notes)
    assert fig is not None
    assert any("has a single logged step; drawn as points" in n for n in notes)
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        assert lo <= 0.5 and hi >= 1.5                      # step 1 in the middle of a readable range
        assert any(line.get_marker() not in (None, "None", "") for line in ax.get_lines())


def test_the_header_counts_the_cpu_kernel_paths_and_warns_when_they_differ(tmp_path):
    from vpd_bench.report.leaderboard import provenance
    root = tmp_path / "runs"
    dirs = [write_run(root, "grpo", s, [0.2, 0.3, 0.4]) for s in range(3)]
    for d, path in zip(dirs, ["AVX2", "AVX512", None]):
        rec = json.loads((d / "results.json").read_text())
        rec["versions"] = {"torch": "2.13.0", **({"numerics": {"cpu_capability": path, "threads": 1}} if path else {})}
        (d / "results.json").write_text(json.dumps(rec))
    runs = load_runs(root)
    assert [r.kernel_path for r in runs] == ["AVX2", "AVX512", None]
    text = provenance(runs)["kernels"]
    assert text.startswith("AVX2 (1 run), AVX512 (1 run), not recorded (1 run); ")
    assert "not bit-identical" in text
    same = provenance(runs[:1])["kernels"]
    assert same == "AVX2 (1 run)"                             # one path: nothing to warn about
    md = leaderboard_markdown(build_leaderboard(runs), "pass@1", runs=runs)
    assert "- CPU kernel path(s) (`versions.numerics.cpu_capability`): AVX2 (1 run), AVX512 (1 run)" in md


def test_the_final_score_bars_show_the_source_the_comparison_ran_on():
    from vpd_bench.report.figures import _headline_feedback
    rows = [{"task": "cold_start", "method": m, "feedback": f, "n_seeds": n} for m, f, n in [
        ("grpo", "none", 5), ("sdpo", "sibling", 5), ("vpd", "sibling", 5), ("sdpo", "env+sibling", 1),
        ("vpd", "env+sibling", 1), ("vpd[prior=initial]", "env+sibling", 9), ("sdpo[p=0.3]", "noisy", 3)]]
    assert _headline_feedback(rows, "cold_start") == "sibling"
    assert _headline_feedback(rows[:1], "cold_start") is None
    rows += [{"task": "cold_start", "method": "sdpo", "feedback": "env+sibling", "n_seeds": 8}]
    assert _headline_feedback(rows, "cold_start") == "env+sibling"
