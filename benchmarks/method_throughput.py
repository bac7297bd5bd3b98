"""Training throughput of each method, read off completed runs (issue 12: "record the throughput
of each method in the `cpu` preset ... so a user can plan a sweep").

Unlike the other scripts here this one runs no model: it reads the per-step timings that every
run logs (`metrics.jsonl`: `step_time_s`, `generate_s`, `update_s`, `teacher_update_s`) and the
evaluation times (`eval.jsonl`: `eval_time_s`) of runs that completed, and prints per method

- training responses per minute (B x G responses per step over the step's wall time, the VPD
  E-step included, since `step_time_s` holds it),
- the split of a step's time into generation, update and E-step,
- the minutes a 30-step run of that preset spends training and evaluating.

The figures are as good as the conditions the runs met: runs made two at a time on otherwise
idle cores are comparable with each other; runs that shared the cores with more processes are
not (pass --root for one batch of runs made under the same conditions and say which in the note).

    python benchmarks/method_throughput.py --root results/cpu/runs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from vpd_bench.errors import UserError
from vpd_bench.evaluation.results import RunRecord, load_runs, read_jsonl


def run_figures(run: RunRecord) -> dict | None:
    """One completed run's timings, or None when it is incomplete or carries no timings."""
    steps = run.train_metrics
    if run.is_partial or not steps or "step_time_s" not in steps[0]:
        return None
    train = run.config.get("train") or {}
    per_step = int(train["prompts_per_step"]) * int(train["group_size"])
    total = sum(s["step_time_s"] for s in steps)
    path = run.run_dir / "eval.jsonl"         # its eval_time_s is not kept by load_runs
    evals = read_jsonl(path, []) if path.exists() else []
    return {
        "run": str(run.run_dir),
        "method": run.method,           # the folder's label: a variant such as sdpo[distill_stop=false] is its own row
        "steps": len(steps),
        "responses": per_step * len(steps),
        "train_min": total / 60,
        "responses_per_min": per_step * len(steps) / (total / 60),
        "generate_share": sum(s.get("generate_s", 0.0) for s in steps) / total,
        "update_share": sum(s.get("update_s", 0.0) for s in steps) / total,
        "estep_share": sum(s.get("teacher_update_s", 0.0) for s in steps) / total,
        "eval_min": sum(e.get("eval_time_s", 0.0) for e in evals) / 60,
        "evals": len(evals),
    }


def summarise(rows: list[dict]) -> dict[str, dict]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    out = {}
    for method, runs in sorted(by.items()):
        rpm = [r["responses_per_min"] for r in runs]
        out[method] = {
            "runs": len(runs),
            "responses_per_min_median": statistics.median(rpm),
            "responses_per_min_min": min(rpm),
            "responses_per_min_max": max(rpm),
            "train_min_median": statistics.median(r["train_min"] for r in runs),
            "eval_min_median": statistics.median(r["eval_min"] for r in runs),
            "generate_share": statistics.median(r["generate_share"] for r in runs),
            "update_share": statistics.median(r["update_share"] for r in runs),
            "estep_share": statistics.median(r["estep_share"] for r in runs),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="results/cpu/runs", help="folder holding completed runs")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    root = Path(args.root)
    try:
        runs = load_runs(root)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = [f for f in (run_figures(r) for r in runs) if f]
    if not rows:
        print(f"error: no completed run with per-step timings under {root}", file=sys.stderr)
        return 2
    summary = summarise(rows)
    print(f"{'method':8} {'runs':>4} {'responses/min':>22} {'train min':>9} {'eval min':>8} "
          f"{'generate':>8} {'update':>6} {'E-step':>6}")
    for method, s in summary.items():
        span = f"{s['responses_per_min_median']:.1f} [{s['responses_per_min_min']:.1f}, {s['responses_per_min_max']:.1f}]"
        print(f"{method:8} {s['runs']:>4} {span:>22} {s['train_min_median']:>9.1f} {s['eval_min_median']:>8.1f} "
              f"{s['generate_share']:>8.2f} {s['update_share']:>6.2f} {s['estep_share']:>6.2f}")
    base = summary.get("sdpo")
    for method, s in summary.items():
        print(f"method_throughput_{method}: {s['responses_per_min_median']:.2f} responses/min (target reported)")
    if base and "vpd" in summary:
        ratio = base["responses_per_min_median"] / summary["vpd"]["responses_per_min_median"]
        print(f"vpd_train_time_vs_sdpo_in_runs: {ratio:.3f} (target reported; the benchmark figure is bench_vpd_cost.py's)")
    if args.json:
        Path(args.json).write_text(json.dumps({"root": str(root), "runs": rows, "summary": summary}, indent=1),
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
