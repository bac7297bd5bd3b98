"""math: problems with one final answer, checked by answer equivalence.

Sources (``task.source``):

- ``reasoning_gym`` (offline default): procedurally generated problems from reasoning-gym
  generators, seeded, with a ``difficulty`` knob; unlimited fresh problems.
- ``champ`` (offline): the 270 CHAMP competition problems with their hints (``Problem.hint``,
  the ``hint`` feedback source) and solution steps (``Problem.reference``).
- ``math500``, ``gsm8k``, ``dapo`` (hub): MATH-500, GSM8K and DAPO-Math-17k through
  ``datasets.load_dataset``, or local copies in the same format (``task.local_files``).

``task.eval_file`` replaces the held-out split by every row of a user's file in MATH-500's format
(``problem``, ``answer``; see ``tasks/eval_file.py``).

The verifier extracts the final answer (``tasks/answers.py``) and compares it with the gold
answer. Feedback names the model's own answer only, never the gold one.
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
import warnings
import zlib

from vpd_bench.errors import UserError
from vpd_bench.registry import suggest

from .answers import (answers_equal, clip, extract_answer, fill, final_side, leading_number, load_file_rows,
                      load_hub_rows, normalize_answer, package_data_file, question_key, raw_prompt,
                      require, resolve_backend, to_plain, unevaluated_arithmetic, use_raw_prompts)
from .base import Problem, Task, Verdict, register_task
from .eval_file import answer_text, held_out_file, parse_rows, text_field

GENERATED = ("reasoning_gym",)
DATA_SETS = ("champ", "math500", "gsm8k", "dapo")
HUB_SOURCES = ("math500", "gsm8k", "dapo")
SOURCES = GENERATED + DATA_SETS

FORMAT_FEEDBACK = "Could not find a final answer; put it in \\boxed{} at the end of your response."
PASS_FEEDBACK = "Your final answer is correct."


def wrong_answer_feedback(answer: str, limit: int = 80) -> str:
    return f"Your final answer {clip(answer, limit)} is incorrect."


def boxed_reference(answer: str, working: str | None = None) -> str:
    """A short worked reference ending in ``\\boxed{answer}`` (SDFT / OPSD demonstrations)."""
    tail = f"The answer is \\boxed{{{answer}}}."
    return f"{working.strip()}\n{tail}" if working and working.strip() else tail


def _stable_seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------
# reasoning-gym
# ------------------------------------------------------------------------------------------

def _reasoning_gym_dataset(name: str, seed: int, size: int, difficulty, overrides: dict):
    """One reasoning-gym data set. ``difficulty`` sets every attribute of the generator's own
    curriculum to that level (clamped to the last level); ``overrides`` set config fields."""
    from reasoning_gym.factory import CURRICULA, DATASETS, create_curriculum
    if name not in DATASETS:
        raise UserError(f"unknown reasoning-gym generator '{name}'.{suggest(name, DATASETS)} "
                        f"Known generators: {', '.join(sorted(DATASETS))}.")
    dataset_cls, config_cls = DATASETS[name]
    if difficulty is not None and name in CURRICULA:
        curriculum = create_curriculum(name)
        for attr_name, attr in curriculum.attributes.items():
            curriculum.set_attr_level(attr_name, min(int(difficulty), len(attr.levels) - 1))
        config = curriculum.generate_configuration({"seed": seed, "size": size})
    else:
        config = config_cls(seed=seed, size=size)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"reasoning-gym generator '{name}' has no config field(s) {unknown}; "
                        f"its fields: {', '.join(sorted(fields - {'seed', 'size'}))}")
    config = dataclasses.replace(config, **{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in overrides.items()})
    if hasattr(config, "validate"):
        config.validate()
    return dataset_cls(config=config), config


def _reasoning_gym_reference(entry: dict) -> str:
    answer = str(entry["answer"])
    meta = entry.get("metadata") or {}
    if meta.get("answer_cot"):
        return boxed_reference(answer, meta["answer_cot"])
    if meta.get("expression"):
        return boxed_reference(answer, f"{meta['expression']} = {answer}.")
    return boxed_reference(answer)


# ------------------------------------------------------------------------------------------
# data-set row parsers: the same code reads hub rows and local copies
# ------------------------------------------------------------------------------------------

def parse_math500(row: dict, where: str) -> dict:
    """A MATH-500 row: ``problem``, ``solution``, ``answer`` (+ ``subject``, ``level``,
    ``unique_id``)."""
    question = require(row, "problem", where)
    answer = require(row, "answer", where)
    return {"id": str(row.get("unique_id") or where), "question": question, "answer": str(answer),
            "reference": row.get("solution"),
            "meta": {k: row[k] for k in ("subject", "level") if k in row}}


_CALCULATOR_RE = re.compile(r"<<[^>]*>>")


def parse_gsm8k(row: dict, where: str) -> dict:
    """A GSM8K row: ``question`` and ``answer`` = worked solution ending in ``#### <number>``."""
    question = require(row, "question", where)
    solution = str(require(row, "answer", where))
    if "####" not in solution:
        raise UserError(f"{where}: GSM8K answer has no '#### <number>' line")
    working, final = solution.rsplit("####", 1)
    final = final.strip().replace(",", "")
    working = _CALCULATOR_RE.sub("", working).strip()
    return {"id": where, "question": question, "answer": final,
            "reference": boxed_reference(final, working), "meta": {}}


_DAPO_PREFIX = "Solve the following math problem step by step."
_DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:"'


def dapo_question(prompt) -> str:
    """The bare problem inside DAPO-Math's instruction wrapper."""
    if isinstance(prompt, list):
        prompt = "\n\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    text = str(prompt).strip()
    if text.startswith(_DAPO_PREFIX):
        _, sep, body = text.partition("\n\n")
        text = body if sep else text
    if _DAPO_REMINDER in text:
        text = text.split(_DAPO_REMINDER, 1)[0]
    return text.strip()


def parse_dapo(row: dict, where: str) -> dict:
    """A DAPO-Math-17k row: ``prompt`` (chat messages), ``reward_model.ground_truth``,
    ``extra_info.index``."""
    question = dapo_question(require(row, "prompt", where))
    reward_model = require(row, "reward_model", where)
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") in (None, ""):
        raise UserError(f"{where}: missing field 'reward_model.ground_truth'")
    if not question:
        raise UserError(f"{where}: empty problem text in 'prompt'")
    index = (row.get("extra_info") or {}).get("index")
    return {"id": f"dapo-{index}" if index is not None else where, "question": question,
            "answer": str(reward_model["ground_truth"]), "reference": None, "meta": {}}


PARSERS = {"math500": parse_math500, "gsm8k": parse_gsm8k, "dapo": parse_dapo}

EVAL_FILE_FORMAT = ('A math row is {"problem": "What is 2 + 3?", "answer": "5"} (MATH-500 format; '
                    '"question" may stand for "problem", the answer may be a JSON number; optional: '
                    '"solution", "unique_id" or "id", "subject", "level")')


def parse_eval_row(row: dict, where: str) -> dict:
    """A row of a user's held-out file (``task.eval_file``): MATH-500's ``problem`` (or
    ``question``) and ``answer`` (text or a number); ``solution``, ``unique_id`` / ``id``,
    ``subject`` and ``level`` are optional."""
    question = text_field(row, "problem", where, aliases=("question",))
    answer = answer_text(row, "answer", where).strip()
    if "####" in answer:
        raise UserError(f"{where}: 'answer' holds a worked GSM8K solution ('#### n'); put only the "
                        "final answer in 'answer' (e.g. \"72\")")
    solution = row.get("solution")
    return {"id": row["unique_id"] if row.get("unique_id") is not None else row.get("id"),
            "question": question, "answer": answer,
            "reference": solution if isinstance(solution, str) else None,
            "meta": {k: row[k] for k in ("subject", "level") if k in row}}

_ALLOWED_WORDS = {"sqrt", "frac", "dfrac", "pi", "cdot", "times", "le", "ge", "leq", "geq",
                  "infty", "ln", "log", "sin", "cos", "tan", "mod", "pm"}


def is_short_math_answer(answer: str) -> bool:
    """A number or short expression (no prose), which the equivalence check can judge."""
    answer = answer.strip()
    if not answer or len(answer) > 60 or "..." in answer or "…" in answer:
        return False
    return all(w.lower() in _ALLOWED_WORDS for w in re.findall(r"[A-Za-z]{2,}", answer))


# ------------------------------------------------------------------------------------------
# the task
# ------------------------------------------------------------------------------------------

@register_task("math")
class MathTask(Task):
    def __init__(self, cfg):
        super().__init__(cfg)
        task = cfg.task
        self.source = str(task.get("source", "reasoning_gym"))
        if self.source not in SOURCES:
            raise UserError(f"unknown math source '{self.source}'.{suggest(self.source, SOURCES)} "
                            f"Known sources: {', '.join(SOURCES)}.")
        self.eval_source = task.get("eval_source")
        if self.eval_source is not None and self.eval_source not in DATA_SETS:
            raise UserError(f"math eval_source must be null or a data set "
                            f"({', '.join(DATA_SETS)}), got '{self.eval_source}'."
                            f"{suggest(str(self.eval_source), DATA_SETS)}")
        self.extraction = str(task.get("extraction", "lenient"))
        if self.extraction not in ("strict", "lenient"):
            raise UserError(f"math extraction must be strict or lenient, got '{self.extraction}'")
        self.backend = resolve_backend(str(task.get("equivalence", "auto")))
        self.feedback_chars = int(task.get("feedback_answer_chars", 80))
        self._splits: tuple[list[Problem], list[Problem]] | None = None
        self._details: dict = {}
        self.eval_file = held_out_file(cfg, self._file_problems, lambda p: [question_key(p.meta["question"])])

    # -- prompts ---------------------------------------------------------------------------
    @property
    def prompt_format(self) -> str:
        return "raw" if use_raw_prompts(self.cfg) else "chat"

    def make_prompt(self, question: str) -> str:
        if self.prompt_format == "raw":
            return raw_prompt(question, self.cfg.task.get("raw_instruction"))
        return fill(str(self.cfg.task.prompt_template), question=question.strip())

    def _problem(self, item: dict, source: str, split: str) -> Problem:
        meta = {"source": source, "split": split, "question": item["question"], **item["meta"]}
        return Problem(id=f"{source}/{item['id']}", prompt=self.make_prompt(item["question"]),
                       answer=item["answer"], reference=item.get("reference"),
                       hint=item.get("hint"), meta=meta)

    # -- data ------------------------------------------------------------------------------
    def train_problems(self) -> list[Problem]:
        train = self._build()[0]
        return self.eval_file.training(train) if self.eval_file else train

    def eval_problems(self) -> list[Problem]:
        # with task.eval_file only the file is read: nothing is generated or downloaded
        return self.eval_file.problems() if self.eval_file else self._build()[1]

    def _file_problems(self, data) -> list[Problem]:
        return [self._problem(i, "eval_file", "eval") for i in parse_rows(data, parse_eval_row, EVAL_FILE_FORMAT)]

    def _build(self):
        if self._splits is None:
            n_train, n_eval = int(self.cfg.task.num_train), int(self.cfg.task.num_eval)
            seed = int(self.cfg.task.split_seed)
            if self.source == "reasoning_gym" and self.eval_source is None:
                # with an eval file, num_eval=0 asks for no generated hold-out
                eval_items = [] if self.eval_file and n_eval <= 0 else \
                    self._reasoning_gym_items("eval", n_eval, set())
                train_items = self._reasoning_gym_items(
                    "train", n_train, {question_key(i["question"]) for i in eval_items})
            else:
                train_items, eval_items = self._data_set_splits(n_train, n_eval, seed)
            eval_default = self.eval_source or self.source
            self._splits = ([self._problem(i, i.get("_source", self.source), "train") for i in train_items],
                            [self._problem(i, i.get("_source", eval_default), "eval") for i in eval_items])
        return self._splits

    def _reasoning_gym_items(self, split: str, n: int, exclude: set[str]) -> list[dict]:
        rg_cfg = self.cfg.task.reasoning_gym
        generators = [str(g) for g in rg_cfg.generators]
        if not generators:
            raise UserError("task.reasoning_gym.generators is empty: name at least one generator")
        if n <= 0:
            raise UserError(f"reasoning_gym source needs a positive num_{split}")
        overrides = to_plain(rg_cfg.get("overrides")) or {}
        difficulty = rg_cfg.get("difficulty")
        split_seed = int(self.cfg.task.split_seed)
        pools, configs = [], {}
        for name in generators:
            size = max(4 * n, 64)
            dataset, config = _reasoning_gym_dataset(
                name, _stable_seed("math", split_seed, split, name), size, difficulty,
                overrides.get(name, {}))
            pools.append([name, dataset, 0, size])
            configs[name] = {k: v for k, v in dataclasses.asdict(config).items()
                             if k not in ("seed", "size")}
        self._details["generator_configs"] = configs
        seen, items = set(exclude), []
        while len(items) < n and any(p[2] < p[3] for p in pools):
            for pool in pools:
                name, dataset, index, size = pool
                while index < size:
                    entry = dataset[index]
                    index += 1
                    key = question_key(entry["question"])
                    if key in seen:
                        continue
                    seen.add(key)
                    items.append({"id": f"{name}/{split}/{index - 1}", "question": entry["question"],
                                  "answer": str(entry["answer"]),
                                  "reference": _reasoning_gym_reference(entry),
                                  "meta": {"generator": name}})
                    break
                pool[2] = index
                if len(items) >= n:
                    break
        if len(items) < n:
            warnings.warn(f"reasoning-gym generators {generators} at difficulty {difficulty} gave only "
                          f"{len(items)} distinct {split} problems (asked for {n}); raise the "
                          "difficulty or add generators", stacklevel=2)
        return items

    # data sets ----------------------------------------------------------------------------
    def _pools(self, source: str, local_train, local_eval) -> tuple[list | None, list | None]:
        """(train rows, eval rows) of a data set, parsed; None where the data set has no such
        split. Local files, when given, replace the hub entirely."""
        if source == "champ":
            return self._champ_items(), None
        parser = PARSERS[source]
        if local_train or local_eval:
            files = {"train": local_train, "eval": local_eval}
            self._details.setdefault("data_files", {}).update(
                {f"{source}/{k}": str(v) for k, v in files.items() if v})
            return tuple(self._parse_rows(load_file_rows(files[k]), parser, source) if files[k] else None
                         for k in ("train", "eval"))
        spec = self.cfg.task.hub[source]
        self._details.setdefault("hub", {})[source] = to_plain(spec)
        out = []
        for key in ("train_split", "eval_split"):
            split = spec.get(key)
            out.append(self._parse_rows(load_hub_rows(str(spec.id), spec.get("config"), str(split)),
                                        parser, source) if split else None)
        return tuple(out)

    @staticmethod
    def _parse_rows(rows, parser, source) -> list[dict]:
        items, seen = [], set()
        for where, row in rows:
            item = parser(row, where)
            key = question_key(item["question"])
            if key in seen:              # DAPO-Math repeats each problem many times
                continue
            seen.add(key)
            item["_source"] = source
            items.append(item)
        return items

    def _data_set_splits(self, n_train: int, n_eval: int, seed: int):
        local = self.cfg.task.get("local_files") or {}
        local_train, local_eval = local.get("train"), local.get("eval")
        if self.eval_source is not None and self.eval_source != self.source:
            if self.source == "reasoning_gym":
                train_pool, source_eval = None, None
            else:
                train_pool, source_eval = self._pools(self.source, local_train, None)
                train_pool = train_pool if train_pool is not None else source_eval
            other_train, other_eval = self._pools(self.eval_source, None, local_eval)
            eval_pool = other_eval if other_eval is not None else other_train
        else:
            train_pool, eval_pool = self._pools(self.source, local_train, local_eval)
            if train_pool is None or eval_pool is None:   # one split: carve a held-out part
                pool = list(train_pool if train_pool is not None else eval_pool)
                random.Random(f"math/{self.source}/{seed}").shuffle(pool)
                cut = n_eval if n_eval > 0 else max(1, len(pool) // 5)
                if cut >= len(pool):
                    raise UserError(f"math source '{self.source}' has {len(pool)} problems, too few "
                                    f"for num_eval={n_eval} and a training split")
                eval_pool, train_pool = pool[:cut], pool[cut:]
        rng = random.Random(f"math/{self.source}/{self.eval_source}/{seed}")
        eval_pool = list(eval_pool)
        rng.shuffle(eval_pool)
        eval_items = eval_pool[:n_eval] if n_eval > 0 else eval_pool
        held_out = {question_key(i["question"]) for i in eval_items}
        if self.source == "reasoning_gym":
            return self._reasoning_gym_items("train", n_train, held_out), eval_items
        train_pool = [i for i in train_pool if question_key(i["question"]) not in held_out]
        rng.shuffle(train_pool)
        train_items = train_pool[:n_train] if n_train > 0 else train_pool
        return train_items, eval_items

    def _champ_items(self) -> list[dict]:
        champ = self.cfg.task.champ
        path = champ.get("file") or package_data_file(
            "champ_dataset", "dataset_files/v0.json", "pip install --no-deps champ-dataset==1.0.0")
        self._details.setdefault("data_files", {})["champ"] = str(path)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None
        for key in ("problems", "hints", "concepts"):
            if key not in data:
                raise UserError(f"{path}: not a CHAMP data file (no '{key}' table)")
        parts = [str(p) for p in champ.get("hint_parts", ["hints", "concepts"])]
        bad = set(parts) - {"hints", "concepts"}
        if bad:
            raise UserError(f"task.champ.hint_parts: unknown part(s) {sorted(bad)}; use hints, concepts")
        keep = str(champ.get("answers", "verifiable"))
        if keep not in ("verifiable", "all"):
            raise UserError(f"task.champ.answers must be verifiable or all, got '{keep}'")
        items = []
        for pid, problem in data["problems"].items():
            where = f"{path}: problem {pid}"
            answer = str(require(problem, "_answer", where)).strip()
            if keep == "verifiable" and not is_short_math_answer(answer):
                continue
            hints = []
            for ref in problem.get("ch_list") or []:
                if ref.startswith("H_") and "hints" in parts and ref in data["hints"]:
                    hints.append(data["hints"][ref]["_text"])
                elif ref.startswith("C_") and "concepts" in parts and ref in data["concepts"]:
                    hints.append(data["concepts"][ref]["_text"])
            steps = [s["_text"] for s in (problem.get("solution") or {}).get("steps", [])]
            items.append({"id": pid, "question": require(problem, "_text", where), "answer": answer,
                          "reference": boxed_reference(answer, "\n".join(steps)),
                          "hint": ("Hints:\n" + "\n".join(f"- {h}" for h in hints)) if hints else None,
                          "meta": {"category": problem.get("category")}, "_source": "champ"})
        return items

    # -- verification ----------------------------------------------------------------------
    def verify(self, problem: Problem, response: str, split: str = "train") -> Verdict:
        # Same check on both splits: the gold answer is the only test, and feedback never
        # contains it (only the model's own answer is echoed).
        answer, rule = extract_answer(response or "", self.extraction)
        if answer is None:
            return Verdict(0.0, "format", FORMAT_FEEDBACK, extras={"extracted": None, "rule": rule})
        correct = answers_equal(problem.answer, answer, self.backend)
        if not correct and rule != "boxed" and not unevaluated_arithmetic(final_side(answer)):
            number = leading_number(answer)          # "42 apples" -> "42", not "4 + 7" -> "4"
            if number is not None and normalize_answer(number) != normalize_answer(answer):
                correct = answers_equal(problem.answer, number, self.backend)
        extras = {"extracted": answer, "rule": rule}
        if correct:
            return Verdict(1.0, "pass", PASS_FEEDBACK, extras=extras)
        return Verdict(0.0, "fail", wrong_answer_feedback(answer, self.feedback_chars), extras=extras)

    # -- metadata --------------------------------------------------------------------------
    def describe(self) -> dict:
        train, held_out = self.train_problems(), self.eval_problems()
        task = self.cfg.task
        out = {"name": self.name, "source": self.source, "eval_source": self.eval_source,
               "split_seed": int(task.split_seed), "num_train": len(train), "num_eval": len(held_out),
               "requested": {"num_train": int(task.num_train), "num_eval": int(task.num_eval)},
               "prompt_format": self.prompt_format, "extraction": self.extraction,
               "equivalence": self.backend}
        if self.source == "reasoning_gym":
            out.update(generators=[str(g) for g in task.reasoning_gym.generators],
                       difficulty=task.reasoning_gym.get("difficulty"),
                       generator_seeds={split: {str(g): _stable_seed("math", int(task.split_seed), split, g)
                                                for g in task.reasoning_gym.generators}
                                        for split in ("train", "eval")})
        if "champ" in (self.source, self.eval_source):
            out["champ"] = to_plain(task.champ)
        out.update(self._details)
        if self.eval_file:
            out["eval_file"] = self.eval_file.record()
        return out
