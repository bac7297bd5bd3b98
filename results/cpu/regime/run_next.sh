#!/usr/bin/env bash
# Issue 19 §1 (c): a GRPO pilot on the candidate regime (sciqa multiple choice, cpu_mc preset, one seed,
# held-out evaluation at steps 0 / 15 / 30), then the remaining regime probes. Resumable: a complete
# run and a finished probe are skipped.
set -u
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
vpd-bench run --methods grpo --task sciqa --preset cpu_mc --seeds 1 --out results/cpu/pilots \
  train.keep_checkpoints=0 > results/cpu/regime/pilot_grpo_cpu_mc.log 2>&1 || echo "FAILED pilot"
exec results/cpu/regime/run_probes.sh
