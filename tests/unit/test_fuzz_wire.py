"""Fuzzing the wire (hypothesis): decode → validate → route through the real dispatcher step
(tests/fuzz_harness.py). Arbitrary bytes, arbitrary JSON, commands shaped after every
registered command's argument schema, and byte-level mutations of valid commands: each ends
accepted, answered with exactly one error result for its id, or dead-lettered when no id can
be recovered; no exception escapes and no id is lost. Bounded and derandomized for CI; the
long coverage-guided run is tests/fuzz_atheris.py."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from core0_client.protocol import ID_PATTERN
from fuzz_harness import COMMAND_FIELDS, Target, schema_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core0.registry import Role

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` 4 times out of 5, else ``bad`` (deep enough to reach the handlers' schemas)."""
    return st.sampled_from([True, True, True, True, False]).flatmap(
        lambda ok: good if ok else bad)


IDS = mostly(st.from_regex(ID_PATTERN, fullmatch=True), st.sampled_from(
    ["", "a b", "x:flag", "x:3", "svc:x", "a" * 129, "é"]) | JSON)
ROLES = st.sampled_from(list(Role))


@pytest.fixture(scope="module")
def fuzz() -> Iterator[Target]:
    t = Target()
    yield t
    t.close()


def value_for(s: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped after a JSON schema property (right types, edge values), or anything."""
    if depth > 3:
        return JSON
    if "enum" in s:
        return st.sampled_from(s["enum"])
    if "anyOf" in s:
        return st.one_of([value_for(m, depth + 1) for m in s["anyOf"]])
    kind = s.get("type")
    good: st.SearchStrategy[Any]
    if kind == "string":
        good = st.text(max_size=40) | st.sampled_from(["", "-", "--x", "..", "/", "a/../b",
                                                         "\x00", "x" * 300])
        if "pattern" in s:
            good = good | st.from_regex(s["pattern"], fullmatch=True)
    elif kind == "integer":
        good = st.integers(s.get("minimum"), s.get("maximum")) | st.integers()
    elif kind == "number":
        good = st.floats(allow_nan=False) | st.integers()
    elif kind == "boolean":
        good = st.booleans()
    elif kind == "array":
        good = st.lists(value_for(s.get("items", {}), depth + 1), max_size=4)
    elif kind == "object" and "properties" in s:
        good = st.fixed_dictionaries({}, optional={
            k: value_for(v, depth + 1) for k, v in s["properties"].items()})
    elif kind == "object":
        good = st.dictionaries(st.text(max_size=10),
                               value_for(s.get("additionalProperties") or {}, depth + 1),
                               max_size=4)
    else:
        return JSON
    return mostly(good, JSON)


@st.composite
def shaped_command(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    """A command for a registered name with arguments after its schema (sometimes broken)."""
    name = draw(mostly(st.sampled_from(names), st.text(max_size=12)))
    schema = schema_of(name)
    props = schema.get("properties", {})
    need = [k for k in schema.get("required", []) if k in props]
    args = draw(mostly(st.fixed_dictionaries(
        {k: value_for(props[k]) for k in need},
        optional={k: value_for(v) for k, v in props.items() if k not in need}), JSON))
    if isinstance(args, dict) and draw(st.booleans()) and draw(st.booleans()):
        args[draw(st.text(max_size=6))] = draw(JSON)  # an unknown argument
    cmd: dict[str, Any] = draw(st.fixed_dictionaries(
        {"id": IDS}, optional={
            "queue": mostly(st.none() | st.from_regex(ID_PATTERN, fullmatch=True), JSON),
            "max_time": mostly(st.none() | st.integers(0, 100), st.integers(-1, 10**10) | JSON),
            "max_restart": mostly(st.none() | st.integers(0, 5), st.integers(-1, 5)),
            "recurring_period": mostly(st.none(), st.integers(0, 10**8)),
            "stream": mostly(st.booleans(), JSON),
            "tags": mostly(st.none() | st.lists(st.text(max_size=10), max_size=3),
                           st.lists(st.text(max_size=300), max_size=70) | JSON),
            "stats_interval": mostly(st.none(), st.integers() | JSON),
            "log_levels": mostly(st.none(), st.lists(st.integers()) | JSON),
            }))
    cmd["command"] = name
    cmd["arguments"] = args
    return cmd


outcomes: Counter[str] = Counter()


@FUZZ
@given(data=st.binary(max_size=400), role=ROLES)
def test_fuzz_bytes(fuzz: Target, data: bytes, role: Role) -> None:
    outcomes[fuzz.check(data, role)] += 1


@FUZZ
@given(obj=st.dictionaries(st.sampled_from(COMMAND_FIELDS), JSON | IDS, max_size=10) | JSON,
       role=ROLES)
def test_fuzz_json(fuzz: Target, obj: Any, role: Role) -> None:
    outcomes[fuzz.check(json.dumps(obj).encode(), role)] += 1


@settings(FUZZ, max_examples=1500)
@given(data=st.data(), role=ROLES)
def test_fuzz_schemas(fuzz: Target, data: st.DataObject, role: Role) -> None:
    """Every registered command's argument schema: parsed, or refused with a 400 naming the
    field; never another exception."""
    cmd = data.draw(shaped_command(fuzz.commands))
    outcomes[fuzz.check(json.dumps(cmd).encode(), role)] += 1


@FUZZ
@given(data=st.data(), role=ROLES)
def test_fuzz_mutated_bytes(fuzz: Target, data: st.DataObject, role: Role) -> None:
    """Valid commands, then bytes flipped, cut, inserted: broken JSON whose id must still be
    found and answered."""
    raw = bytearray(json.dumps(data.draw(shaped_command(fuzz.commands))).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i]
        elif op == "insert":
            raw[i:i] = data.draw(st.sampled_from([b'"', b"{", b"}", b"[", b",", b":", b"\\",
                                                  b'"id":"dup"', b"\xff"]))
        else:
            del raw[i:]
    outcomes[fuzz.check(bytes(raw), role)] += 1


def test_fuzz_reached_every_outcome(fuzz: Target) -> None:
    """The generators above reach all three outcomes (run after them: file order)."""
    if len(outcomes) < 3:  # run alone: a few of each
        for raw in (b'{"id":"a","command":"core.ping"}', b'{"id":"a"', b"\xff"):
            outcomes[fuzz.check(raw)] += 1
    assert set(outcomes) == {"accepted", "answered", "dead"}, outcomes
    print(f"\nwire fuzz outcomes: {dict(outcomes)}")
