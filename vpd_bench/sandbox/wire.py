"""The wire protocol between the runner (inside the sandbox) and the parent, and its decoder.

Parent -> child: the job, as one ``marshal`` blob on stdin (the trusted direction).

Child -> parent: one JSON record per line on a pipe of its own (not stdout). The runner writes,
in this order and nothing else::

    {"ready":1}
    {"load":"ok"}   or   {"load":"syntax"|"exception","error":E}   (then it exits)
    per call i, in order:
        {"start":i}
        then one of  {"i":i,"v":V,"t":T}       (stdio runs: V is a string, plus "truncated":B)
                     {"i":i,"error":E,"t":T}
                     {"i":i,"unsupported":S,"t":T}
                     {"i":i,"too_large":N,"t":T}
    after a call that hit the time limit, {"i":j,"skipped":S} for each later call j
    {"done":1}

    E = {"type":S,"message":S,"line":N|null,"text":S|null,"timeout":B}

V is *tagged JSON*: ``null``, ``true``/``false``, numbers, strings and lists stand for
themselves; ``{"$int":"<digits>"}`` (beyond 2**62), ``{"$float":"nan"|"inf"|"-inf"}``,
``{"$tuple":[..]}``, ``{"$set":[..]}``, ``{"$frozenset":[..]}``, ``{"$dict":[[k,v],..]}``,
``{"$bytes":"<hex>"}`` and ``{"$complex":["<re>","<im>"]}`` for the rest.

Everything the child sends is untrusted: the candidate runs in the runner's process and can
write any bytes on the pipe. The parent therefore

* caps every record in bytes (before it is even split off the stream), in characters, in
  JSON containers (counted without parsing, so a record of empty dicts is refused before a
  single dict is built) and in nesting depth;
* parses with ``json.loads`` (C, linear time; ``NaN``/``Infinity`` refused) and decodes values
  with :func:`decode_value`, which builds plain builtins only, caps nodes, depth and integer
  digits, and refuses a set / frozenset / dict in which more than a few elements share one hash
  value (so that no container is ever built in quadratic time from colliding elements);
* checks each record against the grammar above (``channel.py`` checks the order);
* raises :class:`ProtocolError` (a ``ValueError``) for anything else, never another exception.

``_dump_str``, ``_dump`` and ``_structure`` are embedded in the runner (``runner.py``): they must
stay Python-3.8 compatible and use nothing but builtins.
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass

# ------------------------------------------------------------------------------------------
# the child's side: tagged JSON written by hand (no ``json`` import in the sandbox)
# ------------------------------------------------------------------------------------------

_JSON_ESCAPES = dict([(i, "\\u%04x" % i) for i in range(32)] + [(34, '\\"'), (92, "\\\\")])

MAX_DEPTH = 100             # containers nested deeper than this are not sent (the runner refuses)
MAX_INT_DIGITS = 4300       # nor ints of more digits (CPython's own cap on int <-> str)


def _dump_str(text):
    out = text.translate(_JSON_ESCAPES)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:          # lone surrogates: escape them, JSON allows it
        out = "".join(c if not 0xD800 <= ord(c) <= 0xDFFF else "\\u%04x" % ord(c) for c in out)
    return '"' + out + '"'


def _dump(value, depth=0):
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return _dump_str(value)
    if kind is int:
        if -(1 << 62) < value < (1 << 62):
            return int.__repr__(value)
        if value.bit_length() > 14300:          # (repr would be quadratic on Python < 3.11)
            raise ValueError("int too large")
        text = int.__repr__(value)
        if len(text) > 4301:                    # MAX_INT_DIGITS and a sign
            raise ValueError("int too large")
        return '{"$int":"%s"}' % text
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            return '{"$float":"%s"}' % float.__repr__(value)
        return float.__repr__(value)
    if depth > 100:                             # MAX_DEPTH
        raise ValueError("value nested too deeply")
    depth += 1
    if kind is list:
        return "[" + ",".join([_dump(v, depth) for v in value]) + "]"
    if kind is tuple:
        return '{"$tuple":[' + ",".join([_dump(v, depth) for v in value]) + "]}"
    if kind is dict:
        return '{"$dict":[' + ",".join(["[" + _dump(k, depth) + "," + _dump(v, depth) + "]"
                                        for k, v in value.items()]) + "]}"
    if kind is set:
        return '{"$set":[' + ",".join([_dump(v, depth) for v in value]) + "]}"
    if kind is frozenset:
        return '{"$frozenset":[' + ",".join([_dump(v, depth) for v in value]) + "]}"
    if kind is bytes:
        return '{"$bytes":"%s"}' % value.hex()
    if kind is complex:
        return '{"$complex":["%s","%s"]}' % (float.__repr__(value.real), float.__repr__(value.imag))
    raise TypeError(kind.__name__)


def _structure(text):
    """(containers, separators) of a JSON text, outside its strings: the number of ``[`` and
    ``{`` and the number of ``,``. Linear time; memory bounded (64 K characters at a time);
    exact for valid JSON (for invalid JSON, exact up to the first error, which is as far as a
    parser gets). Escapes go first: ``\\\\`` pairs, then ``\\"``, as JSON reads them."""
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    containers = separators = 0
    inside = False
    step = 1 << 16
    for start in range(0, len(text), step):
        pieces = text[start:start + step].split('"')
        outside = "".join(pieces[1 if inside else 0::2])
        containers += outside.count("[") + outside.count("{")
        separators += outside.count(",")
        if len(pieces) % 2 == 0:
            inside = not inside
    return containers, separators


def container_cap(max_value_bytes: int) -> int:
    """JSON containers allowed in one encoded value: a 1 MB value may hold 65,536 (every tagged
    container takes at least 11 characters, so only lists can hit the cap before the byte cap)."""
    return max(4096, int(max_value_bytes) // 16)


# ------------------------------------------------------------------------------------------
# the parent's side
# ------------------------------------------------------------------------------------------

class ProtocolError(ValueError):
    """The child sent something the runner never writes."""


@dataclass(frozen=True)
class WireLimits:
    """Caps on what one record may hold; derived from the run's ``max_value_bytes``."""
    max_value_chars: int        # one encoded value, as the runner measures it (characters)
    max_record_chars: int       # one record, decoded from UTF-8
    max_record_bytes: int       # one record on the wire (before it is even split off the stream)
    max_containers: int         # JSON ``[`` / ``{`` in one record
    max_items: int              # decoded values (every scalar and container) in one record
    max_depth: int = MAX_DEPTH + 2
    max_int_digits: int = MAX_INT_DIGITS
    max_hash_bucket: int = 8    # elements of one set / frozenset / dict sharing one hash value

    @classmethod
    def for_run(cls, max_value_bytes: int, mode: str = "call") -> "WireLimits":
        value = int(max_value_bytes)
        # an error record's strings are at most 800 characters, each escaped to at most 6
        overhead = 1 << 16
        # stdio: the captured output is cut at ``value`` bytes, then each character may be
        # escaped to 6 (``\u0001``); values are cut by the runner at ``value`` characters
        chars = (6 * value if mode == "stdio" else value) + overhead
        return cls(max_value_chars=value, max_record_chars=chars, max_record_bytes=4 * chars,
                   max_containers=container_cap(value) + 8, max_items=value + 64)


DEFAULT_WIRE = WireLimits.for_run(1 << 26)


def _refuse_constant(name):
    raise ProtocolError(f"{name} is not JSON")


if hasattr(sys, "get_int_max_str_digits"):      # 3.11+: int() itself refuses > 4,300 digits
    _JSON_HOOKS: dict = {"parse_constant": _refuse_constant}
else:                                           # pragma: no cover - Python 3.10
    def _bounded_int(text):
        if len(text) > MAX_INT_DIGITS + 1:
            raise ProtocolError("integer too long")
        return int(text)
    _JSON_HOOKS = {"parse_constant": _refuse_constant, "parse_int": _bounded_int}


def parse_record(raw: bytes, limits: WireLimits) -> dict:
    """One line off the pipe (without its newline) -> a JSON object, within ``limits``."""
    if len(raw) > limits.max_record_bytes:
        raise ProtocolError(f"a record of {len(raw)} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("a record that is not UTF-8") from None
    if len(text) > limits.max_record_chars:
        raise ProtocolError(f"a record of {len(text)} characters")
    # count containers before parsing: json.loads would build them all (64 bytes of memory per
    # two characters of "{}") before anything could look at them. The raw count is an upper
    # bound (brackets inside strings count too): only when it is over the cap count exactly.
    if text.count("[") + text.count("{") > limits.max_containers:
        containers, _ = _structure(text)
        if containers > limits.max_containers:
            raise ProtocolError(f"a record of {containers} containers")
    try:
        record = json.loads(text, **_JSON_HOOKS)
    except ProtocolError:
        raise
    except (ValueError, RecursionError, MemoryError) as err:
        raise ProtocolError(f"a record that is not JSON ({type(err).__name__})") from None
    if type(record) is not dict:
        raise ProtocolError("a record that is not a JSON object")
    return record


_INT_TEXT = re.compile(r"-?[0-9]+")
_HEX_TEXT = re.compile(r"(?:[0-9a-f][0-9a-f])*")
_FLOAT_TEXT = re.compile(r"-?(?:inf|nan|[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)")
_SPECIAL_FLOATS = ("nan", "inf", "-inf")
_CONTAINER_TAGS = {"$tuple": tuple, "$set": set, "$frozenset": frozenset}


class _Budget:
    __slots__ = ("items", "limits")

    def __init__(self, limits: WireLimits):
        self.items = 0
        self.limits = limits


def decode_value(obj, limits: WireLimits | None = None):
    """Tagged JSON (already ``json.loads``-ed) -> a plain Python value. Raises ``ValueError``
    (:class:`ProtocolError`) or ``TypeError`` on anything else, so a hostile child can make the
    parent build nothing but plain builtins, in time and memory linear in what it sent."""
    return _decode(obj, 0, _Budget(limits or DEFAULT_WIRE))


def _decode(obj, depth: int, budget: _Budget):
    budget.items += 1
    if budget.items > budget.limits.max_items:
        raise ProtocolError("a value with too many elements")
    kind = type(obj)
    if obj is None or kind is bool or kind is str:
        return obj
    if kind is int:
        return obj
    if kind is float:
        if not math.isfinite(obj):          # the runner sends inf / nan tagged, never as 1e999
            raise ProtocolError("a bare non-finite float")
        return obj
    if depth > budget.limits.max_depth:
        raise ProtocolError("a value nested too deeply")
    depth += 1
    if kind is list:
        return [_decode(v, depth, budget) for v in obj]
    if kind is not dict or len(obj) != 1:
        raise ProtocolError("malformed value")
    (tag, payload), = obj.items()
    if tag in _CONTAINER_TAGS:
        if type(payload) is not list:
            raise ProtocolError("bad container")
        items = [_decode(v, depth, budget) for v in payload]
        if tag != "$tuple":
            _check_hashes(items, budget.limits.max_hash_bucket)
        return _CONTAINER_TAGS[tag](items)
    if tag == "$dict":
        if type(payload) is not list:
            raise ProtocolError("bad dict")
        keys, values = [], []
        for pair in payload:
            if type(pair) is not list or len(pair) != 2:
                raise ProtocolError("bad dict")
            keys.append(_decode(pair[0], depth, budget))
            values.append(_decode(pair[1], depth, budget))
        _check_hashes(keys, budget.limits.max_hash_bucket)
        return dict(zip(keys, values))
    if tag == "$int":
        if type(payload) is not str or len(payload) > budget.limits.max_int_digits + 1 \
                or not _INT_TEXT.fullmatch(payload):
            raise ProtocolError("bad int")
        return int(payload)
    if tag == "$float":
        if type(payload) is not str or payload not in _SPECIAL_FLOATS:
            raise ProtocolError("bad float")
        return float(payload)              # a fresh object: two NaNs stay two set elements
    if tag == "$bytes":
        if type(payload) is not str or not _HEX_TEXT.fullmatch(payload):
            raise ProtocolError("bad bytes")
        return bytes.fromhex(payload)
    if tag == "$complex":
        if type(payload) is not list or len(payload) != 2:
            raise ProtocolError("bad complex")
        parts = []
        for part in payload:
            if type(part) is not str or len(part) > 40 or not _FLOAT_TEXT.fullmatch(part):
                raise ProtocolError("bad complex")
            parts.append(float(part))
        return complex(parts[0], parts[1])
    raise ProtocolError(f"unknown tag {str(tag)[:40]!r}")


def _check_hashes(items: list, cap: int) -> None:
    """Refuse to build a hash container in which more than ``cap`` elements share one hash
    value. Ints, floats and tuples of them hash predictably (``hash(n) == n % (2**61 - 1)``),
    so a child could otherwise send n distinct elements of one hash and make the parent spend
    n**2 comparisons building the set. Honest values never come near: two distinct plain values
    share a hash by accident only (``-1`` and ``-2``). The hashes are counted in a dict keyed by
    the hash values themselves, whose own hashes are all distinct."""
    if len(items) <= cap:
        return
    counts: dict = {}
    for h in map(hash, items):          # TypeError for an unhashable element: also refused
        n = counts.get(h, 0) + 1
        if n > cap:
            raise ProtocolError(f"a set or dict with more than {cap} elements of one hash value")
        counts[h] = n


# -- the small fields of records ---------------------------------------------------------------

_ERROR_FIELDS = ("type", "message", "line", "text", "timeout")
_ERROR_CAPS = {"type": 100, "message": 500, "text": 200}


def read_error(obj) -> dict:
    """The ``error`` object of a record -> ``{type, message, line, text, timeout}``."""
    if type(obj) is not dict or set(obj) != set(_ERROR_FIELDS):
        raise ProtocolError("a malformed error")
    for key, cap in _ERROR_CAPS.items():
        value = obj[key]
        if value is None and key == "text":
            continue
        if type(value) is not str or len(value) > cap:
            raise ProtocolError("a malformed error")
    line = obj["line"]
    if line is not None and (type(line) is not int or not 0 <= line < (1 << 31)):
        raise ProtocolError("a malformed error")
    if type(obj["timeout"]) is not bool:
        raise ProtocolError("a malformed error")
    return {k: obj[k] for k in _ERROR_FIELDS}


def read_seconds(value) -> float:
    """The ``t`` field (the child's own clock): a finite, non-negative number."""
    if type(value) not in (int, float) or not 0 <= value < 1e9:
        raise ProtocolError("a malformed time")
    return float(value)


def read_index(value, expected: int) -> int:
    if type(value) is not int or value != expected:
        raise ProtocolError(f"a record for call {str(value)[:20]} while call {expected} was due")
    return value


def read_text(value, cap: int) -> str:
    if type(value) is not str or len(value) > cap:
        raise ProtocolError("a malformed field")
    return value
