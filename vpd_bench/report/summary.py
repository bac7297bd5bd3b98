"""What `vpd-bench run` prints when it ends: the compact leaderboard of the runs it just made (the
columns of the report's leaderboard), the command that writes the full report, and a plain warning
when a run had no learning signal (every group's rewards equal in most steps)."""
from __future__ import annotations

from pathlib import Path

from vpd_bench.training.store import read_jsonl
from vpd_bench.evaluation.results import EVAL_FILE, METRICS_FILE, RESULTS_FILE

# a step is "flat" when every group had one reward; a run is flagged when most of its steps were
FLAT_STEP = 0.999
FLAT_RUN_SHARE = 0.5


def no_signal(run_dir: Path) -> dict | None:
    """{'flat_steps', 'steps', 'all_fail'} when most logged steps had no group with mixed rewards."""
    rows = [r for r in read_jsonl(Path(run_dir) / METRICS_FILE) if r.get("no_signal_frac") is not None]
    if not rows:
        return None
    flat = [r for r in rows if float(r["no_signal_frac"]) >= FLAT_STEP]
    if len(flat) <= FLAT_RUN_SHARE * len(rows):
        return None
    fail = sum(1 for r in flat if float(r.get("reward_mean") or 0.0) < 0.5)
    return {"flat_steps": len(flat), "steps": len(rows), "all_fail": fail >= len(flat) / 2}


def closing_summary(run_dirs: list[Path], out_root: str | Path, methods: list[str], failures: int = 0) -> str:
    from vpd_bench.report import summary_table
    dirs = [Path(d) for d in run_dirs if (Path(d) / RESULTS_FILE).exists() or (Path(d) / EVAL_FILE).exists()]
    lines = ["", f"== vpd-bench: {len(run_dirs)} run(s)" + (f", {failures} failed" if failures else "") + " =="]
    if not dirs:
        lines.append("No run wrote results.")
        return "\n".join(lines) + "\n"
    baseline = "grpo" if "grpo" in methods and len(set(methods)) > 1 else "none"
    lines.append(summary_table(dirs, baseline=baseline).rstrip())
    flat = [(d, s) for d in dirs if (s := no_signal(d)) is not None]
    if flat:
        lines.append("")
        lines.append("No learning signal in " + ", ".join(
            f"{_short(d, out_root)} ({s['flat_steps']}/{s['steps']} steps with every group "
            f"{'failing' if s['all_fail'] else 'at one reward'})" for d, s in flat) + ".")
        lines.append("  A group whose responses all get the same reward teaches GRPO nothing and gives the "
                     "distillation methods no passing sibling. Try an easier task setting (e.g. "
                     "`--task math --preset cpu`), a larger model (e.g. "
                     "`--model qwen2.5-coder-0.5b` for code), a larger group (`train.group_size=8`), or more steps.")
    lines.append("")
    lines.append(f"Full report (plots, HTML, per-run table): vpd-bench report {out_root} --out {Path(out_root) / 'report'}")
    return "\n".join(lines) + "\n"


def _short(run_dir: Path, out_root) -> str:
    try:
        return str(Path(run_dir).relative_to(Path(out_root)))
    except ValueError:
        return str(run_dir)
