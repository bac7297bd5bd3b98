"""Robustness to noisy feedback (issue 19 §3): final held-out score vs the noise level p.

Feedback ``noisy`` replaces a response's feedback, with probability ``feedback.p``, by the feedback of
another problem; its ``feedback.sources`` (``[env, sibling]`` by default) name the clean source it
corrupts. So the curve of one method is

    p = 0:  the method's runs on the clean source (folder ``env+sibling``), plain label;
    p > 0:  its runs on ``noisy``, p read from each run's own config (labels ``sdpo`` or ``sdpo[p=0.3]``).

A label that changes anything else (``sdpo[distill_stop=false]``) is a different method and is left
out. Only complete runs count. ``robustness.csv`` has one row per (task, method, p): the seeds, the
mean and standard error over seeds of the final held-out score.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from vpd_bench.evaluation.results import TASK_ORDER, RunRecord, _order
from vpd_bench.report.claims import _bracket
from vpd_bench.report.figures import _eval_series

NOISY = "noisy"
COLUMNS = ["task", "method", "p", "feedback", "n_seeds", "seeds", "final_mean", "final_se"]


def _final(run: RunRecord, metric: str) -> float | None:
    _, scores = _eval_series(run, metric, "step")
    return float(scores[-1]) if len(scores) else None


def _feedback_config(run: RunRecord) -> dict:
    fb = run.config.get("feedback") if isinstance(run.config, dict) else None
    return fb if isinstance(fb, dict) else {}


def corrupted_source(run: RunRecord) -> str | None:
    """The feedback folder a noisy run corrupts, from its own ``feedback.sources`` (``[sibling]`` ->
    ``sibling``, ``[env, sibling]`` -> ``env+sibling``); None when its config does not say."""
    sources = _feedback_config(run).get("sources")
    return "+".join(str(s) for s in sources) if sources else None


def noise_table(runs: list[RunRecord], metric: str) -> list[dict]:
    """Rows (task, method, p, ...) for every method that has runs on ``noisy`` feedback, with its
    clean-source runs as p = 0."""
    noisy = [r for r in runs if r.feedback == NOISY and not r.is_partial]
    points: dict[tuple[str, str, float], dict] = {}
    clean_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in noisy:
        base, values = _bracket(r.method)
        if set(values) - {"p"}:
            continue
        p = _feedback_config(r).get("p", values.get("p"))
        score = _final(r, metric)
        if p is None or score is None:
            continue
        clean_of[(r.task, base)].add(corrupted_source(r))
        points.setdefault((r.task, base, float(p)), {"feedback": NOISY, "seeds": {}})["seeds"][r.seed] = score
    for (task, base), cleans in clean_of.items():
        for r in runs:
            if r.task == task and r.method == base and r.feedback in cleans and not r.is_partial:
                score = _final(r, metric)
                if score is not None:
                    points.setdefault((task, base, 0.0), {"feedback": r.feedback, "seeds": {}})["seeds"][r.seed] = score
    rows = []
    for (task, method, p), point in points.items():
        seeds = sorted(point["seeds"], key=lambda s: (s is None, s))
        values = [point["seeds"][s] for s in seeds]
        n = len(values)
        mean = sum(values) / n
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
        rows.append({"task": task, "method": method, "p": p, "feedback": point["feedback"], "n_seeds": n,
                     "seeds": " ".join(str(s) for s in seeds), "final_mean": mean, "final_se": se})
    rows.sort(key=lambda r: (_order(r["task"], TASK_ORDER), r["method"], r["p"]))
    return rows


def write_robustness_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) and not math.isnan(row[k])
                            else "" if isinstance(row[k], float) else row[k]) for k in COLUMNS})


def fig_noise_robustness(rows: list[dict], metric: str, notes: list[str]):
    """One panel per task: final held-out score vs p, one line per method (mean +- s.e. over seeds).
    A method with a single noise level and no clean runs has no curve and is left out."""
    from vpd_bench.report.figures import _method_legend, _new_figure, _sorted_methods, method_style
    by_task: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_task[row["task"]][row["method"]].append(row)
    panels = []
    for task in sorted(by_task, key=lambda t: _order(t, TASK_ORDER)):
        curves = {m: pts for m, pts in by_task[task].items() if len(pts) >= 2}
        for m in sorted(set(by_task[task]) - set(curves)):
            notes.append(f"noise robustness: {task}/{m} has one noise level only; no curve")
        if curves:
            panels.append((task, curves))
    if not panels:
        return None
    fig, axes = _new_figure(len(panels), max_cols=2, panel_w=4.0, panel_h=3.0)
    methods = set()
    for ax, (task, curves) in zip(axes, panels):
        for m in _sorted_methods(curves):
            pts = sorted(curves[m], key=lambda r: r["p"])
            st = method_style(m)
            xs = [r["p"] for r in pts]
            ys = [r["final_mean"] for r in pts]
            es = [0.0 if math.isnan(r["final_se"]) else r["final_se"] for r in pts]
            ax.errorbar(xs, ys, yerr=es, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                        capsize=3)
            for x, y, r in zip(xs, ys, pts):
                ax.annotate(f"n={r['n_seeds']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=st["color"])
            methods.add(m)
        ax.set_title(task)
        ax.set_xlabel("noise level p (share of feedback taken from another problem)")
        ax.set_ylabel(f"held-out {metric} (final)")
    fig.suptitle(f"Noisy feedback: final held-out {metric} vs p (mean \u00b1 s.e. over seeds)")
    _method_legend(fig, _sorted_methods(methods))
    return fig
