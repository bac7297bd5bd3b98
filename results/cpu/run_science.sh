#!/usr/bin/env bash
# Issues 13 and 18: the CPU-scale science, one resumable command. Every stage skips finished runs
# and resumes partial ones from their checkpoints, so re-running this script after a session ends
# picks up where it stopped. Stages, in order:
#   1. tuning (issue 18 §1): grpo, sdpo, sdft, vpd at train.lr in {3e-6, 1e-5, 3e-5}, one seed each,
#      chosen on the validation split -> results/cpu/tuning/chosen.yaml (a method gets a choice only
#      once its whole grid is complete). Runs from the worktree given as TUNE_TREE when it exists (a
#      detached checkout with its own .venv, so that commits to this checkout cannot reach runs in
#      flight), else from here.
#   NOTE: count only on git surviving the end of a session on this project's machine: session 8
#   started from a fresh clone (a run in flight was lost, checkpoints and all), session 9 found the
#   previous session's worktree intact (runs with checkpoints resume from them). Measured in session 8 with two runs at a time on otherwise idle
#   cores, a cpu-preset run takes about 20-25 min (GRPO, SDFT), ~35 min (SDPO) and ~50 min (VPD)
#   including its three evaluations, so each fits in a session; start long stages early.
#   2. the comparison (issue 13 §2 and §4): the cpu_comparison sweep at the chosen values, SEEDS
#      seeds (default 3 first, then 5: seeds run seed-major, so 3 complete seeds come before any
#      fourth). Its GRPO rows are the positive control.
#   3. the report: results/cpu/report (leaderboard.csv, teacher_probe.csv, figures, HTML).
#   4. ablations (issue 13 §5, issue 18 §2) at 3 seeds: the distillers without the stop token in
#      the divergence (cpu_distill_stop, the lead of session 9), the VPD prior, F, feedback sources,
#      and the collapse controls. Each is long; STAGES limits what runs (e.g. STAGES="1 2 3").
# Cost on the 2-core machine (results/cpu/README.md §0, session 8): per seed of the four methods
# about 2.2 h of one core, so the comparison at 5 seeds is about 5.5 h of wall-clock with two jobs.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
SEEDS=${SEEDS:-3}
STAGES=${STAGES:-"1 2 3 4"}
TUNE_TREE=${TUNE_TREE:-}
LOG=results/cpu/run_science.log
say() { echo "$(date '+%F %T') $*" | tee -a "$LOG"; }
want() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }
CHOSEN=results/cpu/tuning/chosen.yaml

if want 1 && { [ ! -f "$CHOSEN" ] || grep -q "no choice yet" "$CHOSEN"; }; then      # a method still waits for its grid
  tree=$ROOT
  if [ -n "$TUNE_TREE" ] && { [ -d "$TUNE_TREE/.git" ] || [ -f "$TUNE_TREE/.git" ]; }; then tree=$TUNE_TREE; fi
  say "stage 1: tuning in $tree"
  py=python; [ -x "$tree/.venv/bin/python" ] && py="$tree/.venv/bin/python"    # the tree's own code
  (cd "$tree" && OMP_NUM_THREADS=1 "$py" -m vpd_bench tune --methods grpo,sdpo,sdft,vpd --task math --preset cpu --feedback env+sibling \
      --grid train.lr=3e-6,1e-5,3e-5 --seeds 1 --jobs 2 --out results/cpu/tuning) >> "$LOG" 2>&1 \
    || { say "stage 1 FAILED (see $LOG)"; exit 1; }
  if [ "$tree" != "$ROOT" ]; then      # bring the finished tuning (no weights) into this checkout
    (cd "$tree/results/cpu/tuning" && tar cf - --exclude checkpoints --exclude stdout.log --exclude .lock .) \
      | (mkdir -p results/cpu/tuning && cd results/cpu/tuning && tar xf -)
  fi
fi
if [ ! -f "$CHOSEN" ]; then say "no $CHOSEN yet: stage 1 must finish before the comparison"; exit 1; fi

if want 2; then
  say "stage 2: cpu_comparison at the tuned values, $SEEDS seed(s)"
  vpd-bench run --sweep cpu_comparison --tuned "$CHOSEN" --seeds "$SEEDS" --jobs 2 >> "$LOG" 2>&1 \
    || say "stage 2: some runs failed (see $LOG); re-run to retry them"
fi
if want 3; then
  say "stage 3: report"
  vpd-bench report results/cpu/runs --out results/cpu/report >> "$LOG" 2>&1 || say "stage 3 FAILED (see $LOG)"
fi
if want 4; then
  for sweep in cpu_distill_stop cpu_vpd_prior cpu_vpd_estep_every cpu_feedback_sources cpu_noise; do
    say "stage 4: $sweep"
    vpd-bench run --sweep "$sweep" --tuned "$CHOSEN" --jobs 2 >> "$LOG" 2>&1 \
      || say "stage 4: $sweep had failures (see $LOG)"
  done
  # the collapse controls keep the pilots' lr 1e-5 (a diagnosis of the pilots, not a comparison)
  say "stage 4: cpu_collapse"
  vpd-bench run --sweep cpu_collapse --jobs 2 >> "$LOG" 2>&1 || say "stage 4: cpu_collapse had failures (see $LOG)"
  vpd-bench report results/cpu/runs --out results/cpu/report >> "$LOG" 2>&1 || say "report FAILED (see $LOG)"
fi
say "done: stages $STAGES"
