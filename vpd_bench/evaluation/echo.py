"""Feedback echo: held-out responses that talk in the verifier's voice.

A self-distilling student never sees feedback, but its teacher does: a teacher prompt that frames
a "Feedback on your earlier attempt:" block makes verifier-style sentences a likely continuation
of an answer for the teacher. Distilled into the student, that becomes a student that answers and
then writes a verdict itself ("9 + 9 = 18\\n\\nYour answer is correct.\\n\\nYour answer is ...").
A final-answer verifier then reads "correct" as the answer, so the score falls for a reason that
is not arithmetic. ``vpd-bench rescore --echo`` measures how much of a run's score that costs. (The
student writes the pass sentence even when its teacher never read it: results/cpu/README.md §1o.)

Definitions (used by the CSV columns of ``vpd_bench.evaluation.rescore``):

- the *feedback sentences* of a run are the sentences that recur in the verifier's messages on
  its training responses (in at least ``MIN_SHARE`` of them: the verifier's templates, not the
  student words a message quotes), from the training samples the run logged (``samples.jsonl``,
  field ``feedback``, whatever the teacher was shown), so every method's runs on a task are
  checked against the same verifier sentences, GRPO's too (a control: no teacher, no echo); a run
  whose log holds no verifier message has no echo columns;
- a sentence is split at a newline, or at ``.``/``!``/``?`` followed by a space; its *words* are
  its lower-cased alphabetic words of two letters or more (numbers and option letters, the parts
  of a verifier message that change from response to response, drop out);
- a response sentence *echoes* when it has at least ``MIN_WORDS`` words and the Jaccard overlap
  of its words with some feedback sentence's is at least ``THRESHOLD`` ("your answer is correct"
  against "your final answer is correct": 4/5);
- a response *passes without its echo* when the whole response passes, or the text before its
  first echoing sentence does. This only ever adds passes: it is the score the run would have had
  if its responses stopped where the echo begins, an upper bound on what the echo cost.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from vpd_bench.errors import UserError
from vpd_bench.evaluation.results import PASS_REWARD, SAMPLES_FILE, TRAIN_SAMPLES_FILE

THRESHOLD = 0.75
MIN_WORDS = 3
MIN_SHARE = 0.1
_BOUNDARY = re.compile(r"(?<=[.!?])[ \t]+|\n+")
_WORD = re.compile(r"[a-z]{2,}")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the non-blank sentences of ``text``."""
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if text[start:m.start()].strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def words(sentence: str) -> frozenset[str]:
    return frozenset(_WORD.findall(sentence.lower()))


def feedback_sentences(messages, min_share: float = MIN_SHARE) -> set[frozenset[str]]:
    """The word sets of the sentences (of at least MIN_WORDS words) found in at least ``min_share``
    of ``messages`` (and in two of them): the verifier's template sentences. A message quotes the
    response it judges ("Your final answer <the student's words> is incorrect."); a quoted
    response's own sentences vary from message to message and fall below the share."""
    counts: Counter[frozenset[str]] = Counter()
    n = 0
    for msg in messages:
        if not msg:
            continue
        n += 1
        counts.update({w for a, b in sentence_spans(msg) if len(w := words(msg[a:b])) >= MIN_WORDS})
    return {w for w, c in counts.items() if c >= max(2, min_share * n)}


def echo_start(response: str, templates: set[frozenset[str]], threshold: float = THRESHOLD) -> int | None:
    """Offset of the first sentence of ``response`` that echoes a feedback sentence, or None."""
    for a, b in sentence_spans(response):
        w = words(response[a:b])
        if len(w) < MIN_WORDS:
            continue
        if any(len(w & t) / len(w | t) >= threshold for t in templates):
            return a
    return None


def judge_without_echo(task, problem, response: str, templates: set[frozenset[str]],
                       passed: bool) -> tuple[bool, bool]:
    """(echoes, passes without its echo) for one held-out response that the verifier judged
    ``passed``: the second re-judges the text before the first echoing sentence (held-out checks)."""
    at = echo_start(response, templates)
    if at is None or passed:
        return at is not None, passed
    return True, task.verify(problem, response[:at], split="eval").reward >= PASS_REWARD


def run_feedback_sentences(run: Path) -> set[frozenset[str]]:
    """Feedback sentences of the verifier's messages on a run's logged training responses (empty
    when it logged none)."""
    path = Path(run) / TRAIN_SAMPLES_FILE
    if not path.is_file():
        return set()
    messages = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {n}: not a JSON row ({err})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {n}: not a JSON object")
            msg = row.get("feedback")
            if isinstance(msg, str):
                messages.append(msg)
    return feedback_sentences(messages)


def final_echo_share(run_dir: Path, greedy: bool = False) -> float | None:
    """The share of a run's held-out responses at its last evaluation (greedy ones, or the sampled
    ones) that echo the verifier's sentences; None when the run logged no verifier message or
    the run saved no held-out samples. The report's ``echo_final`` column and its claims notes ask
    for the same runs: the answer is kept until either file changes."""
    run_dir = Path(run_dir)
    stamp = tuple(p.stat().st_mtime_ns if p.is_file() else None
                  for p in (run_dir / SAMPLES_FILE, run_dir / TRAIN_SAMPLES_FILE))
    return _final_echo_share(run_dir, greedy, stamp)


@lru_cache(maxsize=4096)
def _final_echo_share(run_dir: Path, greedy: bool, _stamp: tuple) -> float | None:
    path = run_dir / SAMPLES_FILE
    templates = run_feedback_sentences(run_dir) if path.is_file() else set()
    if not templates:
        return None
    saved: dict[tuple, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                if (row["sample"] == "greedy") == greedy:
                    saved[(int(row["step"]), str(row["problem_id"]), row["sample"])] = str(row["response"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue            # the report lists unreadable rows where it reads scores
    if not saved:
        return None
    last = max(step for step, _, _ in saved)
    responses = [r for (step, _, _), r in saved.items() if step == last]
    return sum(echo_start(r, templates) is not None for r in responses) / len(responses)
