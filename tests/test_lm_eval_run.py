"""lm-eval itself on an export: `vpd-bench eval --export` writes the model, the held-out prompts, an
lm-eval YAML and the harness's own verdicts (eval_samples.jsonl); `lm_eval --model hf` then runs
offline on that export, and its per-problem texts and verdicts must equal the harness's. The debug
task with the tiny in-process model, its projections re-drawn and its output sharpened so that its
greedy text depends on the prompt: it passes some problems and fails others, so agreement is not
agreement on all-zero."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _toy import sharpen

from vpd_bench.cli import main

N_PROBLEMS = 12
NEW_TOKENS = 12


def sharpened_tiny_model(folder: Path) -> Path:
    """The tiny random model's greedy output is one token whatever the prompt (near-uniform logits);
    at unit-gain projections and a sharpened final norm it reads its prompt."""
    from vpd_bench.config import compose
    from vpd_bench.models import load_model
    loaded = load_model(compose(task="debug", model="tiny-random").model)
    sharpen(loaded.model)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def test_lm_eval_on_an_export_gives_the_harness_texts_and_verdicts(tmp_path, capsys):
    exp = tmp_path / "exp"
    model = sharpened_tiny_model(tmp_path / "model")
    # letters its greedy text holds often (A), sometimes (E) and never (Z)
    assert main(["eval", "--model", str(model), "--task", "debug", "--export", str(exp), "task.alphabet=AEZ",
                 f"eval.num_problems={N_PROBLEMS}", "eval.samples=0", f"eval.max_new_tokens={NEW_TOKENS}"]) == 0
    capsys.readouterr()
    ours = {r["problem_id"]: r for r in map(json.loads, (exp / "eval_samples.jsonl").read_text().splitlines())
            if r["sample"] == "greedy"}
    assert len(ours) == N_PROBLEMS
    out = tmp_path / "lm_eval_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={exp / 'model'},dtype=float32",
                           "--include_path", str(exp), "--tasks", "vpd_bench_debug", "--device", "cpu",
                           "--batch_size", "1", "--log_samples", "--output_path", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    sample_files = sorted(out.rglob("samples_vpd_bench_debug_*.jsonl"))
    assert sample_files, sorted(str(p) for p in out.rglob("*"))
    theirs = [json.loads(line) for line in sample_files[-1].read_text().splitlines()]
    assert len(theirs) == N_PROBLEMS
    for row in theirs:
        pid = row["doc"]["id"]
        text = row["resps"][0][0] if isinstance(row["resps"][0], list) else row["resps"][0]
        assert text == ours[pid]["response"], pid
        assert row["exact_match"] == float(ours[pid]["reward"] >= 1.0), pid
    verdicts = {float(r["exact_match"]) for r in theirs}
    assert verdicts == {0.0, 1.0}, "the tiny model should pass some problems and fail others"
