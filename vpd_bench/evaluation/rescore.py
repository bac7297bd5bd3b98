"""Re-score a run's saved held-out samples with the current verifier, without re-training.

After a verifier fix, a researcher needs to know how much of a committed number the old verifier
made up. Each run folder holds ``config.yaml`` (the resolved config: the same task, problems and
split) and ``eval_samples.jsonl`` (every held-out response with the reward it got). ``rescore``
rebuilds the task from the config, judges every saved response again, and reports per evaluation
step the pass@1 as recorded and as re-judged, and how many samples changed verdict.

The re-judged number describes the same responses; the training itself still saw the old
rewards, so a run whose *training* exploited a verifier hole must be re-run to be measured.
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from vpd_bench.errors import UserError
from vpd_bench.evaluation.echo import judge_without_echo, run_feedback_sentences
from vpd_bench.evaluation.results import PASS_REWARD, SAMPLES_FILE

FIELDS = ("run", "step", "problems", "pass@1_recorded", "pass@1_rejudged", "greedy_recorded", "greedy_rejudged",
          "pass_to_fail", "fail_to_pass")
# with --echo (vpd_bench/evaluation/echo.py): the share of responses that echo the verifier's message
# the run's teacher read, and the re-judged pass rate without the echo; empty where the teacher read none
ECHO_FIELDS = ("pass@1_echo_share", "pass@1_without_echo", "greedy_echo_share", "greedy_without_echo")


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders (holding config.yaml and eval_samples.jsonl) at or under ``paths``."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"no such run folder: {p}")
        found = [p] if (p / SAMPLES_FILE).is_file() else sorted(s.parent for s in p.rglob(SAMPLES_FILE))
        runs.extend(r for r in found if (r / "config.yaml").is_file())
    if not runs:
        raise UserError(f"no run folders with config.yaml and {SAMPLES_FILE} under {', '.join(paths)}")
    return runs


def rescore_run(run: Path, task=None, echo: bool = False) -> list[dict]:
    """One row per evaluation step of ``run``: pass@1 (sampled responses) and greedy, as recorded
    and as re-judged, and how many responses changed verdict (sampled and greedy together).
    A resumed run's later rows for the same step, problem and sample replace earlier ones, as
    in the report. With ``echo``, also the ECHO_FIELDS (None where the run logged no verifier
    message)."""
    try:
        if task is None:
            from vpd_bench.tasks import build_task
            task = build_task(OmegaConf.load(run / "config.yaml"))
        problems = {p.id: p for p in task.train_problems()}
        problems.update({p.id: p for p in task.eval_problems()})
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a config that does not build its task, named with its file
        raise UserError(f"{run / 'config.yaml'}: cannot rebuild the run's task from it "
                        f"({type(err).__name__}: {err}); is it a config.yaml that `vpd-bench run` wrote?") from None
    saved = read_saved_samples(run, problems)
    templates = run_feedback_sentences(run) if echo else set()
    # per step: {kind: [count, recorded passes, re-judged passes, echoes, passes without echo]}, flips
    steps: dict[int, dict] = defaultdict(lambda: {"sampled": [0, 0, 0, 0, 0], "greedy": [0, 0, 0, 0, 0],
                                                  "flips": [0, 0], "problems": set()})
    for (step, pid, sample), (response, old) in saved.items():
        # evaluations judge validation and held-out samples alike, with the held-out checks
        new = float(task.verify(problems[pid], response, split="eval").reward)
        acc = steps[step]
        tally = acc["greedy" if sample == "greedy" else "sampled"]
        tally[0] += 1
        tally[1] += old >= PASS_REWARD
        tally[2] += new >= PASS_REWARD
        if templates:
            echoed, kept = judge_without_echo(task, problems[pid], response, templates, new >= PASS_REWARD)
            tally[3] += echoed
            tally[4] += kept
        acc["flips"][0] += old >= PASS_REWARD > new
        acc["flips"][1] += new >= PASS_REWARD > old
        acc["problems"].add(pid)

    def rate(t, i):
        return t[i] / t[0] if t[0] else None

    rows = [{"run": str(run), "step": step, "problems": len(a["problems"]),
             "pass@1_recorded": rate(a["sampled"], 1), "pass@1_rejudged": rate(a["sampled"], 2),
             "greedy_recorded": rate(a["greedy"], 1), "greedy_rejudged": rate(a["greedy"], 2),
             "pass_to_fail": a["flips"][0], "fail_to_pass": a["flips"][1]}
            for step, a in sorted(steps.items())]
    if echo:
        for row, a in zip(rows, (a for _, a in sorted(steps.items()))):
            for kind in ("pass@1", "greedy"):
                t = a["sampled" if kind == "pass@1" else "greedy"]
                row[f"{kind}_echo_share"] = rate(t, 3) if templates else None
                row[f"{kind}_without_echo"] = rate(t, 4) if templates else None
    return rows


def read_saved_samples(run: Path, problems: dict) -> dict[tuple, tuple[str, float]]:
    """A run's eval_samples.jsonl as {(step, problem id, sample): (response, reward)}; a resumed
    run's later row for the same key replaces the earlier one. A malformed row, or one naming a
    problem not in ``problems``, is a UserError naming the file and line."""
    saved: dict[tuple, tuple[str, float]] = {}
    with open(run / SAMPLES_FILE, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (int(row["step"]), str(row["problem_id"]), row["sample"])
                saved[key] = (str(row["response"]), float(row["reward"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise UserError(f"{run / SAMPLES_FILE}, line {n}: not a sample row ({err})") from None
            if key[1] not in problems:
                raise UserError(f"{run / SAMPLES_FILE}, line {n}: problem {key[1]!r} is not in the task its "
                                f"config.yaml builds; was the run made with another task or data version?")
    return saved


def rescore(paths: list[str], out: str | None = None, progress=None, echo: bool = False) -> list[dict]:
    """Re-score every run at or under ``paths``; write a CSV to ``out`` when given. ``echo`` adds
    the ECHO_FIELDS (vpd_bench/evaluation/echo.py)."""
    rows: list[dict] = []
    for run in find_runs(paths):
        rows.extend(rescore_run(run, echo=echo))
        if progress:
            progress(run, rows[-1])
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(out) + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS + (ECHO_FIELDS if echo else ()))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v))
                                 for k, v in r.items()})
        tmp.replace(out)
    return rows
