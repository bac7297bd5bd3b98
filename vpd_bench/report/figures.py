"""The report's figures: fixed per-method styles, score curves over steps, wall-clock and tokens,
final-score bars, the feedback ablation, training and health signals, the teacher probe."""
from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from vpd_bench.evaluation.results import (
    FEEDBACK_FREE, FEEDBACK_ORDER, METHOD_ORDER, TASK_ORDER, TEACHER_PROBE_FILE, RunRecord, _as_float, _as_int,
    _order, read_jsonl)
from vpd_bench.report.leaderboard import headline_feedback, score_of

# Okabe & Ito (2008) colour-blind-safe palette, keyed by method name so that a method has the
# same colour, line style and marker in every figure. VPD, the method under study, gets the
# most salient colour; yellow (#F0E442) is avoided because it vanishes on white.
METHOD_STYLE: dict[str, tuple[str, str, str]] = {
    "grpo": ("#0072B2", "-", "o"),        # blue
    "dr_grpo": ("#56B4E9", "--", "s"),    # sky blue
    "sdpo": ("#009E73", "-", "^"),        # bluish green
    "sdft": ("#CC79A7", "-.", "v"),       # reddish purple
    "opsd": ("#E69F00", ":", "D"),        # orange
    "grpo_sdpo": ("#555555", "--", "P"),  # dark grey
    "vpd": ("#D55E00", "-", "*"),         # vermillion
}
# Methods not in the table above (sweep variants such as ``vpd[estep_every=1]``, new methods) take
# these in sorted-name order within one report, so each keeps one look across that report's figures.

_EXTRA_STYLES = [("#882255", "-", "X"), ("#117733", "--", "h"), ("#332288", ":", "p"),   # Paul Tol's
                 ("#999933", "-.", "d"), ("#AA4499", "-", "<"), ("#44AA99", "--", ">")]   # muted set

# (metrics.jsonl key, axis label with unit, panel title, (lowest, highest) value the signal can take).
# Drawn per method as the mean across seeds.
HEALTH_SIGNALS = (
    ("teacher_gain", "success \u2212 failure (nats)", "Teacher gain: log q \u2212 log \u03c0", (None, None)),
    ("masked_teacher_frac", "fraction of responses", "Masked-teacher fraction", (0.0, 1.0)),
    ("entropy", "nats / token", "Student entropy", (0.0, None)),
    ("response_len", "tokens", "Response length", (0.0, None)),
    ("divergence", "per-token divergence (nats)", "Teacher-student divergence", (0.0, None)),
    ("no_signal_frac", "fraction of groups", "No-signal groups", (0.0, 1.0)),
)

UNIT_INTERVAL = (0.0, 1.0)   # rewards and held-out scores


# ----------------------------------------------------------------------------------------------
# figures


_assigned_styles: dict[str, tuple[str, str, str]] = {}


def assign_styles(methods) -> None:
    """Give every method outside METHOD_STYLE its own style from _EXTRA_STYLES (sorted by name;
    beyond six the colours repeat with another line style). Called once per report."""
    _assigned_styles.clear()
    extra = sorted({m for m in methods if m not in METHOD_STYLE}, key=lambda m: _order(m, METHOD_ORDER))
    dashes = ["-", "--", ":", "-."]
    for i, method in enumerate(extra):
        colour, ls, marker = _EXTRA_STYLES[i % len(_EXTRA_STYLES)]
        if i >= len(_EXTRA_STYLES):
            ls = dashes[(dashes.index(ls) + i // len(_EXTRA_STYLES)) % len(dashes)]
        _assigned_styles[method] = (colour, ls, marker)


def method_style(method: str) -> dict:
    """Colour, line style and marker of a method, the same in every figure of a report (fixed for
    the known methods, see METHOD_STYLE)."""
    if method in METHOD_STYLE:
        colour, ls, marker = METHOD_STYLE[method]
    elif method in _assigned_styles:
        colour, ls, marker = _assigned_styles[method]
    else:
        colour, ls, marker = _EXTRA_STYLES[sum(map(ord, method)) % len(_EXTRA_STYLES)]
    return {"color": colour, "linestyle": ls, "marker": marker}


_RC = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 9, "figure.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "lines.linewidth": 1.6, "lines.markersize": 4, "svg.fonttype": "none",
    "savefig.dpi": 200, "axes.titlepad": 4, "axes.formatter.useoffset": False,
    "svg.hashsalt": "vpd-bench",   # fixed SVG element ids: an unchanged figure regenerates byte-identical
}


def _sorted_methods(methods) -> list[str]:
    return sorted(set(methods), key=lambda m: _order(m, METHOD_ORDER))


def _pick_unit(largest: float, units: tuple[tuple[float, str, float], ...]) -> tuple[str, float]:
    """(name, divisor) of the first unit whose bound exceeds ``largest`` (the last one otherwise)."""
    for bound, name, scale in units:
        if largest < bound:
            return name, scale
    return units[-1][1], units[-1][2]


def _wall_unit(max_seconds: float) -> tuple[str, float]:
    return _pick_unit(max_seconds, ((120, "s", 1.0), (7200, "min", 60.0), (math.inf, "h", 3600.0)))


def _grid(n_panels: int, max_cols: int = 3, panel_w: float = 3.4, panel_h: float = 2.6):
    ncols = min(max_cols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    width = max(panel_w * ncols, 6.4)              # room for the figure title and legend
    return nrows, ncols, (width, panel_h * nrows + 0.9)


def _new_figure(n_panels: int, **kwargs):
    from matplotlib.figure import Figure
    nrows, ncols, size = _grid(n_panels, **kwargs)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, list(axes[:n_panels])


def _method_legend(fig, methods: list[str], markers: bool = True) -> None:
    from matplotlib.lines import Line2D
    handles = []
    for m in methods:
        st = method_style(m)
        handles.append(Line2D([], [], color=st["color"], linestyle=st["linestyle"],
                              marker=st["marker"] if markers else None, label=m))
    _figure_legend(fig, handles)


def _figure_legend(fig, handles) -> None:
    """One legend for the whole figure, below the panels, in as few and as even rows as fit."""
    # Rough width of an entry in inches at 9 pt: handle and padding, then ~0.075 in per character.
    total = sum(0.6 + 0.075 * len(h.get_label()) for h in handles)
    rows = max(1, math.ceil(total / (0.92 * fig.get_figwidth())))
    fig.legend(handles=handles, loc="outside lower center", ncols=math.ceil(len(handles) / rows), frameon=False)


def _mean_band(series: list[tuple[np.ndarray, np.ndarray]], interpolate: bool = False):
    """Mean and standard error across seeds on the union of the seeds' x values.

    Each seed is (x, y) with x increasing. Without ``interpolate`` a point is kept where at least
    half of the seeds have a value there. With ``interpolate`` each seed is interpolated linearly
    between its own points (never extrapolated) and a point is kept only where every seed covers
    it: seeds end at different wall-clock times, and a mean over a changing set of seeds jumps.
    The standard error is NaN where fewer than two seeds have a value.
    """
    series = [(x, y) for x, y in series if len(x)]
    if interpolate and any(len(x) >= 2 for x, _ in series):
        # A seed with a single evaluation has no span to interpolate over; it would cut the curve to one point.
        series = [(x, y) for x, y in series if len(x) >= 2]
    if not series:
        return np.array([]), np.array([]), np.array([])
    grid = np.unique(np.concatenate([x for x, _ in series]))
    matrix = np.full((len(series), len(grid)), np.nan)
    for i, (x, y) in enumerate(series):
        ok = ~np.isnan(y)
        x, y = x[ok], y[ok]
        if not len(x):
            continue
        if interpolate and len(x) >= 2:
            matrix[i] = np.interp(grid, x, y, left=np.nan, right=np.nan)
        else:
            matrix[i, np.searchsorted(grid, x)] = y
    present = ~np.isnan(matrix)
    count = present.sum(axis=0)
    keep = count >= (len(series) if interpolate else max(1, math.ceil(len(series) / 2)))
    safe = np.where(present, matrix, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = safe.sum(axis=0) / count
        dev = np.where(present, matrix - mean, 0.0)
        stderr = np.where(count >= 2, np.sqrt((dev ** 2).sum(axis=0) / np.maximum(count - 1, 1)) / np.sqrt(count), np.nan)
    return grid[keep], mean[keep], stderr[keep]


def _plot_band(ax, method: str, x, mean, stderr, markers: bool) -> np.ndarray:
    """Draw the mean line and the +- s.e. band; return every y value drawn (for _tidy_y)."""
    st = method_style(method)
    if len(x) == 1:
        # A line through one point draws nothing: a single logged value is a marker (with its s.e.).
        markers = True
        if not np.isnan(stderr[0]):
            ax.errorbar(x, mean, yerr=stderr, color=st["color"], capsize=2.5, linewidth=1.0, linestyle="none")
    ax.plot(x, mean, color=st["color"], linestyle=st["linestyle"],
            marker=st["marker"] if markers else None, label=method)
    lo = np.where(np.isnan(stderr), mean, mean - stderr)
    hi = np.where(np.isnan(stderr), mean, mean + stderr)
    if np.any(~np.isnan(stderr)):
        ax.fill_between(x, lo, hi, color=st["color"], alpha=0.18, linewidth=0)
    return np.concatenate([mean, lo, hi])


def _tidy_y(ax, drawn: list[np.ndarray], bounds: tuple[float | None, float | None]) -> None:
    """Keep the y axis inside what the quantity can take (no negative fractions), give a flat
    line a sensible range instead of matplotlib's +-0.04, and write tiny or huge tick values in
    full on each tick rather than as an offset above the axis, where it collides with the title."""
    from matplotlib.ticker import FuncFormatter
    values = np.concatenate(drawn) if drawn else np.array([])
    values = values[np.isfinite(values)]
    if not values.size:
        return
    lo_bound, hi_bound = bounds
    vmin, vmax = float(values.min()), float(values.max())
    if vmax - vmin < 1e-12:
        pad = 0.05 if (lo_bound, hi_bound) == UNIT_INTERVAL else max(abs(vmin) * 0.05, 1e-3)
        ax.set_ylim(vmin - pad, vmax + pad)
    bottom, top = ax.get_ylim()
    margin = 0.02 * (top - bottom)
    if lo_bound is not None and bottom < lo_bound - margin and vmin >= lo_bound:
        bottom = lo_bound - margin
    if hi_bound is not None and top > hi_bound + margin and vmax <= hi_bound:
        top = hi_bound + margin
    ax.set_ylim(bottom, top)
    largest = max(abs(bottom), abs(top))
    if largest < 1e-2 or largest >= 1e5:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.3g}"))


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that ignores NaN; NaN stays NaN."""
    if window <= 1 or len(y) < 3:
        return y
    valid = ~np.isnan(y)
    kernel = np.ones(window)
    num = np.convolve(np.where(valid, y, 0.0), kernel, mode="same")
    den = np.convolve(valid.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid] = np.nan
    return out


def _smoothing_window(n_steps: int) -> int:
    if n_steps <= 50:
        return 1
    w = max(3, round(n_steps / 25))
    return w + (w % 2 == 0)


NO_FEEDBACK_PANEL = "no feedback"


def _panels(runs: list[RunRecord]) -> list[tuple[str, str, list[RunRecord]]]:
    """(task, feedback source, runs) for each task x feedback source that a feedback-reading method
    was run with. The task's feedback-free runs (feedback "none" / "reference") join every panel
    of their task as baselines; a task with only such runs gets one "no feedback" panel."""
    out = []
    for task in sorted({r.task for r in runs}, key=lambda t: _order(t, TASK_ORDER)):
        mine = [r for r in runs if r.task == task]
        free = [r for r in mine if r.feedback in FEEDBACK_FREE]
        sources = sorted({r.feedback for r in mine if r.feedback not in FEEDBACK_FREE},
                         key=lambda f: _order(f, FEEDBACK_ORDER))
        for feedback in sources:
            out.append((task, feedback, [r for r in mine if r.feedback == feedback] + free))
        if not sources:
            out.append((task, NO_FEEDBACK_PANEL, free))
    return out


def _tokens_at(run: RunRecord):
    """step -> cumulative tokens generated in training rollouts (metrics.jsonl's tokens_generated;
    step 0 is 0 tokens), interpolated between logged steps and None beyond them."""
    steps, tokens = [0.0], [0.0]
    for row in run.train_metrics:
        t, st = _as_float(row.get("tokens_generated")), _as_int(row.get("step"))
        if t is not None and st is not None and st > steps[-1]:
            steps.append(float(st))
            tokens.append(t)

    def at(step: int) -> float | None:
        if len(steps) < 2 or step > steps[-1]:
            return None
        return float(np.interp(step, steps, tokens))
    return at


def _eval_series(run: RunRecord, metric: str, by: str):
    """(x, score) of the run's evaluations; x is the step (by='step'), the training wall-clock in
    seconds ('wall') or the cumulative tokens generated ('tokens')."""
    xs, ys = [], []
    tokens = _tokens_at(run) if by == "tokens" else None
    for entry in run.eval_history:
        value, _ = score_of(entry["metrics"], metric)
        x = entry["step"] if by == "step" else entry["wall_time_s"] if by == "wall" else tokens(entry["step"])
        if value is not None and x is not None:
            xs.append(float(x))
            ys.append(value)
    return np.asarray(xs), np.asarray(ys)


PROBE_COLUMNS = ["task", "method", "feedback", "seed", "step", "probe_logratio", "teacher_pass", "student_pass"]


def _probe_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """Runs that logged the teacher probe, as records whose step series are the probe rows."""
    import dataclasses
    out = []
    for r in runs:
        path = r.run_dir / TEACHER_PROBE_FILE
        rows = read_jsonl(path, r.warnings) if path.exists() else []
        if rows:
            out.append(dataclasses.replace(r, train_metrics=sorted(rows, key=lambda x: _as_int(x.get("step")) or 0)))
    return out


def write_teacher_probe_csv(probes: list[RunRecord], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PROBE_COLUMNS)
        for r in probes:
            for row in r.train_metrics:
                w.writerow([r.task, r.method, r.feedback, r.seed, row.get("step"), row.get("probe_logratio"),
                            row.get("teacher_pass"), row.get("student_pass")])


def _fig_teacher_probe(probes: list[RunRecord], notes: list[str]):
    signals = []
    for task in sorted({r.task for r in probes}):
        members = [r for r in probes if r.task == task]
        signals += [(f"{task}: log q(y*|x,C) \u2212 log \u03c0(y*|x)", members, "probe_logratio", "nats per token",
                     (None, None)),
                    (f"{task}: greedy pass reading feedback", members, "teacher_pass", "pass rate", (0.0, 1.0)),
                    (f"{task}: greedy pass, plain prompt", members, "student_pass", "pass rate", (0.0, 1.0))]
    return _fig_train_curves(signals, "Teacher probe", notes, "teacher probe")


def _train_series(run: RunRecord, key: str):
    xs, ys = [], []
    for row in run.train_metrics:
        value = _as_float(row.get(key))
        if value is not None:
            xs.append(float(_as_int(row["step"])))
            ys.append(value)
    return np.asarray(xs), np.asarray(ys)


def _tokens_unit(max_tokens: float) -> tuple[str, float]:
    return _pick_unit(max_tokens, ((1e4, "tokens", 1.0), (1e7, "thousand tokens", 1e3),
                                   (math.inf, "million tokens", 1e6)))


def _single_x(ax, drawn_x: list[np.ndarray], integer: bool) -> bool:
    """Give a panel whose every point sits at one x a sensible x range around it (matplotlib's
    default is a sliver); True when it did."""
    xs = np.concatenate(drawn_x) if drawn_x else np.array([])
    xs = xs[np.isfinite(xs)]
    if not xs.size or xs.max() - xs.min() > 1e-12:
        return False
    x0 = float(xs[0])
    half = 1.0 if integer else max(abs(x0) * 0.5, 1.0)
    ax.set_xlim(x0 - half, x0 + half)
    return True


def _fig_score_curves(runs, metric, by: str, notes: list[str]):
    """Held-out score vs training step (by='step'), wall-clock (by='wall') or tokens generated
    (by='tokens'), one panel per task x feedback."""
    from matplotlib.ticker import MaxNLocator
    panels = []
    for task, feedback, members in _panels(runs):
        per_method = defaultdict(list)
        for r in members:
            x, y = _eval_series(r, metric, by)
            if len(x):
                per_method[r.method].append((x, y))
        if per_method:
            panels.append((task, feedback, per_method))
        else:
            notes.append(f"score vs {by}: {task} \u00b7 {feedback} has no held-out evaluation"
                         + {"wall": " with a wall-clock time", "tokens": " at a step with logged tokens_generated"}.get(by, "")
                         + "; panel skipped")
    if not panels:
        return None
    unit, scale = "s", 1.0
    if by == "wall":
        unit, scale = _wall_unit(max(float(x.max()) for _, _, pm in panels for s in pm.values() for x, _ in s))
    elif by == "tokens":
        unit, scale = _tokens_unit(max(float(x.max()) for _, _, pm in panels for s in pm.values() for x, _ in s))
    # Markers mark real evaluations, so only on the step axis (wall-clock curves are interpolated).
    use_markers = by == "step" and max(len(x) for _, _, pm in panels for s in pm.values() for x, _ in s) <= 25
    fig, axes = _new_figure(len(panels))
    methods = set()
    for ax, (task, feedback, per_method) in zip(axes, panels):
        drawn, drawn_x = [], []
        for method in _sorted_methods(per_method):
            x, mean, se = _mean_band(per_method[method], interpolate=(by != "step"))
            drawn.append(_plot_band(ax, method, x / scale, mean, se, markers=use_markers))
            drawn_x.append(x / scale)
            methods.add(method)
        raw = np.concatenate([y for s in per_method.values() for _, y in s])
        _tidy_y(ax, drawn, UNIT_INTERVAL if raw.min() >= 0 and raw.max() <= 1 else (None, None))
        ax.set_title(f"{task} \u00b7 {feedback}")
        ax.set_xlabel({"step": "training step", "wall": f"training wall-clock ({unit})",
                       "tokens": "tokens generated in training" + ("" if unit == "tokens" else f" ({unit})")}[by])
        if by == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_ylabel(f"held-out {metric}")
        if not _single_x(ax, drawn_x, integer=(by == "step")):
            ax.margins(x=0.02)
    what = {"step": "training step", "wall": "training wall-clock", "tokens": "tokens generated"}[by]
    fig.suptitle(f"Held-out {metric} vs {what} (mean \u00b1 s.e. over seeds)")
    _method_legend(fig, _sorted_methods(methods), markers=use_markers)
    return fig


def _headline_feedback(rows: list[dict], task: str) -> str | None:
    """The feedback source a task's final-score bars show (``leaderboard.headline_feedback``): the
    one with the most seeds over plain method labels (a variant ``vpd[prior=initial]`` does not
    count), ties to env+sibling; None when only feedback-free methods ran."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["task"] == task and "[" not in row["method"] and row["n_seeds"]:
            counts[row["feedback"]] += row["n_seeds"]
    return headline_feedback(counts)


def _baseline_row(by_key: dict, task: str, method: str) -> dict | None:
    return next((by_key[(task, f, method)] for f in FEEDBACK_FREE if (task, f, method) in by_key), None)


def _baseline_label(method: str, feedback: str) -> str:
    return f"{method} (no feedback)" if feedback == "none" else f"{method} ({feedback})"


def _grouped_bars(ax, groups: list[str], methods: list[str], cell, points: dict, initial: bool = False) -> bool:
    """Bars per group (x) and method (colour); cell(group, method) -> leaderboard row or None;
    points[(task, feedback, method)] -> the seeds' final scores, drawn as dots. With ``initial``
    a dashed black line across each bar marks that row's mean step-0 score."""
    width = 0.8 / max(1, len(methods))
    any_partial = False
    for j, method in enumerate(methods):
        st = method_style(method)
        for i, group in enumerate(groups):
            row = cell(group, method)
            if row is None or math.isnan(row["final_mean"]):
                continue
            xpos = i - 0.4 + width * (j + 0.5)
            partial = row["n_partial"] > 0
            any_partial |= partial
            err = None if math.isnan(row["final_stderr"]) else row["final_stderr"]
            ax.bar(xpos, row["final_mean"], width * 0.92, color=st["color"], edgecolor="white" if not partial else "black",
                   linewidth=0.6, hatch="///" if partial else None, yerr=err, capsize=2.5,
                   error_kw={"elinewidth": 1.0, "ecolor": "black"})
            if initial and not math.isnan(row["initial_mean"]):
                ax.hlines(row["initial_mean"], xpos - width * 0.5, xpos + width * 0.5, colors="black",
                          linestyles=(0, (3, 1.5)), linewidth=1.3, zorder=4)
            seeds = points.get((row["task"], row["feedback"], row["method"]), [])
            if len(seeds) > 1:
                ax.scatter(np.full(len(seeds), xpos), seeds, s=9, color="black", alpha=0.55, zorder=3, linewidths=0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="x", visible=False)
    bottom, top = ax.get_ylim()
    if bottom < 0 <= min((r["final_mean"] for g in groups for m in methods if (r := cell(g, m)) is not None), default=0):
        # Bars start at zero; all-zero bars get a unit axis rather than matplotlib's +-0.05.
        ax.set_ylim(0, top if top > 1e-9 else 1.0)
    return any_partial


def _bar_legend(fig, methods: list[str], any_partial: bool, seeds: bool, baselines: list[tuple[str, str]] = (),
                labels: dict[str, str] | None = None, initial: bool = False) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    labels = labels or {}
    handles = [Patch(facecolor=method_style(m)["color"], label=labels.get(m, m)) for m in methods]
    if initial:
        handles.append(Line2D([], [], color="black", linestyle=(0, (3, 1.5)), linewidth=1.3, label="initial (step 0)"))
    for method, feedback in baselines:
        st = method_style(method)
        handles.append(Line2D([], [], color=st["color"], linestyle=st["linestyle"], linewidth=1.6,
                              label=_baseline_label(method, feedback)))
    if seeds:
        handles.append(Line2D([], [], marker="o", linestyle="none", color="black", alpha=0.55, markersize=3, label="seed"))
    if any_partial:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="includes partial runs"))
    _figure_legend(fig, handles)


def _seed_points(runs, metric) -> dict:
    table = defaultdict(list)
    for r in runs:
        x, y = _eval_series(r, metric, "step")
        if len(y):
            table[r.key].append(y[-1])
    return table


def _fig_final_bars(runs, rows, metric, notes):
    by_key = {(r["task"], r["feedback"], r["method"]): r for r in rows if not math.isnan(r["final_mean"])}
    tasks = sorted({t for t, _, _ in by_key}, key=lambda t: _order(t, TASK_ORDER))
    if not tasks:
        notes.append("final-score bars: no run has a held-out score; figure skipped")
        return None
    chosen = {t: _headline_feedback(rows, t) for t in tasks}

    def cell(task: str, method: str) -> dict | None:
        # The task's headline feedback source; a method that reads no feedback shows its only runs.
        row = by_key.get((task, chosen[task], method)) if chosen[task] else None
        return row or _baseline_row(by_key, task, method)

    methods = _sorted_methods(m for t, _, m in by_key if cell(t, m) is not None)
    # Each method is labelled with the feedback its own runs read (GRPO "none", SDFT "reference"),
    # not the task's headline source.
    feedback_of: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        for m in methods:
            row = cell(t, m)
            if row is not None and row["feedback"] not in feedback_of[m]:
                feedback_of[m].append(row["feedback"])
    labels = {m: f"{m} ({' / '.join(feedback_of[m])})" for m in methods}
    points = _seed_points(runs, metric)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(5.6, 1.0 + 0.32 * len(methods) * len(tasks) + 0.5 * len(tasks)), 3.6), layout="constrained")
    ax = fig.add_subplot()
    any_partial = _grouped_bars(ax, tasks, methods, cell=cell, points=points, initial=True)
    ax.set_ylabel(f"held-out {metric} (final evaluation)")
    ax.set_xlabel("task")
    ax.set_title(f"Final held-out {metric} by method (mean \u00b1 s.e. over seeds)")
    _bar_legend(fig, methods, any_partial, seeds=any(len(v) > 1 for v in points.values()), labels=labels,
                initial=any(not math.isnan(cell(t, m)["initial_mean"]) for t in tasks for m in methods
                            if cell(t, m) is not None))
    _tilt_crowded_ticks(fig, [ax])
    return fig


def _fig_feedback_ablation(runs, rows, metric, notes):
    """Per task: final score by feedback source (x) and method (bars); methods that read no
    feedback are horizontal reference lines."""
    by_key = {(r["task"], r["feedback"], r["method"]): r for r in rows if not math.isnan(r["final_mean"])}
    points = _seed_points(runs, metric)
    panels = []
    for task in sorted({t for t, _, _ in by_key}, key=lambda t: _order(t, TASK_ORDER)):
        sources = sorted({f for t, f, _ in by_key if t == task and f not in FEEDBACK_FREE},
                         key=lambda f: _order(f, FEEDBACK_ORDER))
        if len(sources) < 2:
            what = f"one feedback source only ({sources[0]})" if sources else "no feedback-reading method"
            notes.append(f"feedback ablation: {task} has results for {what}; panel skipped")
            continue
        panels.append((task, sources))
    if not panels:
        return None
    fig, axes = _new_figure(len(panels), max_cols=2, panel_w=max(4.0, 0.9 + 0.75 * max(len(f) for _, f in panels)),
                            panel_h=3.0)
    methods_all, baselines_all, any_partial = set(), set(), False
    for ax, (task, sources) in zip(axes, panels):
        methods = _sorted_methods(m for t, f, m in by_key if t == task and f in sources)
        methods_all.update(methods)
        any_partial |= _grouped_bars(ax, sources, methods, cell=lambda g, m, t=task: by_key.get((t, g, m)), points=points)
        for (t, f, m), row in sorted(by_key.items(), key=lambda kv: _order(kv[0][2], METHOD_ORDER)):
            if t == task and f in FEEDBACK_FREE:
                st = method_style(m)
                ax.axhline(row["final_mean"], color=st["color"], linestyle=st["linestyle"], linewidth=1.6, zorder=4)
                baselines_all.add((m, f))
                any_partial |= row["n_partial"] > 0
        ax.set_title(task)
        ax.set_xlabel("feedback source")
        ax.set_ylabel(f"held-out {metric} (final)")
    fig.suptitle(f"Feedback-source ablation: final held-out {metric} (mean \u00b1 s.e. over seeds)")
    baselines = sorted(baselines_all, key=lambda mf: _order(mf[0], METHOD_ORDER))
    _bar_legend(fig, _sorted_methods(methods_all), any_partial, seeds=any(len(v) > 1 for v in points.values()),
                baselines=baselines)
    _tilt_crowded_ticks(fig, axes)
    return fig


def _tilt_crowded_ticks(fig, axes) -> None:
    """Tilt an axis' x tick labels only where they would touch when drawn side by side."""
    fig.draw_without_rendering()
    for ax in axes:
        boxes = sorted((label.get_window_extent() for label in ax.get_xticklabels() if label.get_text()),
                       key=lambda b: b.x0)
        gap = 4 * fig.dpi / 72                                 # 4 pt between neighbours
        if any(a.x1 + gap > b.x0 for a, b in zip(boxes, boxes[1:])):
            for label in ax.get_xticklabels():
                label.set_rotation(25)
                label.set_horizontalalignment("right")
                label.set_rotation_mode("anchor")


def _fig_train_curves(signals, title: str, notes: list[str], where: str):
    """One panel per (panel title, runs, metrics.jsonl key, y label): per method, the mean +- s.e.
    over seeds vs step, each seed smoothed first when a run is long."""
    from matplotlib.ticker import MaxNLocator
    panels = []
    for panel_title, members, key, ylabel, bounds in signals:
        per_method = defaultdict(list)
        for r in members:
            x, y = _train_series(r, key)
            if len(x):
                per_method[r.method].append((x, y))
        if per_method:
            panels.append((panel_title, key, ylabel, bounds, per_method))
        else:
            notes.append(f"{where}: {panel_title} has no logged `{key}`; panel skipped")
    if not panels:
        return None
    longest = max(len(x) for *_, pm in panels for s in pm.values() for x, _ in s)
    use_markers = longest <= 25
    fig, axes = _new_figure(len(panels))
    methods, windows = set(), set()
    for ax, (panel_title, key, ylabel, bounds, per_method) in zip(axes, panels):
        drawn, drawn_x = [], []
        for method in _sorted_methods(per_method):
            w = _smoothing_window(max(len(x) for x, _ in per_method[method]))
            windows.add(w)
            smoothed = [(x, _smooth(y, w)) for x, y in per_method[method]]
            x, mean, se = _mean_band(smoothed)
            drawn.append(_plot_band(ax, method, x, mean, se, markers=use_markers))
            drawn_x.append(x)
            methods.add(method)
        _tidy_y(ax, drawn, bounds)
        ax.set_title(panel_title)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_ylabel(ylabel)
        if _single_x(ax, drawn_x, integer=True):
            notes.append(f"{where}: {panel_title} has a single logged step; drawn as points")
        else:
            ax.margins(x=0.02)
    smoothing = ""
    if windows - {1}:
        smoothing = f"; moving average over {', '.join(str(w) for w in sorted(windows - {1}))} steps"
    fig.suptitle(f"{title} (mean \u00b1 s.e. over seeds{smoothing})")
    _method_legend(fig, _sorted_methods(methods), markers=use_markers)
    return fig


def _fig_train_reward(runs, notes):
    signals = [(f"{task} \u00b7 {feedback}", members, "reward_mean", "train reward (batch mean)", UNIT_INTERVAL)
               for task, feedback, members in _panels(runs)]
    return _fig_train_curves(signals, "Training reward vs step", notes, "training reward")


def _fig_health(members, task, feedback, notes):
    signals = [(title, members, key, label, bounds) for key, label, title, bounds in HEALTH_SIGNALS]
    return _fig_train_curves(signals, f"Health signals, {task} \u00b7 {feedback}", notes,
                             f"health {task} \u00b7 {feedback}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


EMBED_DPI = 120   # resolution of the copies embedded in report.html; the PNG files use savefig.dpi


def _save(fig, directory: Path, stem: str) -> tuple[dict[str, Path], bytes]:
    """Write <stem>.png and <stem>.svg; return their paths and a lighter PNG for embedding."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("png", "svg"):
        path = directory / f"{stem}.{ext}"
        # tight: a long legend label (``sdft[distill_stop=false] (reference)``) is not cut at the edge
        fig.savefig(path, format=ext, metadata={"Date": None} if ext == "svg" else None, bbox_inches="tight")
        out[ext] = path
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=EMBED_DPI, bbox_inches="tight")
    return out, buffer.getvalue()
