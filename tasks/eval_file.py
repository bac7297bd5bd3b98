"""A user's own file of held-out problems (``task.eval_file``), shared by the task families.

When ``task.eval_file`` is set, a task's held-out split is exactly the file's rows: all of them,
in file order, none dropped or de-duplicated. The file is not split, so ``num_eval`` and
``eval_fraction`` do not apply to it. The training split is the one the run would have without
the file, less any training problem the file also holds (the two never share a problem).

Rows are JSON objects, one a line (``.jsonl``, ``.jsonl.gz``) or in a JSON list (``.json``);
each task reads them in its own format (``docs/tasks.md``, ``docs/code-task.md``). A row that
breaks the format is a :class:`UserError` naming the file, the row (``line N`` of a JSONL file,
counted from 1, or ``record N`` of a JSON list, counted from 0), what is wrong, and the format.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from vpd_bench.errors import UserError

from .answers import read_jsonl
from .base import Problem

log = logging.getLogger("vpd_bench.tasks")

KEY = "task.eval_file"


@dataclass
class EvalFile:
    path: Path
    sha256: str
    rows: list[tuple[str, dict]]          # (where, row): where is "FILE: line N" for errors

    def record(self, **extra) -> dict:
        """What a run records about the file (``describe()``, the eval report)."""
        return {"path": str(self.path), "sha256": self.sha256, "rows": len(self.rows), **extra}


def read_eval_file(path_text: str) -> EvalFile:
    """The rows of a user's file, with the file's sha256; an empty file is an error."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise UserError(f"{KEY}: {path} does not exist; give a JSON / JSONL file of held-out problems")
    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{KEY}: {path} holds no problems; write one JSON object per line (JSONL) "
                        "or a JSON list of objects")
    return EvalFile(path=path.resolve(), sha256=hashlib.sha256(path.read_bytes()).hexdigest(), rows=rows)


def parse_rows(eval_file: EvalFile, parse: Callable[[dict, str], dict], row_format: str) -> list[dict]:
    """``parse(row, where)`` on every row, in file order. Each parsed row carries an ``id``: the
    one the row gives, else its line (record) number; two rows with one id are an error. Row
    errors end with ``row_format``, which says what a row holds."""
    items, first_seen = [], {}
    for where, row in eval_file.rows:
        try:
            item = parse(row, where)
        except UserError as err:
            raise UserError(f"{err}. {row_format}") from None
        given = item.get("id")
        item["id"] = str(given) if given is not None and str(given).strip() else where.rsplit(" ", 1)[-1]
        if item["id"] in first_seen:
            raise UserError(f"{where}: id '{item['id']}' is also the id of {first_seen[item['id']]}; "
                            "give every row its own id (or none)")
        first_seen[item["id"]] = where
        items.append(item)
    return items


def text_field(row: dict, key: str, where: str, aliases: Sequence[str] = ()) -> str:
    """A non-empty string field (or the first alias present)."""
    for name in (key, *aliases):
        if row.get(name) is not None:
            value = row[name]
            if not isinstance(value, str):
                raise UserError(f"{where}: field '{name}' must be text (a JSON string), got "
                                f"{type(value).__name__} {_short(value)}")
            if not value.strip():
                raise UserError(f"{where}: field '{name}' is empty")
            return value
    also = "".join(f" (or '{a}')" for a in aliases)
    raise UserError(f"{where}: missing field '{key}'{also}")


def number_field(row: dict, key: str, where: str) -> float:
    """A finite number field (a JSON number, not a string or true/false)."""
    if row.get(key) is None:
        raise UserError(f"{where}: missing field '{key}'")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: field '{key}' must be a number (a JSON number such as 24 or 1.5e3), "
                        f"got {type(value).__name__} {_short(value)}")
    return float(value)


def answer_text(row: dict, key: str, where: str) -> str:
    """A gold answer written as text or as a JSON number."""
    value = row.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return text_field(row, key, where)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


class HeldOutFile:
    """A task's held-out split read from ``task.eval_file``, built once, on first use.

    ``build(eval_file)`` turns the file into the task's problems; ``keys(problem)`` are what make
    two problems the same (a training problem sharing a key with one of the file's is left out of
    training)."""

    def __init__(self, path: str, build: Callable[[EvalFile], list[Problem]],
                 keys: Callable[[Problem], Iterable[Hashable]]):
        self.path, self._build, self._keys = path, build, keys
        self._file: EvalFile | None = None
        self._problems: list[Problem] | None = None
        self._train: list[Problem] | None = None
        self._dropped: int | None = None

    def problems(self) -> list[Problem]:
        """Every row of the file as a held-out problem, in file order."""
        if self._problems is None:
            self._file = read_eval_file(self.path)
            self._problems = self._build(self._file)
        return self._problems

    def training(self, train: list[Problem]) -> list[Problem]:
        """``train`` (the split without the file) less the problems the file also holds."""
        if self._train is None:
            held = {k for p in self.problems() for k in self._keys(p)}
            self._train = [p for p in train if held.isdisjoint(self._keys(p))]
            self._dropped = len(train) - len(self._train)
            if self._dropped:
                log.warning("%s: %d training problem(s) are also in %s: left out of training",
                            KEY, self._dropped, self.path)
        return self._train

    def record(self) -> dict:
        """Path, sha256 and row count of the file (and how many training problems it displaced)."""
        self.problems()
        extra = {} if self._dropped is None else {"dropped_from_train": self._dropped}
        return self._file.record(**extra)


def held_out_file(cfg, build: Callable[[EvalFile], list[Problem]],
                  keys: Callable[[Problem], Iterable[Hashable]]) -> HeldOutFile | None:
    """The task's :class:`HeldOutFile` when ``task.eval_file`` is set, else None."""
    value = cfg.task.get("eval_file")
    if value is None or not str(value).strip():
        return None
    return HeldOutFile(str(value), build, keys)
