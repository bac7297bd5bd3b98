"""Length-drift diagnosis (issue 18 §2): does the feedback-reading teacher refuse to stop?

For the training samples a run logged (``samples.jsonl``: prompt, teacher prompt, response, verdict,
finish reason), score each response twice with one set of weights -- under the student prompt and
under the teacher prompt -- and compare, per response group (failed / passed, ended with EOS / cut):

- ``eos``: the log-probability of the end-of-response token where the student ended;
- ``body``: the mean per-token log-probability of the other response tokens.

With the initial weights both passes share the network, so a teacher-minus-student gap is the
effect of the context alone (feedback, a passing sibling). If the gap at EOS on failed responses is
more negative than the body gap, distilling the teacher teaches the student to keep going: the
length drift the tuning runs show. Forward passes only; seconds on a CPU for a few hundred samples.

    python scripts/stop_gap.py RUN_DIR [RUN_DIR ...] [--weights initial|DIR] [--max-steps N]
        [--context logged,feedback,demonstration,instruction] [--json OUT]

``--context`` asks which part of the teacher prompt does it: ``logged`` is the teacher prompt as
trained; the others rebuild it from the logged feedback with only the verifier's message
(``feedback``), only the passing sibling (``demonstration``), or neither (``instruction``: the
problem and the teacher template's closing instruction alone).

``--weights initial`` (default) loads the run's configured model; a folder loads a Hugging Face
checkpoint (``checkpoints/step_N`` of a run) instead.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vpd_bench.errors import UserError
from vpd_bench.evaluation.results import TRAIN_SAMPLES_FILE
from vpd_bench.models.loading import load_hf, load_model
from vpd_bench.rollout.batch import Feedback
from vpd_bench.training.teacher_prompt import context_block

CONTEXTS = ("logged", "feedback", "demonstration", "instruction")


def teacher_prompt_variant(row: dict, templates, context: str) -> str | None:
    """The logged teacher prompt with its context block cut down to one part (None: the row has
    no such part). Rebuilt by replacing the block the logged prompt holds, so nothing else moves."""
    if context == "logged":
        return row["teacher_prompt"]
    demo, text = row.get("teacher_demonstration"), row.get("teacher_feedback")
    block = context_block(Feedback(demonstration=demo, text=text), templates)
    if not block or block not in row["teacher_prompt"]:
        return None                   # truncated or not rebuilt the same way: leave the row out
    if context == "feedback":
        if not text:
            return None
        new = context_block(Feedback(text=text), templates)
    elif context == "demonstration":
        if not demo:
            return None
        new = context_block(Feedback(demonstration=demo), templates)
    else:
        return row["teacher_prompt"].replace(block + "\n", "", 1)
    return row["teacher_prompt"].replace(block, new, 1)


def _read_samples(run: Path, max_steps: int | None) -> list[dict]:
    path = run / TRAIN_SAMPLES_FILE
    if not path.exists():
        raise UserError(f"{path}: no training samples (the run logs them with train.log_samples > 0)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {n}: not valid JSON ({err.msg})") from None
        if not row.get("teacher_prompt"):
            continue        # grpo runs build no teacher prompt
        if max_steps is None or int(row["step"]) <= max_steps:
            rows.append(row)
    return rows


@torch.no_grad()
def _response_logp(model, tok, prompt: str, response: str, eos: bool, temperature: float) -> torch.Tensor:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    ids = torch.tensor([p + r])
    logits = model(ids).logits[0, len(p) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]


def stop_gaps(model, tok, rows: list[dict], temperature: float, templates=None, context: str = "logged",
              student_cache: dict | None = None) -> dict:
    """Per group: mean student / teacher log-prob of the final EOS and of the other tokens.
    ``student_cache`` (row index -> student log-probs) lets several contexts share one student pass."""
    groups: dict[str, dict[str, list[float]]] = {}
    student_cache = {} if student_cache is None else student_cache
    for n, row in enumerate(rows):
        teacher_prompt = teacher_prompt_variant(row, templates, context)
        if teacher_prompt is None:
            continue
        ended = row.get("finish_reason") == "eos"
        key = f"{'pass' if row['status'] == 'pass' or row['reward'] >= 1.0 else 'fail'}/{'eos' if ended else 'cut'}"
        if n not in student_cache:
            student_cache[n] = _response_logp(model, tok, row["prompt"], row["response"], ended, temperature)
        s = student_cache[n]
        t = _response_logp(model, tok, teacher_prompt, row["response"], ended, temperature)
        g = groups.setdefault(key, {"eos_s": [], "eos_t": [], "body_gap": [], "len": []})
        body = slice(0, len(s) - 1) if ended else slice(0, len(s))
        if len(s[body]):
            g["body_gap"].append(float((t[body] - s[body]).mean()))
        if ended:
            g["eos_s"].append(float(s[-1]))
            g["eos_t"].append(float(t[-1]))
        g["len"].append(len(s))
    out = {}
    for key, g in sorted(groups.items()):
        n = len(g["len"])
        res = {"n": n, "mean_len": sum(g["len"]) / n, "body_gap": _mean_ci(g["body_gap"])}
        if g["eos_s"]:
            res["eos_logp_student"] = _mean_ci(g["eos_s"])
            res["eos_logp_teacher"] = _mean_ci(g["eos_t"])
            res["eos_gap"] = _mean_ci([b - a for a, b in zip(g["eos_s"], g["eos_t"])])
            res["eos_gap_minus_body_gap"] = _mean_ci([(b - a) - d for a, b, d in
                                                      zip(g["eos_s"], g["eos_t"], g["body_gap"])])
        out[key] = res
    return out


def _mean_ci(xs: list[float]) -> dict:
    n = len(xs)
    if not n:
        return {"mean": None, "ci95": None, "n": 0}
    mu = sum(xs) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    half = 1.96 * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mu, "ci95": [mu - half, mu + half], "n": n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--weights", default="initial", help="initial (the run's model) or a checkpoint folder")
    ap.add_argument("--max-steps", type=int, default=None, help="only samples of steps <= N")
    ap.add_argument("--context", default="logged", help=f"comma-separated: {', '.join(CONTEXTS)}")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    contexts = [c for c in args.context.split(",") if c]
    bad = [c for c in contexts if c not in CONTEXTS]
    if bad:
        raise UserError(f"--context {bad[0]}: choose from {', '.join(CONTEXTS)}")
    torch.manual_seed(0)
    results, loaded = {}, None
    for run in args.runs:
        cfg = OmegaConf.load(run / "config.yaml")
        if loaded is None:
            loaded = load_model(cfg.model) if args.weights == "initial" else load_hf(args.weights)
            loaded.model.eval()
        rows = _read_samples(run, args.max_steps)
        student: dict = {}                      # the student pass does not depend on the context
        for context in contexts:
            res = stop_gaps(loaded.model, loaded.tokenizer, rows, float(cfg.rollout.temperature),
                            cfg.teacher_prompt, context, student)
            results.setdefault(str(run), {})[context] = res
            _print_table(run, rows, args.weights, context, res)
    if args.json:
        args.json.write_text(json.dumps({"weights": args.weights, "max_steps": args.max_steps, "runs": results},
                                        indent=1) + "\n")
    return 0


def _print_table(run, rows, weights, context, res) -> None:
    print(f"{run}  ({len(rows)} samples, weights: {weights}, teacher context: {context})")
    print(f"  {'group':10s} {'n':>4s} {'len':>5s} {'eos logp S':>11s} {'eos logp T':>11s} "
          f"{'eos gap T-S [95% CI]':>24s} {'body gap T-S':>13s} {'eos-body':>9s}")
    for key, r in res.items():
        if "eos_gap" in r:
            e = r["eos_gap"]
            print(f"  {key:10s} {r['n']:4d} {r['mean_len']:5.1f} {r['eos_logp_student']['mean']:11.3f} "
                  f"{r['eos_logp_teacher']['mean']:11.3f} {e['mean']:8.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] "
                  f"{r['body_gap']['mean']:13.3f} {r['eos_gap_minus_body_gap']['mean']:9.3f}")
        else:
            print(f"  {key:10s} {r['n']:4d} {r['mean_len']:5.1f} {'-':>11s} {'-':>11s} {'-':>24s} "
                  f"{r['body_gap']['mean']:13.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
