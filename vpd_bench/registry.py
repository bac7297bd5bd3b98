"""Name look-ups with "did you mean" answers."""
from __future__ import annotations

import difflib
from typing import Iterable, Mapping, TypeVar

from vpd_bench.errors import UserError

T = TypeVar("T")


def suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def lookup(table: Mapping[str, T], name: str, kind: str) -> T:
    if name in table:
        return table[name]
    raise UserError(f"unknown {kind} '{name}'.{suggest(name, table)} "
                    f"Known {kind}s: {', '.join(sorted(table))}.")
