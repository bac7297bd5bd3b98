"""Tuning: the cpu preset, the validation split, the choice rule, `vpd-bench tune` and `run --tuned`."""
from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path

import pytest

from vpd_bench.cli import _specs, main, parse
from vpd_bench.config import compose, to_yaml
from vpd_bench.errors import UserError
from vpd_bench.launch.tune import (Point, choose, chosen_yaml, hold_out_validation, load_tuned, parse_grid, plan, preference)

SMALL = ["rollout.max_new_tokens=4", "train.prompts_per_step=1", "train.group_size=2", "eval.num_problems=2",
         "eval.samples=1", "eval.greedy=false"]


# -- the cpu preset ------------------------------------------------------------------------------

def test_cpu_preset_is_the_pilot_regime_and_math_is_only_one_digit_addition_and_subtraction():
    from vpd_bench.tasks import build_task
    cfg = compose("grpo", "math", preset="cpu")
    assert (cfg.train.steps, cfg.train.prompts_per_step, cfg.train.group_size, cfg.train.lr) == (30, 4, 4, 1e-5)
    assert (cfg.rollout.max_new_tokens, cfg.rollout.temperature) == (64, 0.7)
    assert (cfg.eval.every, cfg.eval.num_problems, cfg.eval.samples, cfg.eval.greedy) == (15, 0, 4, True)
    assert cfg.train.keep_checkpoints == 1 and cfg.preset_name == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # reasoning-gym has fewer distinct one-digit problems than num_train
        task = build_task(cfg)
        problems = task.train_problems() + task.eval_problems()
    assert len(task.eval_problems()) == 64
    for p in problems:
        q = p.meta["question"]
        assert "(" not in q and ")" not in q and "*" not in q and "/" not in q, q
        expr = re.search(r"(?:Calculate|problem:)\s*(.*?)\s*[.=]?$", q).group(1)
        # two terms, + or -, no unary minus (negation) on any term
        assert re.fullmatch(r"\d+ [+-] \d+", expr), q
        assert int(p.answer) == eval(expr)          # noqa: S307 - digits and +/- only, checked above


def test_cpu_preset_composes_with_every_task():
    for task in ("debug", "code", "sciqa", "math", "cold_start"):
        cfg = compose("grpo", task, preset="cpu", model="tiny-random")
        assert cfg.train.steps == 30


# -- the validation split ------------------------------------------------------------------------

def test_hold_out_validation_takes_the_last_problems_at_most_a_quarter():
    problems = list(range(100))
    train, val = hold_out_validation(problems, 10)
    assert val == list(range(90, 100)) and train == list(range(90))
    train, val = hold_out_validation(problems, 64)          # capped at a quarter
    assert len(val) == 25 and train == list(range(75))
    assert hold_out_validation(problems, 0) == (problems, [])
    with pytest.raises(UserError, match="eval.split"):
        hold_out_validation(problems, 10, "test")
    with pytest.raises(UserError, match="validation_problems > 0"):
        hold_out_validation(problems, 0, "validation")


def test_validation_problems_are_never_trained_on_and_are_what_eval_split_validation_scores(make_trainer):
    t = make_trainer(overrides=["eval.validation_problems=8", "eval.split=validation", "train.prompts_per_step=4"])
    val_ids = {p.id for p in t.validation_problems}
    train_ids = {p.id for p in t.train_problems}
    assert len(val_ids) == 8 and len(train_ids) == 56
    assert val_ids == {p.id for p in t.task.train_problems()[-8:]}
    assert not val_ids & train_ids
    assert not val_ids & {p.id for p in t.task.eval_problems()}
    sampled = {p.id for step in range(1, 40) for p in t.sample_problems(step)}   # > two epochs of prompts
    assert sampled == train_ids
    t.evaluate(0)
    scored = {r["problem_id"] for r in t.store.eval_samples.rows}
    assert scored and scored <= val_ids                     # eval.num_problems=4: the first 4 of them


def test_held_out_evaluation_still_scores_the_held_out_split_and_holds_back_the_same_problems(make_trainer):
    t = make_trainer(overrides=["eval.validation_problems=8"])
    assert {p.id for p in t.validation_problems} == {p.id for p in t.task.train_problems()[-8:]}
    t.evaluate(0)
    assert {r["problem_id"] for r in t.store.eval_samples.rows} <= {p.id for p in t.task.eval_problems()}


# -- the grid and the plan -----------------------------------------------------------------------

def test_parse_grid_and_preference_prefers_the_smaller_learning_rate_then_the_first_value():
    grid = parse_grid(["train.lr=3e-5,3e-6,1e-5", "method.beta=0.1,0.01"])
    assert grid == {"train.lr": ["3e-5", "3e-6", "1e-5"], "method.beta": ["0.1", "0.01"]}
    assert preference({"train.lr": "3e-6", "method.beta": "0.01"}, grid) == (0, 1)
    assert preference({"train.lr": "3e-5", "method.beta": "0.1"}, grid) == (2, 0)
    for bad in (["train.lr"], ["train.lr=1e-5,1e-5"], ["train.lr=1", "train.lr=2"], []):
        with pytest.raises(UserError):
            parse_grid(bad)


def test_a_grid_key_a_method_does_not_have_is_applied_only_to_the_methods_that_have_it(tmp_path):
    grid = parse_grid(["train.lr=1e-5,3e-5", "method.beta=0.01,0.1"])
    specs, points, skipped = plan(["grpo", "vpd"], "debug", grid, [0], model="tiny-random", out=str(tmp_path))
    assert skipped == {"grpo": ["method.beta"], "vpd": []}
    assert len(points["grpo"]) == 2 and len(points["vpd"]) == 4
    assert len(specs) == 2 + 4
    cfg = next(s for s in specs if s.method == "vpd" and s.grid_label == "beta=0.01,lr=3e-5").compose()
    assert (cfg.method.beta, cfg.train.lr, cfg.eval.split) == (0.01, 3e-5, "validation")
    grpo = [s for s in specs if s.method == "grpo"]
    assert {s.grid_label for s in grpo} == {"lr=1e-5", "lr=3e-5"}
    assert str(grpo[0].run_dir()).startswith(str(tmp_path / "debug" / "grpo[lr="))
    with pytest.raises(UserError, match="Did you mean"):
        plan(["grpo"], "debug", {"method.betta": ["1"]}, [0], model="tiny-random")
    with pytest.raises(UserError, match="validation split"):
        plan(["grpo"], "debug", {"train.lr": ["1e-5"]}, [0], model="tiny-random", overrides=["eval.split=heldout"])


# -- the choice rule on synthetic run folders ----------------------------------------------------

def fake_run(root: Path, label: str, seed: int, rewards: dict[int, list[list[float]]], complete: bool = True) -> Path:
    """A run folder with eval.jsonl and eval_samples.jsonl: ``rewards[step][problem][sample]``."""
    d = root / f"grpo[{label}]" / "none" / f"seed{seed}"
    d.mkdir(parents=True)
    evals, samples = [], []
    for step, table in sorted(rewards.items()):
        flat = [r for row in table for r in row]
        evals.append({"step": step, "wall_time_s": 1.0, "metrics": {
            "n_problems": len(table), "k": len(table[0]), "pass@1": sum(flat) / len(flat)}})
        samples += [{"step": step, "problem_id": f"p{i}", "sample": j, "reward": r}
                    for i, row in enumerate(table) for j, r in enumerate(row)]
    (d / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    (d / "eval_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (d / "results.json").write_text(json.dumps({"status": "complete" if complete else "partial",
                                                "run": {"method": "grpo", "task": "debug", "seed": seed}}))
    return d


def table(rate: float, n: int = 64, k: int = 4, seed: int = 0) -> list[list[float]]:
    rng = random.Random(seed)
    return [[float(rng.random() < rate) for _ in range(k)] for _ in range(n)]


def points_for(root: Path, scores: dict[str, float], complete=(), seeds=(0,)) -> list[Point]:
    grid = {"train.lr": list(scores)}
    out = []
    for i, (lr, rate) in enumerate(scores.items()):
        p = Point("grpo", {"train.lr": lr}, preference=preference({"train.lr": lr}, grid))
        for s in seeds:
            p.run_dirs[s] = fake_run(root, f"lr={lr}", s, {0: table(0.4, seed=100 + s), 2: table(rate, seed=10 * i + s)},
                                     complete=lr not in complete)
        out.append(p)
    return out


def test_choice_takes_the_clearly_best_point(tmp_path):
    res = choose(points_for(tmp_path, {"3e-6": 0.2, "1e-5": 0.8, "3e-5": 0.1}))
    assert res["best"] == res["chosen"] == "lr=1e-5"
    assert res["chosen_overrides"] == ["train.lr=1e-5"]
    row = {p["label"]: p for p in res["points"]}
    assert row["lr=3e-6"]["tied"] is False and row["lr=3e-6"]["diff_vs_best"]["high"] < 0
    assert row["lr=3e-6"]["diff_vs_best"]["method"] == "bootstrap(problems)"
    assert set(row["lr=1e-5"]["curve"]) == {"0", "2"}


def test_choice_prefers_the_smaller_learning_rate_when_the_interval_contains_zero(tmp_path):
    res = choose(points_for(tmp_path, {"1e-5": 0.60, "3e-6": 0.58, "3e-5": 0.05}, seeds=(0, 1)))
    row = {p["label"]: p for p in res["points"]}
    best, chosen = row[res["best"]], row[res["chosen"]]
    assert chosen["label"] == "lr=3e-6" and chosen["tied"]
    assert res["best"] in ("lr=1e-5", "lr=3e-6")
    assert best["final_mean"] >= chosen["final_mean"]
    assert row["lr=3e-5"]["tied"] is False
    assert chosen["diff_vs_best"]["method"] in ("(best)", "bootstrap(seeds x problems)")


def test_a_point_with_incomplete_runs_is_not_eligible_and_withholds_the_methods_choice(tmp_path):
    res = choose(points_for(tmp_path, {"3e-6": 0.2, "1e-5": 0.9, "3e-5": 0.5}, complete=("1e-5",)))
    assert {p["label"]: p["eligible"] for p in res["points"]} == {"lr=3e-6": True, "lr=1e-5": False,
                                                                 "lr=3e-5": True}
    # the same grid for every method: no choice until every point is complete, only a provisional one
    assert res["chosen"] is None and res["chosen_overrides"] is None
    assert res["provisional"] == "lr=3e-5" and res["provisional_overrides"] == ["train.lr=3e-5"]
    assert "grid incomplete (2 of 3" in res["reason"] and "lr=1e-5" in res["reason"]
    text = chosen_yaml({"task": "debug", "preset": None, "metric": "pass@1", "methods": {"grpo": res}})
    assert "grpo:" not in text.replace("# grpo:", "") and "# grpo: no choice yet (grid incomplete" in text


# -- the command end to end ----------------------------------------------------------------------

def test_tune_writes_its_files(tmp_path, capsys):
    out = tmp_path / "tuning"
    args = ["tune", "--methods", "grpo,sdpo", "--task", "debug", "--model", "tiny-random", "--grid",
            "train.lr=1e-5,3e-5", "--steps", "1", "--out", str(out), *SMALL]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "rule:" in printed and "--tuned" in printed
    for name in ("tuning.json", "tuning.md", "chosen.yaml"):
        assert (out / name).is_file(), name
    result = json.loads((out / "tuning.json").read_text())
    assert result["split"] == "validation" and result["grid"] == {"train.lr": ["1e-5", "3e-5"]}
    for m in result["methods"].values():
        assert len(m["points"]) == 2 and m["chosen"] in ("lr=1e-5", "lr=3e-5")
        assert all(set(p["curve"]) == {"0", "1"} and p["eligible"] for p in m["points"])
    chosen = load_tuned(out / "chosen.yaml")
    assert set(chosen) == {"grpo", "sdpo"} and chosen["grpo"][0] in ("train.lr=1e-5", "train.lr=3e-5")
    runs = sorted(out.glob("debug/*/*/seed0/results.json"))
    assert [r.parent.parent.parent.name for r in runs] == ["grpo[lr=1e-5]", "grpo[lr=3e-5]", "sdpo[lr=1e-5]",
                                                            "sdpo[lr=3e-5]"]
    assert all("split: validation" in (r.parent / "config.yaml").read_text() for r in runs)
    assert not list(out.glob("debug/*/*/seed0/checkpoints/step_*"))   # tuning keeps numbers, not weights


def test_a_rerun_trains_nothing_that_is_complete_and_chooses_from_the_runs_there(tmp_path, capsys, monkeypatch):
    out = tmp_path / "tuning"
    grid = {"train.lr": ["1e-5", "3e-5"]}
    specs, points, _ = plan(["grpo"], "debug", grid, [0], model="tiny-random", overrides=["train.steps=2"],
                            out=str(out))
    for spec, rate in zip(specs, (0.9, 0.1)):
        d = fake_run(out / "debug", spec.grid_label, 0, {0: table(0.4), 2: table(rate, seed=1)})
        assert d == spec.run_dir()
        (d / "results.json").write_text(json.dumps({"status": "complete", "steps_completed": 2,
                                                    "run": {"method": "grpo", "task": "debug", "seed": 0}}))

    def no_training(*a, **k):
        raise AssertionError("a complete run was trained again")
    monkeypatch.setattr("vpd_bench.training.loop.Trainer.__init__", no_training)
    assert main(["tune", "--methods", "grpo", "--task", "debug", "--model", "tiny-random", "--grid", "train.lr=1e-5,3e-5",
                 "--out", str(out), "train.steps=2"]) == 0
    assert load_tuned(out / "chosen.yaml") == {"grpo": ["train.lr=1e-5"]}
    assert "grpo       train.lr=1e-5" in capsys.readouterr().out


def test_run_tuned_applies_each_methods_choice_and_the_command_line_wins(tmp_path):
    path = tmp_path / "chosen.yaml"
    path.write_text('grpo: ["train.lr=3e-5"]\nvpd: ["train.lr=3e-6", "method.beta=0.01"]\n')
    args = parse(["validate", "--methods", "grpo,vpd,sdpo", "--task", "debug", "--model", "tiny-random", "--seeds", "2",
                  "--tuned", str(path), "train.lr=2e-5"])
    specs = _specs(args)
    assert [s.seed for s in specs] == [0, 0, 0, 1, 1, 1]
    cfg = {s.method: s.compose() for s in specs}
    assert (cfg["grpo"].train.lr, cfg["vpd"].train.lr, cfg["sdpo"].train.lr) == (2e-5, 2e-5, 2e-5)  # the command line wins
    assert cfg["vpd"].method.beta == 0.01
    specs = _specs(parse(["validate", "--methods", "grpo,vpd,sdpo", "--task", "debug", "--model", "tiny-random",
                          "--tuned", str(path)]))
    cfg = {s.method: s.compose() for s in specs}
    assert (cfg["grpo"].train.lr, cfg["vpd"].train.lr, cfg["vpd"].method.beta) == (3e-5, 3e-6, 0.01)
    assert cfg["sdpo"].train.lr == compose("sdpo", "debug").train.lr        # not tuned: its defaults
    assert cfg["sdpo"].method == compose("sdpo", "debug").method
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: train.lr=1\n")
    with pytest.raises(UserError, match="list of key=value"):
        load_tuned(bad)


def test_report_shows_each_methods_settings(tmp_path):
    from vpd_bench.report import build_leaderboard, leaderboard_markdown, load_runs, write_leaderboard_csv
    for method, overrides in (("grpo", ["train.lr=3e-5"]), ("vpd", ["train.lr=3e-6", "method.beta=0.01"])):
        d = tmp_path / "debug" / method / ("none" if method == "grpo" else "env+sibling") / "seed0"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(to_yaml(compose(method, "debug", overrides=overrides)))
        (d / "eval.jsonl").write_text(json.dumps({"step": 0, "metrics": {"pass@1": 0.5}}) + "\n"
                                      + json.dumps({"step": 1, "metrics": {"pass@1": 0.6}}) + "\n")
    rows = build_leaderboard(load_runs(tmp_path))
    settings = {r["method"]: r["settings"] for r in rows}
    assert settings == {"grpo": "lr=3e-05", "vpd": "lr=3e-06, beta=0.01"}
    assert "lr=3e-06, beta=0.01" in leaderboard_markdown(rows, "pass@1")
    write_leaderboard_csv(rows, tmp_path / "lb.csv")
    assert "settings" in (tmp_path / "lb.csv").read_text().splitlines()[0]
