"""Judge a `vpd-bench probe` folder's saved samples again with the current verifier.

    python scripts/rejudge_probe.py results/cpu/regime/cold-start-arith-cue

For each feedback source: the teacher's and the plain prompt's passes on the same failed student
responses, as recorded and as re-judged, the teacher's advantage both ways, and how many of the
demonstrations shown fail under the current verifier. Responses that the current verifier would
pass among the student's failed samples are kept (the probe's set of failed responses is fixed).
"""
from __future__ import annotations

import json
import sys
import warnings

from omegaconf import OmegaConf

from vpd_bench.tasks import build_task


def main(folder: str) -> None:
    warnings.filterwarnings("ignore")
    cfg = OmegaConf.create(json.load(open(f"{folder}/probe.json", encoding="utf-8"))["config"])
    task = build_task(cfg)
    problems = {p.id: p for p in task.train_problems()}
    rows = [json.loads(line) for line in open(f"{folder}/probe_samples.jsonl", encoding="utf-8") if line.strip()]

    def passes(pid: str, text: str) -> bool:
        return task.verify(problems[pid], text, split="train").reward >= 1

    plain = {(x["problem_id"], x["sample"]): x for x in rows if x["prompt_kind"] == "plain"}
    student = [x for x in rows if x["prompt_kind"] == "student"]
    print(f"student: {sum(x['reward'] >= 1 for x in student)} -> "
          f"{sum(passes(x['problem_id'], x['response']) for x in student)} of {len(student)} pass")
    for source in sorted({x["source"] for x in rows if x["prompt_kind"] == "teacher"}):
        teacher = [x for x in rows if x["prompt_kind"] == "teacher" and x["source"] == source]
        pairs = [(x, plain[(x["problem_id"], x["sample"])]) for x in teacher]
        t_old = sum(t["reward"] >= 1 for t, _ in pairs)
        t_new = sum(passes(t["problem_id"], t["response"]) for t, _ in pairs)
        p_old = sum(p["reward"] >= 1 for _, p in pairs)
        p_new = sum(passes(p["problem_id"], p["response"]) for _, p in pairs)
        bad_demos = sum(1 for t, _ in pairs if t.get("demonstration") and not passes(t["problem_id"], t["demonstration"]))
        n = len(pairs)
        print(f"{source}: n={n} teacher {t_old} -> {t_new}, plain {p_old} -> {p_new}; teacher - plain "
              f"{(t_old - p_old) / n:+.3f} -> {(t_new - p_new) / n:+.3f}; demonstrations now failing: {bad_demos}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
