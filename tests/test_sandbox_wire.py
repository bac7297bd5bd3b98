"""The wire protocol's decoder, on its own (no processes): plain builtins only, and linear in time
and bounded in memory whatever the bytes. Hostile children in the real sandbox are in
``test_sandbox_attacks.py``; the order and timing of records in ``test_sandbox_channel.py``."""
from __future__ import annotations

import json
import math
import tracemalloc

import pytest

from vpd_bench.sandbox import ProtocolError, WireLimits, decode_value, parse_record
from vpd_bench.sandbox import wire
from vpd_bench.sandbox.wire import _dump, _structure, container_cap

WIRE = WireLimits.for_run(1 << 20)
M61 = (1 << 61) - 1          # hash(n) == n % M61 for ints: multiples of it all hash to 0


def round_trip(value):
    return decode_value(json.loads(_dump(value)), WIRE)


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2 ** 62, -(2 ** 80), 3 ** 2000, 0.5, -0.0, 1e300, math.inf, -math.inf,
    "", "é\n\"\\\x00\ud800", b"\x00\xff", 1 + 2j, complex(math.inf, -0.0), [], (), set(), frozenset(), {},
    [1, [2, (3, {4: {5, 6}})], frozenset({7})], {(1, 2): [None], "k": {"n": b"x"}}, (((((),),),),),
])
def test_plain_values_round_trip(value):
    assert round_trip(value) == value
    assert type(round_trip(value)) is type(value)


def test_nan_round_trips_as_a_fresh_object():
    got = round_trip([math.nan, math.nan])
    assert math.isnan(got[0]) and got[0] is not got[1]


def test_structure_counts_containers_outside_strings_exactly():
    value = ["a\"[{", "\\", "\\\"[", [[1], (2,)], {"k[": {"{": 1}}, "x" * 70_000 + "[", [[]] * 50_000]
    text = _dump(value)

    def count(obj):
        if isinstance(obj, list):
            return 1 + sum(count(v) for v in obj)
        if isinstance(obj, dict):
            return 1 + sum(count(v) for v in obj.values())
        return 0
    assert _structure(text)[0] == count(json.loads(text))


@pytest.mark.parametrize("bad", [
    {"$code": "x"}, {"a": 1, "b": 2}, {"$float": "1e400x"}, {"$pending": 0}, {"$complex": []},
    {"$complex": ["1"]}, {"$complex": [1, 2]}, {"$complex": ["1", "2", "3"]}, {"$complex": ["1e99999" * 10, "0"]},
    {"$int": "12a"}, {"$int": 12}, {"$int": "9" * 5000}, {"$bytes": "zz"}, {"$bytes": "abc"}, {"$bytes": 5},
    {"$tuple": "ab"}, {"$set": {"a": 1}}, {"$dict": [[1]]}, {"$dict": [[1, 2, 3]]}, {"$dict": "x"},
    {"$dict": [[[1], 2]]}, {"$set": [[1]]}, {"$float": "infinity"}, {"$float": "1.5"}, float("nan"),
    float("inf"), {}, {"$set": [1] * 9}, {"$dict": [["a", 1]] * 9},
])
def test_decoder_refuses_anything_the_runner_never_writes(bad):
    with pytest.raises((ValueError, TypeError)):
        decode_value(bad, WIRE)


def test_decoder_caps_depth_and_element_count():
    deep = []
    for _ in range(WIRE.max_depth + 5):
        deep = {"$tuple": [deep]}
    with pytest.raises(ProtocolError, match="deeply"):
        decode_value(deep, WIRE)
    tight = WireLimits.for_run(4096)
    with pytest.raises(ProtocolError, match="too many"):
        decode_value(list(range(tight.max_items + 1)), tight)


@pytest.mark.parametrize("make", [
    lambda n: {"$set": [M61 * k for k in range(1, n)]},
    lambda n: {"$frozenset": [{"$tuple": [M61 * k]} for k in range(1, n)]},
    lambda n: {"$dict": [[M61 * k, 0] for k in range(1, n)]},
    lambda n: {"$set": [float(M61 * k) for k in range(1, 9)] + [M61 * k for k in range(9, n)]},
])
def test_colliding_hashes_are_refused_in_linear_time(make, monkeypatch):
    """Attack: n distinct elements of one hash value would take n**2 comparisons to build.

    Pinned by counting, not by a clock: the decoder refuses at the first bucket that overflows
    (after hashing a few dozen of the 40,000 elements: 9 when all collide, 17 when 8 floats of
    other hashes come first), and before any set, frozenset or dict is built from them
    (building it is the quadratic part)."""
    hashed, built = [], []
    monkeypatch.setattr(wire, "hash", lambda v: hashed.append(v) or hash(v), raising=False)
    monkeypatch.setattr(wire, "zip", lambda *a: built.append("dict") or zip(*a), raising=False)
    for tag in ("$set", "$frozenset"):
        real = wire._CONTAINER_TAGS[tag]
        monkeypatch.setitem(wire._CONTAINER_TAGS, tag,
                            lambda items, real=real, tag=tag: built.append(tag) or real(items))
    with pytest.raises(ProtocolError, match="hash"):
        decode_value(make(40_000), WIRE)
    assert WIRE.max_hash_bucket < len(hashed) <= 2 * (WIRE.max_hash_bucket + 1)
    assert built == []


def test_a_few_colliding_elements_are_still_plain_values():
    value = {-1, -2} | {M61 * k for k in range(1, 8)} | set(range(1000))
    assert round_trip(value) == value


def test_records_are_refused_before_they_cost_memory():
    """Attack: 1 MB of ``{}`` parses into 330,000 dicts (21 MB); refused before parsing."""
    line = b'{"i":0,"v":[' + b",".join([b"{}"] * 330_000) + b'],"t":0}'
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="containers"):
            parse_record(line, WIRE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(line)


@pytest.mark.parametrize("raw", [
    b"", b"[1]", b'"x"', b"null", b"{", b'{"i":0,"v":NaN,"t":0}', b'{"i":0,"v":-Infinity,"t":0}',
    b"\xff\xfe{}", b"{" * 2000 + b"}" * 2000, b"[" * 100_000 + b"]" * 100_000,
    b'{"i":0,"v":' + b"9" * 100_000 + b',"t":0}',
])
def test_parse_record_refuses_non_records(raw):
    with pytest.raises(ProtocolError):
        parse_record(raw, WIRE)


def test_parse_record_caps_bytes_and_characters():
    with pytest.raises(ProtocolError, match="bytes"):
        parse_record(b'{"v":"' + b"x" * WIRE.max_record_bytes + b'"}', WIRE)
    with pytest.raises(ProtocolError, match="characters"):
        parse_record(b'{"v":"' + b"x" * WIRE.max_record_chars + b'"}', WIRE)
    # a value as long as the runner allows, in 3-byte characters, is fine
    text = "€" * (1 << 20)
    assert parse_record(('{"v":%s}' % json.dumps(text, ensure_ascii=False)).encode(), WIRE)["v"] == text


def test_container_caps_of_runner_and_parent_agree():
    assert WIRE.max_containers >= container_cap(1 << 20) + 2      # the record and its error object
    honest = [[]] * (container_cap(1 << 20) - 1)                    # at the runner's cap: accepted
    record = ('{"i":0,"v":%s,"t":0.1}' % _dump(honest)).encode()
    assert decode_value(parse_record(record, WIRE)["v"], WIRE) == honest
