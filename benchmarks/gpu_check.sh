#!/usr/bin/env bash
# GPU check: a Qwen3-architecture model of ~0.5B parameters, built in-process from a config
# (conf/model/qwen3-0.5b-random.yaml: random init, byte tokenizer, nothing downloaded), trained for
# a warm-up step and F = 5 timed steps of each variant on the `debug` task with fp32 master weights
# and bf16 autocast. Variants: `sdpo` (live teacher: VPD's M-step alone), `vpd` (estep_buffer=current,
# fused), `vpd_exact` (current buffer, separate E-step), `vpd_window` (window buffer), `grpo`, and `vpd_keep`
# (fused, keeping the M-step's graph: fast, memory-hungry; not in the default list); VPD's
# E-step runs every F = 5 steps, so the timed window holds exactly one. Responses are fixed-length
# (EOS ignored) so every variant does the same work. Prints, per variant: step time, tokens/s, peak
# GPU memory, an MFU estimate, and each VPD variant's iteration time and peak memory relative to
# `sdpo` (the paper's figure: the E-step adds 30-55% and no memory); a table and one JSON line per
# variant at the end (paste them into benchmarks/README.md). Sized for about a minute per variant.
#
#   benchmarks/gpu_check.sh                   # on the GPU machine
#   benchmarks/gpu_check.sh --pack-deps       # on a dev machine: copy the pure-Python config deps
#                                             # (hydra, omegaconf, antlr4) to benchmarks/.pydeps so
#                                             # a GPU machine without them (and without a registry)
#                                             # can run the check; carry that folder along
#   GPU_CHECK_SMOKE=1 benchmarks/gpu_check.sh # a tiny CPU run of the same code (checks the script)
#
# Knobs (environment): GPU_CHECK_STEPS=6 (the first is the warm-up)  GPU_CHECK_METHODS=sdpo,vpd,vpd_window,grpo,vpd_exact  GPU_CHECK_PROMPTS=8
#   GPU_CHECK_GROUP=8  GPU_CHECK_NEW_TOKENS=256  GPU_CHECK_MICRO=16  GPU_CHECK_PURE_BF16=0 (1: bf16
#   weights and optimizer state instead of fp32 master weights + autocast)  GPU_PEAK_TFLOPS (dense
#   bf16 peak for the MFU estimate; known for H100/H200/A100/L40S)  PYTHON (interpreter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then py=.venv/bin/python; else py=python3; fi
fi
deps="benchmarks/.pydeps"

if [ "${1:-}" = "--pack-deps" ]; then
  rm -rf "$deps" && mkdir -p "$deps"
  "$py" - "$deps" <<'PYEOF'
import importlib, os, shutil, sys
for name in ("hydra", "omegaconf", "antlr4"):
    src = os.path.dirname(importlib.import_module(name).__file__)
    shutil.copytree(src, os.path.join(sys.argv[1], name), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
PYEOF
  du -sh "$deps"
  exit 0
fi

if ! "$py" -c "import hydra, omegaconf" >/dev/null 2>&1; then
  if [ -d "$deps" ]; then
    export PYTHONPATH="$root/$deps${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: hydra-core/omegaconf are not importable and $deps is missing." >&2
    echo "  pip install hydra-core omegaconf, or run 'benchmarks/gpu_check.sh --pack-deps' where they are installed" >&2
    echo "  and bring $deps along." >&2
    exit 2
  fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"     # vpd_bench importable from a bare checkout
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

exec "$py" - <<'PYEOF'
import json
import os
import sys
import tempfile
import time

import torch

import vpd_bench
try:                                    # installed: vpd_bench.tasks / .methods map to tasks/, methods/
    import vpd_bench.methods, vpd_bench.tasks  # noqa: E401,F401
except ImportError:                     # a bare checkout: find them at the repository's top
    vpd_bench.__path__.append(os.getcwd())
    import vpd_bench.methods, vpd_bench.tasks  # noqa: E401,F401

from vpd_bench.config import compose
from vpd_bench.training.loop import Trainer
from vpd_bench.models.from_config import build_from_config

sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
from _common import fixed_length  # noqa: E402  (every response max_new_tokens long: equal work per variant)

T0 = time.time()
env = os.environ.get
smoke = env("GPU_CHECK_SMOKE") == "1"
if not smoke and not torch.cuda.is_available():
    print("gpu_check: no CUDA device visible; this check needs a GPU (GPU_CHECK_SMOKE=1 runs a tiny CPU version)")
    sys.exit(2)
cuda = torch.cuda.is_available() and not smoke
steps = int(env("GPU_CHECK_STEPS", "3" if smoke else "6"))
F = max(1, steps - 1)                   # one E-step inside the timed steps 2..steps
methods = env("GPU_CHECK_METHODS", "sdpo,vpd,vpd_window,grpo,vpd_exact").split(",")
out_json = env("GPU_CHECK_JSON")        # also append each variant's JSON line to this file
B, G = int(env("GPU_CHECK_PROMPTS", "2" if smoke else "8")), int(env("GPU_CHECK_GROUP", "2" if smoke else "8"))
new_tokens = int(env("GPU_CHECK_NEW_TOKENS", "16" if smoke else "256"))
micro = int(env("GPU_CHECK_MICRO", "4" if smoke else "16"))
pure_bf16 = env("GPU_CHECK_PURE_BF16") == "1"

PEAKS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
peak_tflops = float(env("GPU_PEAK_TFLOPS") or next((v for k, v in PEAKS.items() if k in device_name), 0) or 0)

model_over = [] if not smoke else ["model.num_layers=2", "model.hidden_size=64", "model.intermediate_size=128",
                                   "model.num_heads=4", "model.num_kv_heads=2", "model.head_dim=16"]
if pure_bf16:
    model_over.append("model.dtype=bfloat16")
common = [f"train.steps={steps}", f"train.prompts_per_step={B}", f"train.group_size={G}",
          f"rollout.max_new_tokens={new_tokens}", f"train.micro_batch_size={micro}",
          f"train.bf16_autocast={'true' if cuda and not pure_bf16 else 'false'}", "train.lr=1e-6",
          "eval.samples=0", "eval.greedy=false", "train.samples_per_step=0"]
# variant -> (method, overrides); with estep_every = F the timed window holds exactly one E-step
VARIANTS = {
    "sdpo": ("sdpo", ["method.teacher=live"]),
    "vpd": ("vpd", ["method.estep_buffer=current", "method.estep_fused=true", f"method.estep_every={F}", "method.estep_probe=0"]),
    "vpd_exact": ("vpd", ["method.estep_buffer=current", f"method.estep_every={F}", "method.estep_probe=0"]),
    "vpd_keep": ("vpd", ["method.estep_buffer=current", "method.estep_fused=true", "method.estep_fused_graph=keep",
                         f"method.estep_every={F}", "method.estep_probe=0"]),
    "vpd_window": ("vpd", ["method.estep_buffer=window", f"method.estep_every={F}", "method.estep_probe=0"]),
    "grpo": ("grpo", []),
}
unknown = [m for m in methods if m not in VARIANTS]
if unknown:
    print(f"gpu_check: unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    sys.exit(2)



precision = "bf16" if pure_bf16 else ("fp32+bf16-autocast" if cuda else "fp32")
print(f"gpu_check: device {device_name}, torch {torch.__version__}, peak bf16 {peak_tflops or 'unknown'} TFLOP/s, "
      f"B={B} G={G} new_tokens={new_tokens} micro={micro} steps={steps} "
      f"precision {precision}", flush=True)


def tokens_of(trainer, m):
    """Token counts of the step just run: what each FLOP term below multiplies."""
    b = trainer.last_batch
    P = [len(p) for p in b.prompt_ids]
    R = [len(r) for r in b.response_ids]
    student = sum(P[i // b.group_size] + r for i, r in enumerate(R))
    teacher = sum(len(b.teacher_prompt_ids[i]) + R[i] for i in range(len(R))
                  if b.teacher_prompt_ids and b.teacher_prompt_ids[i] is not None and bool(b.teacher_mask[i]))
    estep_prior = estep_teacher = 0
    if m.get("estep_loss") is not None:
        items = [it for its in trainer.method.buffer for it in its]
        epochs = int(trainer.cfg.method.estep_epochs)
        estep_prior = sum(len(it["prompt"]) + len(it["response"]) for it in items)
        estep_teacher = epochs * sum(len(it["teacher_prompt"]) + len(it["response"]) for it in items)
    return dict(prefill=sum(P), generated=sum(R), student=student, teacher=teacher,
                estep_prior=estep_prior, estep_teacher=estep_teacher)


def flops(n, t):
    """2N per token forward, 6N forward+backward (attention FLOPs left out: sequences here are short)."""
    update = 6 * n * t["student"] + 2 * n * t["teacher"]
    estep = 2 * n * t["estep_prior"] + 6 * n * t["estep_teacher"]
    return update, estep, 2 * n * (t["prefill"] + t["generated"]) + update + estep


summaries = []
for variant in methods:
    method, extra = VARIANTS[variant]
    cfg = compose(method, "debug", None, model="qwen3-0.5b-random", overrides=common + model_over + extra)
    t_build = time.time()
    loaded = build_from_config(cfg.model)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="gpu-check-"), loaded=loaded, progress=False)
    fixed_length(trainer)
    device = next(trainer.model.parameters()).device
    print(f"\n== {variant} ({method} {' '.join(extra)}): {n_params / 1e9:.3f}B parameters on {device} (built in {time.time() - t_build:.1f}s)", flush=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for step in range(1, steps + 1):
        m = trainer.train_step(step)
        if cuda:
            torch.cuda.synchronize()
        t = tokens_of(trainer, m)
        f_update, f_estep, f_total = flops(n_params, t)
        row = {"step": step, "step_time_s": m["step_time_s"], "generate_s": m["generate_s"], "update_s": m["update_s"],
               "teacher_update_s": m["teacher_update_s"], **t, "flops": f_total, "flops_update": f_update,
               "estep": m.get("estep_loss") is not None}
        row["gen_tokens_per_s"] = t["generated"] / max(m["generate_s"], 1e-9)
        row["tokens_per_s"] = (t["prefill"] + t["generated"]) / max(m["step_time_s"], 1e-9)
        if peak_tflops:
            row["mfu"] = f_total / (m["step_time_s"] * peak_tflops * 1e12)
            row["mfu_update"] = f_update / (m["update_s"] * peak_tflops * 1e12)
        rows.append(row)
        print(f"  step {step}: {m['step_time_s']:.2f}s (generate {m['generate_s']:.2f}s, update {m['update_s']:.2f}s, "
              f"teacher/E-step {m['teacher_update_s']:.2f}s) {t['generated']} tokens generated, "
              f"{row['gen_tokens_per_s']:.0f} gen tok/s" + (f", MFU {row['mfu']:.1%} (update {row['mfu_update']:.1%})"
                                                              if peak_tflops else "") + (" [E-step]" if row["estep"] else ""),
              flush=True)
    timed = rows[1:] if len(rows) > 1 else rows          # step 1 pays CUDA start-up and kernel selection
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    s = {"variant": variant, "method": method, "overrides": extra, "device": device_name, "params_b": round(n_params / 1e9, 3), "steps_timed": len(timed),
         "prompts": B, "group": G, "max_new_tokens": new_tokens, "precision": precision,
         "step_time_s": round(mean("step_time_s"), 3), "generate_s": round(mean("generate_s"), 3),
         "update_s": round(mean("update_s"), 3), "gen_tokens_per_s": round(mean("gen_tokens_per_s"), 1),
         "tokens_per_s": round(mean("tokens_per_s"), 1),
         "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
         "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2 ** 30, 2) if cuda else None,
         "mfu": round(sum(r["flops"] for r in timed) / (sum(r["step_time_s"] for r in timed) * peak_tflops * 1e12), 4)
         if peak_tflops else None,
         "mfu_update": round(sum(r["flops_update"] for r in timed) / (sum(r["update_s"] for r in timed) * peak_tflops * 1e12), 4)
         if peak_tflops else None}
    summaries.append(s)
    print("GPU_CHECK " + json.dumps(s), flush=True)
    if out_json:
        with open(out_json, "a") as fh:
            fh.write(json.dumps(s) + "\n")
    del trainer, loaded
    if cuda:
        torch.cuda.empty_cache()

base = next((s for s in summaries if s["variant"] == "sdpo"), None)
print("\n| variant | step time (s) | vs sdpo | generate (s) | update (s) | gen tok/s | tok/s | peak mem (GiB) | vs sdpo | MFU | MFU update |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for s in summaries:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    rel_t = f"{s['step_time_s'] / base['step_time_s']:.3f}" if base else "-"
    rel_m = f"{s['peak_mem_gib'] / base['peak_mem_gib']:.3f}" if base and base["peak_mem_gib"] else "-"
    print(f"| {s['variant']} | {s['step_time_s']} | {rel_t} | {s['generate_s']} | {s['update_s']} | {s['gen_tokens_per_s']} | "
          f"{s['tokens_per_s']} | {s['peak_mem_gib']} | {rel_m} | {pct(s['mfu'])} | {pct(s['mfu_update'])} |")
if base:
    sfx = "gpu" if cuda else "smoke"
    names = {"vpd": f"vpd_iteration_time_vs_sdpo_current_{sfx}", "vpd_keep": f"vpd_iteration_time_vs_sdpo_current_keep_{sfx}", "vpd_window": f"vpd_iteration_time_vs_sdpo_window_{sfx}",
             "vpd_exact": f"vpd_iteration_time_vs_sdpo_current_exact_{sfx}"}
    targets = {"vpd": "<= 1.3", "vpd_keep": "<= 1.3", "vpd_window": "<= 1.55", "vpd_exact": "<= 1.3"}
    for s in summaries:
        if s["variant"] in names:
            print(f"{names[s['variant']]}: {s['step_time_s'] / base['step_time_s']:.3f} (target {targets[s['variant']]})")
            if base["peak_mem_gib"]:
                print(f"{s['variant']}_peak_mem_vs_sdpo_{sfx}: {s['peak_mem_gib'] / base['peak_mem_gib']:.3f} (target <= 1.05)")
print(f"\ngpu_check: done in {time.time() - T0:.0f}s. MFU counts 2N FLOPs per generated/prefilled token and 6N per "
      f"trained token (N = all parameters), no attention FLOPs; steps after the first are averaged.")
PYEOF
