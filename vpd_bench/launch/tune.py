"""Tuning: each method's settings chosen on a validation split, with the same grid and budget for all.

    vpd-bench tune --methods grpo,sdpo,vpd --task math --preset cpu --grid train.lr=3e-6,1e-5,3e-5

runs every method at every grid point (same steps, same seeds) with ``eval.split=validation``:
the evaluations score the last ``eval.validation_problems`` training problems, which every run
(tuning or comparison) holds back from training, so the held-out split the leaderboard reports
never takes part in a choice. A grid key a method does not have (``method.beta`` for grpo) is
applied only to the methods that have it. The runs go through the sweep machinery
(``vpd_bench.launch.sweep``): folders ``<out>/<task>/<method>[<grid label>]/<feedback>/seed<k>``,
complete runs skipped on a re-run, partial ones resumed. Then :func:`choose` picks one point per
method by :data:`RULE` and :func:`write_outputs` writes ``tuning.json``, ``tuning.md``,
``chosen.yaml`` (the overrides ``vpd-bench run --tuned`` applies) and ``tuning.png``.

docs/tuning.md describes the command, the rule and the files.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from vpd_bench.errors import UserError
from vpd_bench.training.splits import SPLITS, VALIDATION_SHARE, hold_out_validation  # noqa: F401 (re-exported)

log = logging.getLogger("vpd_bench")

DEFAULT_OUT = "runs/tuning"
CONFIDENCE = 0.95

RULE = ("For each method, every grid point is scored by its validation {metric} at the final evaluation, "
        "averaged over seeds; the best point has the highest mean. A point ties with the best when the 95% "
        "interval of its paired difference from the best contains 0 (paired by seed and validation problem "
        "from eval_samples.jsonl: a bootstrap over problems with one seed, over seeds x problems with more; "
        "a t-interval over seeds where per-problem samples are missing; with one seed and no samples only an "
        "equal mean ties). Among the best point and the points tied with it, the choice is the smallest "
        "learning rate, then the first value of each other grid key in the order the grid lists it. A method "
        "gets a choice only when every point of its grid has complete runs that reached the final step (the "
        "same grid for every method); until then the table names a provisional choice among the complete "
        "points and chosen.yaml has none for it.")


# ----------------------------------------------------------------------------------------------
# the validation split (used by the training loop)


# ----------------------------------------------------------------------------------------------
# the grid and the plan


def parse_grid(items: list[str] | None) -> dict[str, list[str]]:
    """``["train.lr=3e-6,1e-5", "method.beta=0.01,0.1"]`` -> ``{"train.lr": [...], "method.beta": [...]}``
    (insertion order = the order given, which the choice rule's tie-break uses)."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise UserError(f"--grid {item!r} is not of the form key=v1,v2,... (e.g. train.lr=3e-6,1e-5,3e-5)")
        if key in grid:
            raise UserError(f"--grid names {key} twice: give all its values in one --grid")
        if len(set(vals)) != len(vals):
            raise UserError(f"--grid {key} repeats a value: {values}")
        grid[key] = vals
    if not grid:
        raise UserError("give at least one --grid key=v1,v2,... (e.g. --grid train.lr=3e-6,1e-5,3e-5)")
    return grid


def grid_label(values: dict[str, str]) -> str:
    """The label ``sweep.expand`` gives a grid point (keys sorted, last component): ``lr=1e-5``."""
    return ",".join(f"{k.split('.')[-1]}={values[k]}" for k in sorted(values))


def preference(values: dict[str, str], grid: dict[str, list[str]]) -> tuple:
    """Tie-break order of a point (smaller = preferred): its learning rate's rank from the smallest,
    then, key by key in the grid's order, the position of its value in that key's list."""
    keys = sorted(grid, key=lambda k: k != "train.lr")      # train.lr first, the others as given
    ranks = []
    for key in keys:
        if key not in values:
            ranks.append(-1)                                # a key this method does not have
        elif key == "train.lr":
            ranks.append(sorted(grid[key], key=float).index(values[key]))
        else:
            ranks.append(grid[key].index(values[key]))
    return tuple(ranks)


@dataclass
class Point:
    """One grid point of one method: its values and its run folder per seed."""
    method: str
    values: dict[str, str]
    run_dirs: dict[int, Path] = field(default_factory=dict)
    preference: tuple = ()

    @property
    def label(self) -> str:
        return grid_label(self.values)

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


def _has_key(cfg, key: str) -> bool:
    from omegaconf import OmegaConf
    missing = object()
    return OmegaConf.select(cfg, key.lstrip("+~"), default=missing) is not missing


def plan(methods: list[str], task: str, grid: dict[str, list[str]], seeds: list[int], feedback: str | None = None,
         model: str | None = None, preset: str | None = None, engine: str | None = None,
         overrides: list[str] = (), out: str = DEFAULT_OUT):
    """(specs, points by method, grid keys skipped by method). Every method gets the grid keys its
    config has; the runs evaluate on the validation split."""
    from vpd_bench.config import compose
    from vpd_bench.launch.sweep import expand
    overrides = list(overrides)
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key == "eval.split":
            raise UserError("tune always evaluates on the validation split (eval.split=validation): drop the "
                            f"override {ov!r}")
        if key in grid:
            raise UserError(f"{key} is both a --grid key and an override ({ov!r}): give it once")
    overrides.append("eval.split=validation")
    base = {m: compose(m, task, feedback, model, preset, engine, overrides) for m in methods}
    for cfg in base.values():
        if int(cfg.eval.validation_problems) <= 0:
            raise UserError("tuning needs a validation split: eval.validation_problems must be > 0")
    for key in grid:
        if not any(_has_key(cfg, key) for cfg in base.values()):
            # compose with the key to get the config's own "unknown key ... did you mean" message
            compose(methods[0], task, feedback, model, preset, engine, overrides + [f"{key}={grid[key][0]}"])
            raise UserError(f"grid key {key} applies to none of the methods {', '.join(methods)}")
    per_method: list[list] = []
    points: dict[str, list[Point]] = {}
    skipped: dict[str, list[str]] = {}
    for method in methods:
        mine = {k: v for k, v in grid.items() if _has_key(base[method], k)}
        skipped[method] = [k for k in grid if k not in mine]
        specs = expand([method], [task], [feedback] if feedback else None, seeds, model, preset, engine,
                       overrides, out, mine)
        by_label: dict[str, Point] = {}
        for combo in itertools.product(*(mine[k] for k in mine)):
            values = dict(zip(mine, combo))
            by_label[grid_label(values)] = Point(method, values, preference=preference(values, grid))
        for spec in specs:
            by_label[spec.grid_label].run_dirs[spec.seed] = spec.run_dir()
        points[method] = list(by_label.values())
        per_method.append(specs)
    # seed-major, then grid point, then method: a tuning stopped half-way holds every method at the
    # points and seeds it reached
    specs = [s for group in itertools.zip_longest(*per_method) for s in group if s is not None]
    specs.sort(key=lambda s: s.seed)
    return specs, points, skipped


# ----------------------------------------------------------------------------------------------
# reading runs and choosing


def _point_summary(point: Point, metric: str) -> dict:
    """Per seed: the validation curve {step: score}, the final step, per-problem final scores."""
    from vpd_bench.evaluation.results import load_run
    from vpd_bench.report.leaderboard import score_of
    seeds = {}
    for seed, run_dir in sorted(point.run_dirs.items()):
        if not Path(run_dir).is_dir():
            continue
        run = load_run(run_dir)
        curve = {}
        for entry in run.eval_history:
            value, _ = score_of(entry["metrics"], metric)
            if value is not None:
                curve[int(entry["step"])] = value
        if not curve:
            continue
        final_step = max(curve)
        seeds[seed] = {"run_dir": str(run_dir), "status": run.status, "curve": curve, "final_step": final_step,
                       "final": curve[final_step],
                       "by_problem": run.problem_scores(metric, final_step) if metric in (
                           "pass@1", "avg@k", "greedy", "pass@k") else None}
    return seeds


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def paired_difference(a: dict, b: dict) -> tuple[float, float, float, str]:
    """(estimate, low, high, method) of the mean paired difference b - a of two points' final scores,
    over the seeds both have (``a`` / ``b``: :func:`_point_summary` outputs)."""
    from vpd_bench.evaluation.stats import paired_bootstrap, t_interval
    common = sorted(set(a) & set(b))
    if not common:
        return math.nan, math.nan, math.nan, "n/a (no common seed)"
    if all(a[s]["by_problem"] and b[s]["by_problem"] for s in common):
        problems = sorted(set().union(*(set(a[s]["by_problem"]) & set(b[s]["by_problem"]) for s in common)))
        if problems:
            table = [[b[s]["by_problem"][p] - a[s]["by_problem"][p]
                      if p in a[s]["by_problem"] and p in b[s]["by_problem"] else math.nan for p in problems]
                     for s in common]
            est, lo, hi = paired_bootstrap(table, confidence=CONFIDENCE)
            if not math.isnan(lo):
                return est, lo, hi, "bootstrap(problems)" if len(common) == 1 else "bootstrap(seeds x problems)"
    diffs = [b[s]["final"] - a[s]["final"] for s in common]
    est, lo, hi = t_interval(diffs, confidence=CONFIDENCE)
    if len(diffs) < 2:
        return est, math.nan, math.nan, "n/a (one seed, no per-problem samples)"
    return est, lo, hi, "t(seeds)"


def choose(points: list[Point], metric: str = "pass@1") -> dict:
    """Apply :data:`RULE` to one method's points. Returns ``{"points": [...], "best", "chosen",
    "reason"}``; each point carries its per-step validation curve (mean over seeds), its final
    mean and standard error, its paired difference from the best, and whether it ties."""
    from vpd_bench.evaluation.stats import mean_stderr
    rows = []
    for point in points:
        seeds = _point_summary(point, metric)
        steps = sorted({st for s in seeds.values() for st in s["curve"]})
        curve = {st: _mean(s["curve"].get(st) for s in seeds.values()) for st in steps}
        final_mean, final_se = mean_stderr(s["final"] for s in seeds.values())
        rows.append({"label": point.label, "values": dict(point.values), "overrides": point.overrides,
                     "preference": list(point.preference), "seeds": sorted(seeds),
                     "n_seeds": len(seeds), "expected_seeds": len(point.run_dirs),
                     "run_dirs": {str(k): str(v) for k, v in sorted(point.run_dirs.items())},
                     "status": sorted({s["status"] for s in seeds.values()}) or ["missing"],
                     "final_step": max((s["final_step"] for s in seeds.values()), default=None),
                     "curve": {str(st): v for st, v in curve.items()},
                     "curve_by_seed": {str(k): {str(st): v for st, v in s["curve"].items()} for k, s in seeds.items()},
                     "final_mean": final_mean, "final_stderr": final_se, "_seeds": seeds})
    last = max((r["final_step"] for r in rows if r["final_step"] is not None), default=None)
    for r in rows:
        r["eligible"] = (r["n_seeds"] == r["expected_seeds"] and r["n_seeds"] > 0 and r["status"] == ["complete"]
                         and r["final_step"] == last and not math.isnan(r["final_mean"]))
        if not r["eligible"]:
            r["why_not"] = ("missing or incomplete runs" if r["n_seeds"] < r["expected_seeds"] or r["status"] != ["complete"]
                            else f"last evaluation at step {r['final_step']}, others at {last}")
    eligible = [r for r in rows if r["eligible"]]
    out = {"points": rows, "best": None, "chosen": None, "final_step": last}
    if not eligible:
        out["reason"] = "no grid point has complete runs yet"
        for r in rows:
            r.pop("_seeds")
        return out
    best = max(eligible, key=lambda r: (r["final_mean"], [-x for x in r["preference"]]))
    for r in rows:
        if not r["eligible"]:
            r.update(diff_vs_best=None, tied=False)
            continue
        if r is best:
            r.update(diff_vs_best={"estimate": 0.0, "low": 0.0, "high": 0.0, "method": "(best)"}, tied=True)
            continue
        est, lo, hi, how = paired_difference(best["_seeds"], r["_seeds"])
        tied = (lo <= 0.0 <= hi) if not (math.isnan(lo) or math.isnan(hi)) else est == 0.0
        r.update(diff_vs_best={"estimate": est, "low": lo, "high": hi, "method": how}, tied=bool(tied))
    tied = [r for r in eligible if r["tied"]]
    chosen = min(tied, key=lambda r: r["preference"])
    for r in rows:
        r.pop("_seeds")
    out.update(best=best["label"], chosen=chosen["label"], chosen_overrides=chosen["overrides"])
    if chosen is best:
        out["reason"] = (f"highest mean validation {metric} ({best['final_mean']:.3f})"
                         + (f"; {len(tied) - 1} other point(s) tie with it, none preferred over it" if len(tied) > 1 else ""))
    else:
        out["reason"] = (f"ties with the best point {best['label']} ({best['final_mean']:.3f}; this one "
                         f"{chosen['final_mean']:.3f}, difference interval contains 0) and is preferred "
                         f"(smaller learning rate / earlier grid value)")
    missing = [r["label"] for r in rows if not r["eligible"]]
    if missing:
        # the same grid for every method: a choice among part of it is not made, only shown
        out.update(provisional=out.pop("chosen"), provisional_overrides=out.pop("chosen_overrides"),
                   chosen=None, chosen_overrides=None)
        out["reason"] = (f"grid incomplete ({len(rows) - len(missing)} of {len(rows)} points complete; waiting for "
                         f"{', '.join(missing)}); provisional choice among the complete points: "
                         f"{out['provisional']} ({out['reason']})")
    return out


# ----------------------------------------------------------------------------------------------
# outputs


def _f(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _json_safe(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt_diff(d: dict | None, why_not: str) -> str:
    if not d:
        return why_not
    if d["method"] == "(best)":
        return "(best)"
    def signed(x):
        return "n/a" if x is None or math.isnan(x) else f"{x:+.3f}"
    return f"{signed(d['estimate'])} [{signed(d['low'])}, {signed(d['high'])}]"


def markdown(result: dict) -> str:
    metric = result["metric"]
    lines = ["# vpd-bench tuning", "",
             f"Task `{result['task']}`, preset `{result['preset'] or 'default'}`, model `{result['model'] or 'default'}`; "
             f"{result['n_seeds']} seed(s), {result['steps']} steps. Evaluated on "
             f"{result['validation_problems_used'] or '?'} problems of the validation split (the last training problems, "
             f"`eval.validation_problems={result['validation_problems']}` at most, held back from training in every "
             f"run); never on the held-out split. Metric: validation `{metric}`.",
             "", f"**Rule.** {result['rule']}", "",
             "Grid: " + "; ".join(f"`{k}` = {', '.join(v)}" for k, v in result["grid"].items()) + ".", ""]
    for method, m in result["methods"].items():
        steps = sorted({int(s) for p in m["points"] for s in p["curve"]})
        lines += [f"## {method}", ""]
        if m["skipped_keys"]:
            lines += [f"Not applied (no such key for {method}): " + ", ".join(f"`{k}`" for k in m["skipped_keys"])
                      + f". {len(m['points'])} point(s).", ""]
        header = ["point", "seeds"] + [f"step {s}" for s in steps] + ["final mean ± se", "vs best [95% CI]", ""]
        lines += ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(steps) + 2) + "---|"]
        for p in m["points"]:
            vs = _fmt_diff(p.get("diff_vs_best"), p.get("why_not", "n/a"))
            mark = ("**chosen**" if p["label"] == m["chosen"] else "provisional" if p["label"] == m.get("provisional")
                    else "tie" if p.get("tied") else "")
            cells = [p["label"], f"{p['n_seeds']}/{p['expected_seeds']}"] + [_f(p["curve"].get(str(s))) for s in steps]
            cells += [f"{_f(p['final_mean'])} ± {_f(p['final_stderr'])}" if not math.isnan(p["final_stderr"])
                      else _f(p["final_mean"]), vs, mark]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Chosen: `{' '.join(m.get('chosen_overrides') or []) or 'nothing'}` ({m['reason']}).", ""]
    lines += ["Use the chosen values: `" + result["command"] + "`", ""]
    return "\n".join(lines)


def chosen_yaml(result: dict) -> str:
    lines = [f"# vpd-bench tune: each method's chosen overrides (task {result['task']}, preset "
             f"{result['preset'] or 'default'}, validation {result['metric']}); rule in tuning.json / tuning.md.",
             "# Use: vpd-bench run --tuned THIS_FILE ... (overrides given on the command line win)."]
    for method, m in result["methods"].items():
        chosen = m.get("chosen_overrides")
        if chosen is None:
            lines.append(f"# {method}: no choice yet ({m['reason']})")
            continue
        lines.append(f"{method}: [" + ", ".join(json.dumps(o) for o in chosen) + "]")
    return "\n".join(lines) + "\n"


def load_tuned(path: str | Path) -> dict[str, list[str]]:
    """chosen.yaml -> {method: [override, ...]} (checked)."""
    from omegaconf import OmegaConf
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tuned {path}: no such file (`vpd-bench tune` writes <out>/chosen.yaml)")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except Exception as err:           # a YAML syntax error of any kind
        raise UserError(f"--tuned {path}: not a YAML file ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"--tuned {path}: expected a mapping method: [key=value, ...]")
    out = {}
    for method, overrides in data.items():
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise UserError(f"--tuned {path}: {method} must map to a list of key=value overrides, got {overrides!r}")
        out[str(method)] = list(overrides)
    return out


def apply_tuned(tuned: dict[str, list[str]], method: str, overrides: list[str]) -> list[str]:
    """A method's overrides with its tuned values first; a key the caller overrides keeps the caller's value."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [o for o in tuned.get(method, []) if o.split("=", 1)[0].lstrip("+~") not in given] + list(overrides)


def plot(result: dict, path: Path) -> Path | None:
    """Validation curves, one panel per method, one line per grid point (the chosen one bold)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    methods = list(result["methods"])
    cols = min(3, len(methods)) or 1
    rows = math.ceil(len(methods) / cols) or 1
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, method in zip(axes, methods):
        m = result["methods"][method]
        for p in m["points"]:
            steps = sorted(int(s) for s in p["curve"])
            if not steps:
                continue
            chosen = p["label"] == m["chosen"]
            ax.plot(steps, [p["curve"][str(s)] for s in steps], marker="o", ms=3,
                    lw=2.4 if chosen else 1.0, alpha=1.0 if chosen else 0.7,
                    label=p["label"] + (" (chosen)" if chosen else ""))
        ax.set_ylim(-0.02, 1.02)          # every metric is a pass rate: one scale for all panels
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation {result['metric']}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    fig.savefig(path, dpi=120)
    return path


def suggested_command(methods, task, preset, model, feedback, out, overrides) -> str:
    parts = ["vpd-bench run", "--methods", ",".join(methods), "--task", task]
    for flag, value in (("--preset", preset), ("--model", model), ("--feedback", feedback)):
        if value:
            parts += [flag, value]
    parts += ["--tuned", str(Path(out) / "chosen.yaml"), "--seeds", "5"]
    return " ".join(parts + [o for o in overrides if not o.startswith("eval.split=")])


def write_outputs(result: dict, out: str | Path) -> dict[str, Path]:
    from vpd_bench.evaluation.results import atomic_write_text
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"tuning.json": out / "tuning.json", "tuning.md": out / "tuning.md", "chosen.yaml": out / "chosen.yaml"}
    atomic_write_text(paths["tuning.json"], json.dumps(_json_safe(result), indent=2) + "\n")
    atomic_write_text(paths["tuning.md"], markdown(result))
    atomic_write_text(paths["chosen.yaml"], chosen_yaml(result))
    try:
        fig = plot(result, out / "tuning.png")
    except Exception as err:          # a figure is a convenience: never lose the numbers over it
        log.warning("could not draw the tuning figure: %s", err)
        fig = None
    if fig is not None:
        paths["tuning.png"] = fig
    return paths


def tune(methods: list[str], task: str, grid: dict[str, list[str]], seeds: list[int], feedback=None, model=None,
         preset=None, engine=None, overrides=(), out: str = DEFAULT_OUT, jobs: int | str = "auto", metric: str = "pass@1",
         train: bool = True) -> tuple[dict, dict[str, Path]]:
    """Plan, run (unless ``train`` is False), choose and write. Returns (result, written paths)."""
    from vpd_bench.launch.sweep import run_local
    # tuning needs numbers, not weights: no checkpoint is kept once a run completes (an override wins)
    specs, points, skipped = plan(methods, task, grid, seeds, feedback, model, preset, engine,
                                  ["train.keep_checkpoints=0", *overrides], out)
    for method, keys in skipped.items():
        if keys:
            log.info("grid key(s) %s do not apply to %s: %d point(s) for it", ", ".join(keys), method, len(points[method]))
    failures = 0
    if train:
        log.info("tuning: %d run(s) (%s) in %s", len(specs),
                 ", ".join(f"{m} {len(p)} point(s) x {len(seeds)} seed(s)" for m, p in points.items()), out)
        failures = run_local(specs, jobs=jobs, resume=True)
    from vpd_bench.evaluation.results import load_run
    from vpd_bench.report.leaderboard import check_metric
    runs = [load_run(d) for ps in points.values() for p in ps for d in p.run_dirs.values() if Path(d).is_dir()]
    check_metric(runs, metric)
    cfg = specs[0].compose()
    result = {"task": task, "preset": preset, "model": model, "feedback": feedback, "metric": metric,
              "split": "validation", "validation_problems": int(cfg.eval.validation_problems),
              "validation_problems_used": max((r.eval_shape()[0] or 0 for r in runs), default=0) or None,
              "steps": int(cfg.train.steps), "seeds": list(seeds), "n_seeds": len(seeds),
              "grid": grid, "overrides": list(overrides), "rule": RULE.format(metric=metric), "failures": failures,
              "command": suggested_command(methods, task, preset, model, feedback, out, list(overrides)),
              "methods": {}}
    for method in methods:
        choice = choose(points[method], metric)
        result["methods"][method] = {"grid": {k: v for k, v in grid.items() if k not in skipped[method]},
                                     "skipped_keys": skipped[method], **choice}
    return result, write_outputs(result, out)
