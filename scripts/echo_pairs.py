"""Paired differences with and without feedback echo (results/cpu/README.md §1j).

The report pairs two arms by seed and held-out problem. This script does the same for one
evaluation step, twice: on the responses as judged (the current verifier), and with each response
cut where it begins to echo the verifier's message its run's teacher read (the "without echo"
score of ``vpd-bench rescore --echo``; definitions in vpd_bench/evaluation/echo.py). It answers
"how much of this difference is one arm repeating the feedback?".

    python scripts/echo_pairs.py 'runs/math/vpd/env+sibling' 'runs/math/sdpo/env+sibling' [--kind greedy|sampled] [--step 30]

Each argument is a folder holding ``seed*/`` run folders; seeds present in both are paired.
Prints the estimate and the crossed seeds x problems bootstrap interval of (A - B), as judged,
without echo, and of the share of responses that echo (does A echo more than B?).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from vpd_bench.evaluation.echo import judge_without_echo, run_feedback_sentences
from vpd_bench.evaluation.rescore import read_saved_samples
from vpd_bench.evaluation.results import PASS_REWARD
from vpd_bench.evaluation.stats import paired_bootstrap
from vpd_bench.tasks import build_task


def problem_scores(run: Path, kind: str, step: int, task=None) -> tuple[dict, dict, dict]:
    """{problem: mean pass} at ``step`` for sampled or greedy responses, as judged and without echo,
    and {problem: share of those responses that echo}."""
    task = task or build_task(OmegaConf.load(run / "config.yaml"))
    problems = {p.id: p for p in task.eval_problems()}
    templates = run_feedback_sentences(run)
    judged: dict[str, list[bool]] = {}
    cut: dict[str, list[bool]] = {}
    echoes: dict[str, list[bool]] = {}
    for (at_step, pid, sample), (response, _) in read_saved_samples(run, problems).items():
        if at_step != step or (sample == "greedy") != (kind == "greedy"):
            continue
        ok = task.verify(problems[pid], response, split="eval").reward >= PASS_REWARD
        echoed, ok_cut = judge_without_echo(task, problems[pid], response, templates, ok) if templates else (False, ok)
        judged.setdefault(pid, []).append(ok)
        cut.setdefault(pid, []).append(ok_cut)
        echoes.setdefault(pid, []).append(echoed)

    def mean(d):
        return {k: sum(v) / len(v) for k, v in d.items()}
    return mean(judged), mean(cut), mean(echoes)


def compare(a: Path, b: Path, kind: str = "greedy", step: int = 30) -> dict:
    seeds = sorted({p.name for p in a.glob("seed*")} & {p.name for p in b.glob("seed*")})
    if not seeds:
        raise SystemExit(f"no seed folders in both {a} and {b}")
    task = build_task(OmegaConf.load(a / seeds[0] / "config.yaml"))
    out = {"seeds": seeds}
    table = {"judged": [], "without_echo": [], "echo_share": []}
    for s in seeds:
        sa, sb = problem_scores(a / s, kind, step, task), problem_scores(b / s, kind, step, task)
        for i, name in enumerate(table):
            shared = sorted(set(sa[i]) & set(sb[i]))
            table[name].append([sa[i][p] - sb[i][p] for p in shared])
    for name, diffs in table.items():
        out[name] = paired_bootstrap(diffs)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--kind", default="greedy", choices=["greedy", "sampled"])
    ap.add_argument("--step", type=int, default=30)
    args = ap.parse_args(argv)
    res = compare(args.a, args.b, args.kind, args.step)
    fmt = "{:+.3f} [{:+.3f}, {:+.3f}]".format
    print(f"{args.a} - {args.b}, {args.kind}, step {args.step}, {len(res['seeds'])} seed(s): "
          f"as judged {fmt(*res['judged'])}; without echo {fmt(*res['without_echo'])}; "
          f"share that echoes {fmt(*res['echo_share'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
