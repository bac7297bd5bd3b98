"""`vpd-bench probe`: does the teacher read the feedback? (issue 19 §1)

On the first N training problems (the training split, never the held-out one), with the initial
model, loaded as training loads it:

1. sample G responses to each problem with the student prompt at the rollout settings (the
   trainer's own rollout) and score them with the training-side verifier: the student's pass rate,
   the share of groups with mixed outcomes, the response length and the share cut at the limit;
2. resample every failed response once with the plain student prompt (shared by all sources);
3. for each feedback source, build its feedback on that batch with the real source object (so a
   ``sibling`` exists only in a group with a success), build the teacher prompt as training does,
   and resample every failed response that got feedback once with its teacher prompt.

A source's row compares the teacher resamples with the plain resamples of the *same* failed
responses: both pass rates and their paired difference (the teacher's advantage), each with a 95%
percentile bootstrap interval over problems (the responses of a problem are correlated).
Resamples use the rollout's sampling settings and fixed seeds (``SEEDS`` below). Writes
``probe.json`` (all figures and counts, config, versions), ``probe.md`` (the table) and
``probe_samples.jsonl`` (every sample and resample, to audit).
"""
from __future__ import annotations

import json
import logging
import math
import time
import zlib
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vpd_bench.config import all_keys, compose, feedback_cli_names
from vpd_bench.errors import UserError
from vpd_bench.evaluation.policy import safe_verify
from vpd_bench.evaluation.results import atomic_write_text, canonical_feedback, git_info, versions
from vpd_bench.evaluation.stats import cluster_bootstrap
from vpd_bench.registry import suggest
from vpd_bench.training.feedback import CombinedFeedback
from vpd_bench.training.loop import Trainer, _length_profile

log = logging.getLogger("vpd_bench")

PROBE_FILE = "probe.json"
TABLE_FILE = "probe.md"
SAMPLES_FILE = "probe_samples.jsonl"
DEFAULT_SOURCES = ("env", "sibling", "env+sibling", "hint", "self_critique")
CHUNK = 32                  # prompts per resampling call (bounds memory; chunk c samples with seed + c)
BOOTSTRAP = {"unit": "problem", "confidence": 0.95, "resamples": 10_000, "seed": 0}
SEEDS = ("student: seed * 1_000_003 (the trainer's rollout at step 0); plain: that + 1; teacher of source s: "
         "that + 2 + crc32(s) mod 65536; self-critique: the source's own (step 0)")


def parse_sources(names: list[str]) -> list[str]:
    """Canonical feedback names, in order, without repeats; an unknown one is a UserError listing them."""
    known = feedback_cli_names()
    out = []
    for name in names:
        name = canonical_feedback(name)
        if name not in known:
            raise UserError(f"unknown feedback source '{name}' in --sources.{suggest(name, known)} "
                            f"Known sources: {', '.join(known)}")
        if name not in out:
            out.append(name)
    if not out:
        raise UserError(f"--sources is empty: give one or more of {', '.join(known)}")
    return out


def compose_configs(task: str, model: str | None, preset: str | None, engine: str | None, sources: list[str],
                    overrides: list[str]):
    """(the trainer's config, {source: its config}). ``feedback.*`` overrides go to the sources whose
    feedback config has the key (``feedback.critique_max_new_tokens`` to self_critique only)."""
    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")
    fb_over = [o for o in overrides if key(o).startswith("feedback.")]
    other = [o for o in overrides if o not in fb_over]
    base = compose("grpo", task, None, model, preset, engine, other)
    cfgs, used = {}, set()
    for src in sources:
        cfg = compose("grpo", task, src, model, preset, engine, other)
        keys = set(all_keys(cfg.feedback, "feedback."))
        mine = [o for o in fb_over if key(o) in keys]
        used.update(mine)
        cfgs[src] = compose("grpo", task, src, model, preset, engine, other + mine) if mine else cfg
    unused = [o for o in fb_over if o not in used]
    if unused:
        raise UserError(f"override '{unused[0]}': no source in --sources {','.join(sources)} has the key "
                        f"'{key(unused[0])}' (`vpd-bench ls` lists each source's keys)")
    return base, cfgs


def _seed(cfg, kind: str) -> int:
    base = int(cfg.seed) * 1_000_003
    return base + 1 if kind == "plain" else base + 2 + zlib.crc32(kind.encode()) % 65536


def _interval(clusters: list[list[float]]) -> dict:
    """The pooled mean of values grouped by problem, with its bootstrap interval over problems."""
    est, lo, hi = cluster_bootstrap(clusters, BOOTSTRAP["confidence"], BOOTSTRAP["resamples"], BOOTSTRAP["seed"])
    return {"estimate": _num(est), "ci": [_num(lo), _num(hi)]}


def _rate(clusters: list[list[float]]) -> dict:
    """A pass rate (values 1 / 0 grouped by problem): counts, rate and interval."""
    values = [v for c in clusters for v in c]
    iv = _interval(clusters)
    return {"n": len(values), "passes": int(sum(values)), "rate": iv["estimate"], "ci": iv["ci"]}


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _by_problem(indices: list[int], values: dict[int, float], group_size: int) -> list[list[float]]:
    groups: dict[int, list[float]] = {}
    for i in indices:
        groups.setdefault(i // group_size, []).append(values[i])
    return list(groups.values())


class _Sampler:
    """Resamples one response per prompt with the rollout's settings, in chunks, and scores them."""

    def __init__(self, trainer: Trainer, progress: bool):
        self.t = trainer
        self.progress = progress

    def __call__(self, label: str, problems: list, prompts: list[list[int]], seed: int) -> list[dict]:
        t, r = self.t, self.t.cfg.rollout
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(prompts), desc=f"probe {label}", unit="resample", dynamic_ncols=True, disable=None)
        texts, reasons = [], []
        try:
            for c, start in enumerate(range(0, len(prompts), CHUNK)):
                chunk = prompts[start:start + CHUNK]
                gen = t.engine.generate(chunk, 1, int(r.max_new_tokens), temperature=float(r.temperature),
                                        top_p=float(r.top_p), top_k=int(r.top_k), stop=list(r.stop), seed=seed + c)
                texts += [t.tokenizer.decode(ids, skip_special_tokens=True) for ids in gen.response_ids]
                reasons += gen.finish_reasons
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        verdicts = safe_verify(t.task, problems, texts, "train")
        threshold = float(t.cfg.train.success_threshold)
        return [{"response": text, "reward": float(v.reward), "status": v.status, "finish_reason": why,
                 "pass": float(v.reward >= threshold)} for text, v, why in zip(texts, verdicts, reasons)]


def _hint_missing(fcfg, problems: list) -> str | None:
    if set(fcfg.sources) <= {"hint"} and not any(p.hint for p in problems):
        return f"none of the {len(problems)} probed problems carries a hint (this task gives no hints)"
    return None


def _no_feedback_reason(fcfg, combined: CombinedFeedback, n_failed: int, n_with: int) -> str:
    if combined.errors:
        return "; ".join(combined.errors)
    if n_with:
        return f"teacher_prompt.max_length cut every teacher prompt away ({n_with} with feedback)"
    if "sibling" in fcfg.sources:
        return "no group has both a passing and a failing response, so no failed response has a sibling"
    return f"the source gave feedback to none of the {n_failed} failed responses"


def probe(base_cfg, source_cfgs: dict, n_problems: int, out: Path, command: str = "", progress: bool = True) -> dict:
    """Measure the teacher's advantage of each source (module docstring); write the three files to
    ``out`` and return what probe.json holds."""
    t_start = time.perf_counter()
    if n_problems < 1:
        raise UserError(f"--problems must be at least 1, got {n_problems}")
    trainer = Trainer(base_cfg, out, progress=False)
    t_loaded = time.perf_counter()
    problems = list(trainer.train_problems)[:n_problems]
    if len(problems) < n_problems:
        log.warning("probe: task %s has %d training problems (after the validation split); probing all of them",
                    base_cfg.task.name, len(problems))
    unavailable = {s: why for s, c in source_cfgs.items() if (why := _hint_missing(c.feedback, problems))}
    if len(unavailable) == len(source_cfgs):
        raise UserError(f"task {base_cfg.task.name} cannot give any of the sources asked for: "
                        + "; ".join(f"{s}: {why}" for s, why in unavailable.items())
                        + f". Choose others with --sources ({', '.join(feedback_cli_names())})")
    G = int(base_cfg.train.group_size)
    sampler = _Sampler(trainer, progress)
    samples: list[dict] = []
    log.info("probe: %d training problems x %d samples of task %s (model %s)", len(problems), G,
             base_cfg.task.name, base_cfg.model.name)
    with torch.no_grad():
        batch = trainer.rollout(problems, 0)
        trainer.verify(batch)
        passed = batch.success(float(base_cfg.train.success_threshold)).tolist()
        failed = [i for i, ok in enumerate(passed) if not ok]
        for i in range(batch.num_responses):
            samples.append({"prompt_kind": "student", "source": None, "problem_id": batch.problem_of(i).id,
                            "sample": i % G, "response": batch.response_texts[i], "reward": float(batch.rewards[i]),
                            "status": batch.statuses[i], "finish_reason": batch.finish_reasons[i]})
        groups = [passed[k * G:(k + 1) * G] for k in range(len(problems))]
        mixed = [float(any(g) and not all(g)) for g in groups]
        profile = _length_profile(batch)
        student = {**_rate([[float(x) for x in g] for g in groups]), "failed": len(failed),
                   "groups": len(groups), "mixed_groups": int(sum(mixed)), "mixed_share": _rate([[m] for m in mixed]),
                   "mean_length_tokens": float(batch.response_lengths().mean()), "cut_share": profile["cut_frac"],
                   "length_p10_p50_p90": [profile["response_len_p10"], profile["response_len_p50"],
                                          profile["response_len_p90"]]}
        log.info("probe: student pass %.3f (%d of %d), %d of %d groups mixed; %d failed responses to resample",
                 student["rate"], student["passes"], student["n"], student["mixed_groups"], len(groups), len(failed))
        timings = {"load_s": t_loaded - t_start, "student_s": time.perf_counter() - t_loaded}
        plain: dict[int, dict] = {}
        if failed:
            t0 = time.perf_counter()
            rows = sampler("plain", [batch.problem_of(i) for i in failed], [batch.prompt_ids_of(i) for i in failed],
                           _seed(base_cfg, "plain"))
            plain = dict(zip(failed, rows))
            for i in failed:
                samples.append({"prompt_kind": "plain", "source": None, "problem_id": batch.problem_of(i).id,
                                "sample": i % G, **plain[i]})
            timings["plain_s"] = time.perf_counter() - t0
        plain_all = _rate(_by_problem(failed, {i: plain[i]["pass"] for i in failed}, G))
        sources = {}
        for src, cfg in source_cfgs.items():
            t0 = time.perf_counter()
            row = {"feedback_config": OmegaConf.to_container(cfg.feedback, resolve=True), "failed": len(failed)}
            if src in unavailable or not failed:
                sources[src] = {**row, "status": "n/a", "with_feedback": 0, "without_feedback": len(failed),
                                "reason": unavailable.get(src, "no failed response to resample (every sample passed)")}
                log.info("probe: %s: n/a (%s)", src, sources[src]["reason"])
                continue
            combined = CombinedFeedback(cfg.feedback)
            fbs = combined.build(batch, trainer.feedback_context)
            prompts = trainer.teacher_prompts(batch, fbs)
            with_fb = [i for i in failed if not fbs[i].empty]
            used = [i for i in with_fb if prompts[i].ids is not None]
            row.update({"with_feedback": len(with_fb), "without_feedback": len(failed) - len(with_fb),
                        "prompt_cut_away": len(with_fb) - len(used),
                        "prompt_truncated": int(sum(prompts[i].truncated for i in used)), "scored": len(used)})
            if not used:
                sources[src] = {**row, "status": "n/a",
                                "reason": _no_feedback_reason(cfg.feedback, combined, len(failed), len(with_fb))}
                log.info("probe: %s: n/a (%s)", src, sources[src]["reason"])
                continue
            got = dict(zip(used, sampler(src, [batch.problem_of(i) for i in used], [prompts[i].ids for i in used],
                                         _seed(base_cfg, src))))
            for i in used:
                samples.append({"prompt_kind": "teacher", "source": src, "problem_id": batch.problem_of(i).id,
                                "sample": i % G, "feedback": fbs[i].text, "demonstration": fbs[i].demonstration,
                                "teacher_prompt_truncated": prompts[i].truncated, **got[i]})
            teacher = _rate(_by_problem(used, {i: got[i]["pass"] for i in used}, G))
            base = _rate(_by_problem(used, {i: plain[i]["pass"] for i in used}, G))
            diff = _interval(_by_problem(used, {i: got[i]["pass"] - plain[i]["pass"] for i in used}, G))
            sources[src] = {**row, "status": "ok", "teacher": teacher, "plain": base, "difference": diff,
                            "seed": _seed(base_cfg, src), "elapsed_s": time.perf_counter() - t0}
            if combined.errors:
                sources[src]["warnings"] = list(combined.errors)
            log.info("probe: %s: teacher %.3f vs plain %.3f on %d failed responses with feedback (difference %+.3f)",
                     src, teacher["rate"], base["rate"], len(used), diff["estimate"])
    result = {
        "kind": "feedback_probe", "schema_version": 1, "command": command,
        "task": base_cfg.task.name, "model": base_cfg.model.name, "preset": base_cfg.get("preset_name"),
        "seed": int(base_cfg.seed), "split": "train", "problems": len(problems), "samples": G,
        "problem_ids": [p.id for p in problems],
        "sampling": {**OmegaConf.to_container(base_cfg.rollout, resolve=True), "chunk": CHUNK},
        "seeds": {"rule": SEEDS, "student": int(base_cfg.seed) * 1_000_003, "plain": _seed(base_cfg, "plain")},
        "intervals": {**BOOTSTRAP, "method": "percentile bootstrap of the pooled rate, resampling problems"},
        "student": student, "plain_all_failed": plain_all, "sources": sources,
        "task_details": trainer.task.describe(),
        "model_details": {k: v for k, v in trainer.model_info.items() if k != "load_time_s"},
        "config": OmegaConf.to_container(base_cfg, resolve=True),
        "versions": versions(), "git": git_info(),
        "timings": timings, "elapsed_s": time.perf_counter() - t_start,
    }
    write_probe(Path(out), result, samples)
    return result


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _ci(r: dict, signed: bool = False) -> str:
    est, (lo, hi) = r.get("rate", r.get("estimate")), r["ci"]
    f = (lambda v: "-" if v is None else f"{v:+.2f}") if signed else _fmt
    return f"{f(est)} [{f(lo)}, {f(hi)}]"


def table(result: dict) -> str:
    """probe.md: the student line and one row per source."""
    s, sampling = result["student"], result["sampling"]
    iv = result["intervals"]
    lines = [f"# Does the teacher read the feedback? task `{result['task']}`, model `{result['model']}`", "",
             f"{result['problems']} training problems x {result['samples']} samples, initial model, "
             f"T {sampling['temperature']}, max_new_tokens {sampling['max_new_tokens']}, seed {result['seed']}"
             + (f", preset {result['preset']}" if result.get("preset") else "") + ".",
             f"Intervals: {int(iv['confidence'] * 100)}%, percentile bootstrap over problems "
             f"({iv['resamples']:,} resamples, seed {iv['seed']}).", ""]
    if result.get("command"):
        lines += [f"`{result['command']}`", ""]
    cut = "-" if s["cut_share"] is None else f"{100 * s['cut_share']:.0f}%"
    lines += [f"**Student**: pass {_ci(s)} ({s['passes']} of {s['n']}); mixed groups "
              f"{s['mixed_groups']} of {s['groups']} ({_ci(s['mixed_share'])}); mean length "
              f"{s['mean_length_tokens']:.1f} tokens, {cut} cut at max_new_tokens.",
              f"**Plain resample** of all {s['failed']} failed responses: {_ci(result['plain_all_failed'])}.", "",
              "| source | failed with feedback | teacher pass [95% CI] | plain pass [95% CI] | "
              "teacher − plain [95% CI] |", "|---|---|---|---|---|"]
    for src, r in result["sources"].items():
        if r["status"] != "ok":
            lines.append(f"| {src} | 0 of {r['failed']} | n/a: {r['reason']} | | |")
            continue
        extra = f" ({r['prompt_cut_away']} prompts cut away)" if r.get("prompt_cut_away") else ""
        lines.append(f"| {src} | {r['scored']} of {r['failed']}{extra} | {_ci(r['teacher'])} | {_ci(r['plain'])} | "
                     f"{_ci(r['difference'], signed=True)} |")
    lines += ["", "Each failed response that a source gives feedback is resampled once with its teacher prompt and "
              "once with the plain student prompt; the plain column is restricted to the same responses, so the "
              "difference is paired. Every sample and resample is in probe_samples.jsonl.", ""]
    return "\n".join(lines)


def write_probe(out: Path, result: dict, samples: list[dict]) -> None:
    atomic_write_text(out / SAMPLES_FILE, "".join(json.dumps(r) + "\n" for r in samples))
    atomic_write_text(out / PROBE_FILE, json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / TABLE_FILE, table(result))
