"""scripts/stop_gap.py (issue 18's length-drift diagnosis): the teacher-prompt variants it builds
and the EOS / body log-prob gaps it reports, on the tiny in-process model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vpd_bench.config import compose
from vpd_bench.models.loading import load_model
from vpd_bench.rollout.batch import Feedback
from vpd_bench.training.teacher_prompt import build_teacher_prompt

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stop_gap", ROOT / "scripts" / "stop_gap.py")
stop_gap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stop_gap)


@pytest.fixture(scope="module")
def setup():
    cfg = compose("sdpo", "debug", "env+sibling", "tiny-random", None, None, [])
    loaded = load_model(cfg.model)
    return cfg, loaded


def _row(cfg, tok, demo, text, response="abc", status="fail", finish="eos"):
    tp = cfg.teacher_prompt
    student = tok.apply_chat_template([{"role": "user", "content": "Say abd."}], tokenize=False,
                                      add_generation_prompt=True)
    teacher = build_teacher_prompt("Say abd.", Feedback(demonstration=demo, text=text), tp, tok, True, 4096).text
    return {"step": 1, "prompt": student, "teacher_prompt": teacher, "teacher_demonstration": demo,
            "teacher_feedback": text, "response": response, "status": status,
            "reward": 1.0 if status == "pass" else 0.0, "finish_reason": finish}


def test_teacher_prompt_variants_keep_one_part_of_the_context(setup):
    cfg, loaded = setup
    tok, tp = loaded.tokenizer, cfg.teacher_prompt
    row = _row(cfg, tok, "abd", "Your answer abc is wrong.")
    both = stop_gap.teacher_prompt_variant(row, tp, "logged")
    fb = stop_gap.teacher_prompt_variant(row, tp, "feedback")
    demo = stop_gap.teacher_prompt_variant(row, tp, "demonstration")
    bare = stop_gap.teacher_prompt_variant(row, tp, "instruction")
    assert both == row["teacher_prompt"]
    assert fb == build_teacher_prompt("Say abd.", Feedback(text="Your answer abc is wrong."), tp, tok, True, 4096).text
    assert demo == build_teacher_prompt("Say abd.", Feedback(demonstration="abd"), tp, tok, True, 4096).text
    assert "abc is wrong" not in bare and "correct solution" not in bare and tp.instruction in bare
    assert "Say abd." in bare
    # a row without a sibling has no demonstration variant
    assert stop_gap.teacher_prompt_variant(_row(cfg, tok, None, "wrong"), tp, "demonstration") is None


def test_gaps_are_teacher_minus_student_at_eos_and_on_the_body(setup):
    cfg, loaded = setup
    tok, model = loaded.tokenizer, loaded.model.eval()
    rows = [_row(cfg, tok, "abd", "wrong", response="abc"), _row(cfg, tok, "abd", "wrong", response="abd", status="pass"),
            _row(cfg, tok, "abd", "wrong", response="abcabc", finish="length")]
    out = stop_gap.stop_gaps(model, tok, rows, 0.7, cfg.teacher_prompt, "logged")
    assert set(out) == {"fail/eos", "pass/eos", "fail/cut"} and "eos_gap" not in out["fail/cut"]
    r = rows[0]
    s = stop_gap._response_logp(model, tok, r["prompt"], r["response"], True, 0.7)
    t = stop_gap._response_logp(model, tok, r["teacher_prompt"], r["response"], True, 0.7)
    assert out["fail/eos"]["eos_gap"]["mean"] == pytest.approx(float(t[-1] - s[-1]), abs=1e-6)
    assert out["fail/eos"]["body_gap"]["mean"] == pytest.approx(float((t[:-1] - s[:-1]).mean()), abs=1e-6)
    assert out["fail/eos"]["eos_gap_minus_body_gap"]["mean"] == pytest.approx(
        float(t[-1] - s[-1]) - float((t[:-1] - s[:-1]).mean()), abs=1e-6)
    # the EOS is scored: the response's own token count plus one
    assert len(s) == len(tok(r["response"], add_special_tokens=False)["input_ids"]) + 1


def test_the_script_reads_a_run_folder_and_writes_json(setup, tmp_path, capsys):
    cfg, loaded = setup
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(cfg, run / "config.yaml")
    rows = [_row(cfg, loaded.tokenizer, "abd", "wrong"), dict(_row(cfg, loaded.tokenizer, "abd", "wrong"), step=7)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert stop_gap.main([str(run), "--max-steps", "5", "--context", "logged,instruction",
                          "--json", str(tmp_path / "out.json")]) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert set(data["runs"][str(run)]) == {"logged", "instruction"}
    assert data["runs"][str(run)]["logged"]["fail/eos"]["n"] == 1       # the step-7 row is past --max-steps
    with pytest.raises(Exception, match="--context"):
        stop_gap.main([str(run), "--context", "sibling"])
