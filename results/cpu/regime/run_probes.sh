#!/usr/bin/env bash
# Issue 19 §1: the teacher's advantage per feedback source in each candidate regime (initial model,
# training problems). One probe after another, one thread each; a finished probe (probe.json) is skipped.
set -u
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
out=results/cpu/regime
probe() {  # name, then the probe's arguments
  local name=$1; shift
  if [ -f "$out/$name/probe.json" ]; then echo "skip $name"; return; fi
  vpd-bench probe --preset cpu --samples 4 --out "$out/$name" "$@" > "$out/$name.log" 2>&1 || echo "FAILED $name (see $out/$name.log)"
}
probe sciqa-mc     --task sciqa --problems 48 --sources env,sibling,env+sibling,self_critique task.calc_fraction=0 rollout.max_new_tokens=96
probe math-arith   --task math  --problems 48 --sources env,sibling,env+sibling,self_critique
probe sciqa-calc   --task sciqa --problems 32 --sources env,sibling,env+sibling,self_critique task.calc_fraction=1 rollout.max_new_tokens=192
probe sciqa-mix    --task sciqa --problems 48 --sources env,sibling,env+sibling task.calc_fraction=0.5 rollout.max_new_tokens=96
probe math-champ   --task math  --problems 32 --sources hint,env,sibling,env+sibling task.source=champ rollout.max_new_tokens=192
