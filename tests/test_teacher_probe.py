"""The teacher probe (issue 13 §3): fixed items built once from failed responses, measured at every
evaluation with forward passes and greedy decoding only."""
import json
from pathlib import Path

import pytest
import torch

from vpd_bench.cli import main

ARGS = ["run", "--task", "debug", "--model", "tiny-random", "rollout.max_new_tokens=8", "train.prompts_per_step=2",
        "eval.num_problems=2", "eval.samples=1", "eval.greedy=false", "eval.teacher_probe=4", "eval.every=1"]


def test_probe_rows_at_every_evaluation_with_fixed_items(tmp_path):
    assert main([*ARGS, "--methods", "vpd", "--steps", "2", "--out", str(tmp_path), "method.estep_every=1"]) == 0
    d = Path(tmp_path) / "debug" / "vpd" / "env+sibling" / "seed0"
    rows = [json.loads(x) for x in (d / "teacher_probe.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    items = json.loads((d / "teacher_probe_items.json").read_text())
    assert 0 < len(items) <= 4 and all(it["feedback"] and it["gold"] for it in items)
    for r in rows:
        assert r["n_items"] == len(items) and 0 <= r["teacher_pass"] <= 1 and 0 <= r["student_pass"] <= 1
        assert isinstance(r["probe_logratio"], float)


def test_probe_logratio_is_the_mean_per_token_log_ratio_of_the_gold_answer(make_trainer):
    from vpd_bench.training.teacher_probe import TeacherProbe, _teacher_prompt
    t = make_trainer("sdpo", overrides=["eval.teacher_probe=3"])
    probe = TeacherProbe(t, 3)
    row = probe.measure(0)
    items = probe.items
    assert row["n_items"] == len(items) > 0
    ratios = []
    for it in items:
        p = probe.by_id[it["problem_id"]]
        gold = t.tokenizer.encode(it["gold"], add_special_tokens=False)
        with torch.no_grad():
            q = t.sequence_log_probs(t.model, [_teacher_prompt(t, p, it["feedback"]).ids], [gold], "sum")
            s = t.sequence_log_probs(t.model, [t.encode_prompt(t.task.render_prompt(p))], [gold], "sum")
        ratios.append(float(q - s) / len(gold))
    assert row["probe_logratio"] == pytest.approx(sum(ratios) / len(ratios), abs=1e-4)


def test_probe_changes_no_loss(tmp_path):
    outs = {}
    for probe in (0, 3):
        out = tmp_path / f"p{probe}"
        args = [a if not a.startswith("eval.teacher_probe") else f"eval.teacher_probe={probe}" for a in ARGS]
        assert main([*args, "--methods", "grpo", "--steps", "2", "--out", str(out)]) == 0
        rows = (out / "debug" / "grpo" / "none" / "seed0" / "metrics.jsonl").read_text().splitlines()
        outs[probe] = [json.loads(r)["loss"] for r in rows]
    assert outs[0] == outs[3]


def test_report_writes_teacher_probe_csv_and_figure(tmp_path):
    from vpd_bench.report import PROBE_COLUMNS, write_report
    for seed in (0, 1):
        d = tmp_path / "runs" / "math" / "vpd" / "env+sibling" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "eval.jsonl").write_text("".join(json.dumps({"step": s, "metrics": {"pass@1": 0.3 + 0.01 * s}}) + "\n"
                                              for s in (0, 15, 30)))
        (d / "teacher_probe.jsonl").write_text("".join(json.dumps(
            {"step": s, "n_items": 8, "probe_logratio": 0.1 * s + seed, "teacher_pass": 0.5, "student_pass": 0.25}) + "\n"
            for s in (0, 15, 30)))
    written = write_report(tmp_path / "runs", tmp_path / "report")
    assert "teacher_probe.csv" in written and "figures/teacher_probe.png" in written
    lines = (tmp_path / "report" / "teacher_probe.csv").read_text().splitlines()
    assert lines[0].split(",") == PROBE_COLUMNS and len(lines) == 1 + 6
    assert lines[1].split(",")[:5] == ["math", "vpd", "env+sibling", "0", "0"]
