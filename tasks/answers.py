"""Final-answer extraction and equivalence, shared by the math, sciqa and cold-start tasks.

Also home of the small helpers every data-driven task needs: :func:`raw_prompt` (the
raw-completion prompt of the cold-start setting), :func:`read_jsonl` (JSON / JSONL files with
errors that name file and line) and :func:`load_hub_rows` (``datasets.load_dataset`` behind a
clear message when the ``hub`` extra is missing).

Extraction rules, first match wins (``extract_answer``):

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces; ``\\boxed 5`` too);
2. ``strict`` mode stops here. ``lenient`` mode goes on with the last "answer is X",
   "Answer: X", "final answer = X" (rest of that line);
3. a GSM8K-style ``#### X`` line;
4. the last number of the response: integers, negatives, decimals, thousands separators,
   fractions ``a/b`` and ``\\frac{a}{b}``.

Equivalence (``answers_equal``): equal after normalisation (``$``, spaces, ``\\left``,
``\\dfrac``, trailing full stop, ...) → equal; both read as plain numbers → compared as numbers
(exact for rationals, relative 1e-6 otherwise); otherwise the backend decides: ``math_verify``
(when installed), else ``sympy``, else the normalised string alone. A plain-number gold answer
is never equal to unevaluated arithmetic on literals (``4 + 7`` for 11); an equality chain
counts by its last side.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import math
import re
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf

from vpd_bench.errors import UserError

# ------------------------------------------------------------------------------------------
# raw-completion prompts (cold start)
# ------------------------------------------------------------------------------------------

BOXED_INSTRUCTION = "Write the final answer inside \\boxed{}."
# A base model given a raw prompt has no end-of-turn to emit: it answers, then writes the next
# "Question: ..." or repeats "Answer: ...". Raw-prompt runs stop there by default (the
# `until` strings of few-shot evaluation harnesses); the stop string stays in the response.
RAW_PROMPT_STOP = ("Question:", "Answer:")


def raw_prompt(text: str, instruction: str | None = BOXED_INSTRUCTION) -> str:
    """A few-shot-free completion prompt for a base model (no chat template):

        Question: <text>
        <instruction>
        Answer:

    The model continues after ``Answer:``. ``instruction=None`` (or empty) drops that line.
    Any task can reuse it for ``cfg.setting == "cold_start"``.
    """
    lines = [f"Question: {text.strip()}"]
    if instruction:
        lines.append(instruction.strip())
    lines.append("Answer:")
    return "\n".join(lines)


def use_raw_prompts(cfg) -> bool:
    """True when prompts must be raw completions: the run's setting is ``cold_start`` or the
    task's ``prompt_format`` is ``raw``."""
    return cfg.get("setting", "instruct") == "cold_start" or cfg.task.get("prompt_format") == "raw"


def fill(template: str, **fields: str) -> str:
    """Replace ``{name}`` placeholders without ``str.format``, so templates may hold LaTeX
    braces such as ``\\boxed{}`` unescaped."""
    for key, value in fields.items():
        template = template.replace("{" + key + "}", value)
    return template


# ------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_NUMBER = r"(?<![\w.)\]}])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w.])-?\.\d+"
_FRACTION = (r"-?\\[dt]?frac\s*\{\s*-?\d+\s*\}\s*\{\s*\d+\s*\}"
             r"|(?<![\w.])-?\d+\s*/\s*\d+(?![\d.])")
_NUMBER_RE = re.compile(rf"(?:{_FRACTION})|(?:{_NUMBER})")
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<rest>[^\n]*)", re.IGNORECASE)
_HASH_RE = re.compile(r"^\s*####\s*(?P<rest>[^\n]+)", re.MULTILINE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed X`` in ``text``;
    None when there is none or the last one is cut off."""
    found = None
    for match in _BOX_RE.finditer(text):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth, i = 0, start
            while i < len(text):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            if depth == 0 and i < len(text):
                found = text[start + 1:i]
        elif match.group(0).endswith(" ") or match.group(0).endswith("\t"):
            bare = re.match(r"[^\s$]+", text[start:])        # "\boxed 5"
            if bare:
                found = bare.group(0)
    return found.strip() if found is not None else None


def _clean_candidate(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^\*+|\*+$", "", text).strip()             # markdown bold
    inner = last_boxed(text)
    if inner is not None:
        return inner
    text = re.sub(r"^\$+|\$+$", "", text).strip()
    text = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", text).strip()
    return text.rstrip(".").rstrip()


def last_number(text: str) -> str | None:
    """The last number of ``text`` (integer, decimal, negative, ``a/b`` or ``\\frac{a}{b}``)."""
    matches = list(_NUMBER_RE.finditer(text))
    return matches[-1].group(0).strip() if matches else None


def extract_answer(text: str, mode: str = "lenient") -> tuple[str | None, str]:
    """The final answer of a response and how it was found: ``(answer, rule)``, rule one of
    ``boxed``, ``answer_is``, ``hashes``, ``last_number``; ``(None, "none")`` when nothing is
    found. ``mode="strict"`` accepts only ``\\boxed{}``."""
    if mode not in ("strict", "lenient"):
        raise UserError(f"unknown answer extraction mode '{mode}'; expected strict or lenient")
    boxed = last_boxed(text)
    if boxed is not None and boxed != "":
        return boxed, "boxed"
    if mode == "strict":
        return None, "none"
    said = [m.group("rest") for m in _ANSWER_IS_RE.finditer(text)]
    said = [_clean_candidate(s) for s in said]
    said = [s for s in said if s]
    if said:
        return said[-1], "answer_is"
    hashes = [m.group("rest") for m in _HASH_RE.finditer(text)]
    if hashes:
        candidate = _clean_candidate(hashes[-1])
        if candidate:
            return candidate, "hashes"
    number = last_number(text)
    if number is not None:
        return number, "last_number"
    return None, "none"


# ------------------------------------------------------------------------------------------
# normalisation and numbers
# ------------------------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")


def strip_text_commands(text: str) -> str:
    """``\\text{ m/s}`` -> `` m/s``: unwrap LaTeX text and roman commands (nested up to three)."""
    for _ in range(3):
        text = _TEXT_CMD_RE.sub(r"\1", text)
    return text


def normalize_answer(text: str) -> str:
    """A canonical string form used for the string comparison of answers."""
    s = str(text).strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    s = strip_text_commands(s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)     # \frac12
    s = re.sub(r"\\[!,;: ]|~", "", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = s.replace("\\%", "%").replace("−", "-")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)           # 1,000 -> 1000
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    return s.lower()


_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?$")


def to_number(text: str) -> Fraction | float | None:
    """Read an answer as a plain number: ``-3``, ``0.5``, ``1,000``, ``1/2``, ``\\frac{1}{2}``,
    ``-\\frac{3}{4}``, ``2.5e3``. Exact (``Fraction``) when possible; None when not a number."""
    s = normalize_answer(text)
    if not s:
        return None
    if s.startswith("x=") or s.startswith("y="):
        s = s[2:]
    frac = re.fullmatch(r"([-+]?)\\frac\{([-+]?\d+)\}\{(\d+)\}", s)
    if frac:
        sign = -1 if frac.group(1) == "-" else 1
        if int(frac.group(3)) == 0:
            return None
        return sign * Fraction(int(frac.group(2)), int(frac.group(3)))
    slash = re.fullmatch(r"([-+]?\d+)/(\d+)", s)
    if slash:
        if int(slash.group(2)) == 0:
            return None
        return Fraction(int(slash.group(1)), int(slash.group(2)))
    if _PLAIN_NUMBER_RE.match(s):
        if "e" in s:
            try:
                return float(s)
            except ValueError:
                return None
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def numbers_equal(a: Fraction | float, b: Fraction | float, rel_tol: float = 1e-6) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------
# equivalence backends
# ------------------------------------------------------------------------------------------

MAX_SYMBOLIC_CHARS = 200          # longer answers are compared as strings only
BACKENDS = ("auto", "math_verify", "sympy", "string")


def has_math_verify() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def resolve_backend(name: str = "auto") -> str:
    """The equivalence backend that ``name`` stands for on this machine."""
    if name not in BACKENDS:
        raise UserError(f"unknown equivalence backend '{name}'; expected one of {', '.join(BACKENDS)}")
    if name == "auto":
        if has_math_verify():
            return "math_verify"
        return "sympy" if importlib.util.find_spec("sympy") is not None else "string"
    if name == "math_verify" and not has_math_verify():
        raise UserError("equivalence backend 'math_verify' needs the math-verify package: "
                        "pip install math-verify")
    return name


def _wrap_latex(s: str) -> str:
    s = s.strip()
    return s if s.startswith("$") else f"${s}$"


class _NoTimeoutNotice(logging.Filter):
    """Drops math-verify's notice that timeouts are off: off the main thread they must be
    (SIGALRM), and answers longer than MAX_SYMBOLIC_CHARS never reach it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutNotice())


def _math_verify_equal(gold: str, pred: str) -> bool:
    from math_verify import parse, verify
    # math-verify times out through SIGALRM, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        parsed_gold = parse(_wrap_latex(gold), parsing_timeout=timeout)
        parsed_pred = parse(_wrap_latex(pred), parsing_timeout=timeout)
        if not parsed_gold or not parsed_pred:
            return False
        return bool(verify(parsed_gold, parsed_pred, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a parser failure means "not shown equal"
        return False


def _latex_to_sympy_text(s: str) -> str:
    s = normalize_answer(s)
    s = re.sub(r"^[a-z]=", "", s)
    for _ in range(4):  # nested \frac
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*")
    s = s.replace("^", "**").replace("{", "(").replace("}", ")")
    if "\\" in s:
        raise ValueError("unconverted LaTeX")
    return s


def _sympy_equal(gold: str, pred: str) -> bool:
    try:
        import sympy
        from sympy.parsing.sympy_parser import (implicit_multiplication_application,
                                                parse_expr, standard_transformations)
        transforms = standard_transformations + (implicit_multiplication_application,)
        a = parse_expr(_latex_to_sympy_text(gold), transformations=transforms, evaluate=True)
        b = parse_expr(_latex_to_sympy_text(pred), transformations=transforms, evaluate=True)
        difference = sympy.simplify(a - b)
        if difference == 0:
            return True
        if difference.is_number:
            return abs(complex(difference)) < 1e-9 * max(1.0, abs(complex(a)))
        return False
    except Exception:  # noqa: BLE001
        return False


_LITERAL = r"\(*[-+]?(?:\d+\.?\d*|\.\d+)\)*"
_ARITHMETIC_RE = re.compile(rf"{_LITERAL}(?:(?:[-+*/×÷^]|\\times|\\cdot|\\div){_LITERAL})+")


def final_side(text: str) -> str:
    """``"4 + 9 = 13"`` -> ``"13"``: what an answer written as a chain of equalities ends with
    (the answer itself when it has no plain ``=``)."""
    if re.search(r"[<>!=]=|=[=<>]", text):
        return text
    return text.rsplit("=", 1)[1] if "=" in text else text


def unevaluated_arithmetic(text: str) -> bool:
    """Whether ``text`` is arithmetic on number literals left unevaluated (``4 + 7``, ``7-5``,
    ``2^3``, ``(3+4)*2``): a restatement of an arithmetic question, not its value."""
    s = normalize_answer(text)
    return to_number(s) is None and bool(_ARITHMETIC_RE.fullmatch(s))


def answers_equal(gold: Any, pred: str | None, backend: str = "auto") -> bool:
    """Whether ``pred`` is the same answer as ``gold`` (see the module docstring).

    When the gold answer is a plain number, the prediction must show a value: an answer that
    ends with unevaluated arithmetic on literals (``4 + 7`` for 11, or ``x = 7 - 5``) is not
    equal, though a symbolic backend would evaluate it. Without this rule a model asked "What
    is 4 + 7?" earned full reward for copying the expression: GRPO on the cold start learned
    to answer "The final answer is 4 + 7." for 307 of 309 passing held-out samples in 30 steps
    (results/cpu/README.md §1k). An equality chain counts by its last side (``4 + 9 = 13``)."""
    if pred is None:
        return False
    gold, pred = str(gold), str(pred)
    if normalize_answer(gold) == normalize_answer(pred):
        return True
    gold_number = to_number(gold)
    if gold_number is not None:
        shown = final_side(pred)
        if unevaluated_arithmetic(shown):
            return False
        shown_number = to_number(shown)
        if shown_number is not None:
            return numbers_equal(gold_number, shown_number)
    pred_number = to_number(pred)
    if gold_number is not None and pred_number is not None:
        return numbers_equal(gold_number, pred_number)
    backend = resolve_backend(backend)
    if backend == "string" or max(len(gold), len(pred)) > MAX_SYMBOLIC_CHARS:
        return False
    if backend == "math_verify":
        return _math_verify_equal(gold, pred)
    return _sympy_equal(gold, pred)


def leading_number(text: str) -> str | None:
    """``"42 apples"`` -> ``"42"``: a number at the start of a longer answer."""
    match = re.match(rf"\s*(?:{_FRACTION}|{_NUMBER})", text)
    return match.group(0).strip() if match else None


def question_key(text: str) -> str:
    """Identity of a question for de-duplication and split disjointness."""
    return re.sub(r"\s+", " ", text).strip().lower()


def to_plain(node):
    """A config node as plain Python containers (for describe() and dataclass fields)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def clip(text: str, limit: int = 80) -> str:
    """Echo a model's answer in feedback without flooding it."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ------------------------------------------------------------------------------------------
# data files and the hub
# ------------------------------------------------------------------------------------------

def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """``(where, record)`` pairs from a ``.jsonl``, ``.jsonl.gz`` or ``.json`` (a list) file;
    errors name the file and the line."""
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; expected a .jsonl / .jsonl.gz / .json file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the file ({err}); it may be truncated or corrupt") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {err.lineno}: not valid JSON ({err.msg}); "
                            "the file may be truncated or corrupt") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of objects")
        rows = [(f"{path}: record {index}", record) for index, record in enumerate(data)]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}: line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {number}: not valid JSON ({err.msg}); "
                                "the file may be truncated or corrupt") from None
    for where, record in rows:
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return rows


def require(record: dict, key: str, where: str) -> Any:
    """``record[key]``, or a UserError naming the place (``file: line n``) and the field."""
    if key not in record or record[key] is None:
        raise UserError(f"{where}: missing field '{key}'")
    return record[key]


def load_hub_rows(dataset_id: str, config: str | None, split: str) -> Iterable[tuple[str, dict]]:
    """Rows of a hub data set as ``(where, row)`` pairs, ``where`` naming the row for errors."""
    try:
        import datasets  # noqa: F401
    except ModuleNotFoundError:
        raise UserError(
            f"loading '{dataset_id}' from the Hugging Face hub needs the `datasets` package: "
            "pip install 'vpd-bench[hub]' (or point the task's local_files at a copy of the "
            "data in the same format)") from None
    from datasets import load_dataset
    try:
        data = load_dataset(dataset_id, config, split=split) if config else \
            load_dataset(dataset_id, split=split)
    except Exception as err:  # noqa: BLE001 - network, auth, unknown id
        raise UserError(f"could not load '{dataset_id}' (split {split}) from the hub: {err}") from err
    return ((f"{dataset_id}[{split}] row {i}", dict(row)) for i, row in enumerate(data))


def load_file_rows(path: str | Path) -> Iterable[tuple[str, dict]]:
    """Rows of a local JSON/JSONL copy, named ``file: line n`` for errors."""
    return read_jsonl(path)


def package_data_file(package: str, relative: str, install_hint: str) -> Path:
    """A data file shipped inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the package '{package}' is not installed: {install_hint}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / relative
        if candidate.is_file():
            return candidate
    raise UserError(f"'{package}' is installed but lacks {relative}: {install_hint}")
