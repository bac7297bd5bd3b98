"""Held-out evaluation: k sampled responses (pass@k, avg@k) and one greedy response per problem.

Besides the aggregate metrics, every evaluation returns one record per problem and sample (the
audit trail of ``lm-eval --log_samples``): the run writes them to ``eval_samples.jsonl`` so that
any aggregate can be re-scored and methods can be compared problem by problem (paired tests).
"""
from __future__ import annotations

import logging

from vpd_bench.evaluation.stats import pass_at_k

log = logging.getLogger("vpd_bench")


def sample_record(step: int, problem, sample, response: str, verdict) -> dict:
    """One line of ``eval_samples.jsonl``: ``sample`` is the sample index, or ``"greedy"``.
    Nothing that decides the verdict is truncated (the response is kept whole)."""
    extras = verdict.extras or {}
    answer = extras.get("extracted")
    return {"step": int(step), "problem_id": str(problem.id), "sample": sample, "response": response,
            "reward": float(verdict.reward), "status": verdict.status,
            "answer": None if answer is None else str(answer), "feedback": verdict.feedback or ""}


def safe_verify(task, problems, texts, split: str) -> list:
    """The task's verdicts; a verifier that fails on a sample gives that sample an ``error`` verdict
    (reward 0, the failure as feedback) and the run goes on."""
    from vpd_bench.tasks.base import Verdict
    try:
        return task.verify_batch(problems, texts, split=split)
    except Exception:  # noqa: BLE001 - find the sample(s) that fail, score the rest
        out = []
        for problem, text in zip(problems, texts):
            try:
                out.append(task.verify(problem, text, split))
            except Exception as err:  # noqa: BLE001
                log.warning("verifier failed on %s: %s: %s (scored as an error)", problem.id, type(err).__name__, err)
                out.append(Verdict(0.0, "error", f"The verifier could not score this response ({type(err).__name__})."))
        return out


def evaluate_policy(engine, encode, task, problems, ecfg, seed: int, stop=(), step: int = 0,
                    records: list | None = None) -> dict:
    """Score the policy on held-out problems with the task's held-out verifier. When ``records``
    is a list, one :func:`sample_record` per problem and sample is appended to it."""
    if not problems:
        return {}
    prompts = [encode(task.render_prompt(p)) for p in problems]
    k = int(ecfg.samples)
    metrics: dict = {"n_problems": len(problems), "k": k}
    if k > 0:
        gen = engine.generate(prompts, k, int(ecfg.max_new_tokens), temperature=float(ecfg.temperature),
                              seed=seed, stop=stop)
        texts = [engine.tokenizer.decode(r, skip_special_tokens=True) for r in gen.response_ids]
        probs = [p for p in problems for _ in range(k)]
        verdicts = safe_verify(task, probs, texts, "eval")
        succ = [v.reward >= 1.0 for v in verdicts]
        per_problem = [sum(succ[i * k:(i + 1) * k]) for i in range(len(problems))]
        metrics["pass@1"] = sum(pass_at_k(k, c, 1) for c in per_problem) / len(problems)
        metrics["pass@k"] = sum(pass_at_k(k, c, k) for c in per_problem) / len(problems)
        metrics["avg@k"] = sum(v.reward for v in verdicts) / len(verdicts)
        if records is not None:
            records.extend(sample_record(step, p, j % k, t, v)
                           for j, (p, t, v) in enumerate(zip(probs, texts, verdicts)))
    if ecfg.greedy:
        gen = engine.generate(prompts, 1, int(ecfg.max_new_tokens), greedy=True, seed=seed, stop=stop)
        texts = [engine.tokenizer.decode(r, skip_special_tokens=True) for r in gen.response_ids]
        verdicts = safe_verify(task, problems, texts, "eval")
        metrics["greedy"] = sum(v.reward >= 1.0 for v in verdicts) / len(verdicts)
        if records is not None:
            records.extend(sample_record(step, p, "greedy", t, v) for p, t, v in zip(problems, texts, verdicts))
    return metrics
