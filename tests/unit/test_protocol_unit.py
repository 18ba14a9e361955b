"""The shared protocol module: decoding, id recovery, records, results."""

from __future__ import annotations

import json

import pytest
from core0_client.protocol import (
    ID_PATTERN,
    Command,
    Keys,
    Level,
    LogRecord,
    ProtocolError,
    Result,
    State,
    decode_command,
    recover_id,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def test_decode_minimal_and_nulls() -> None:
    c = decode_command(b'{"id":"a","command":"core.ping"}')
    assert c.arguments == {} and c.queue is None and c.stream is False
    c = decode_command(json.dumps({"id": "a", "command": "x", "arguments": None, "queue": None,
                                   "max_time": 0, "recurring_period": 0, "stream": None,
                                   "tags": None, "stats_interval": None,
                                   "log_levels": None}))
    assert c.max_time is None and c.recurring_period is None


@pytest.mark.parametrize("raw,field", [
    (b'{"id":"a","command":"x","extra":1}', "extra"),
    (b'{"id":1,"command":"x"}', "id"),
    (b'{"id":"a","command":2}', "command"),
    (b'{"id":"a","command":"x","max_time":"1"}', "max_time"),
    (b'{"id":"a","command":"x","stream":1}', "stream"),
    (b'{"id":"a","command":"x","tags":"t"}', "tags"),
    (b'{"id":"a","command":"x","arguments":[]}', "arguments"),
])
def test_decode_names_field(raw: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_command(raw)
    assert e.value.field == field


def test_decode_limits() -> None:
    with pytest.raises(ProtocolError) as e:
        decode_command(b'{"id":"a","command":"x","arguments":{"a":"' + b"x" * 2_000_000 + b'"}}')
    assert e.value.code == 413
    with pytest.raises(ProtocolError):
        decode_command(b'{"id":"a","command":"x","arguments":' + b"[" * 1000 + b"]" * 1000 + b"}")
    with pytest.raises(ProtocolError):
        decode_command(b"\xff")


def test_recover_id_only_top_level() -> None:
    assert recover_id(b'{"id": "abc", "command": ') == "abc"
    assert recover_id(b'{"command": "x", "arguments": {"id": "inner"}, "id": "outer"') == "outer"
    assert recover_id(b'{"arguments": {"id": "inner"}}') is None
    assert recover_id(b'{"id": "bad id"}') is None
    assert recover_id(b'{"id": 5}') is None
    assert recover_id(b'{"a": "\\"id\\": \\"x\\"", "id": "y"}') == "y"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_recover_id_never_crashes(data: bytes) -> None:
    got = recover_id(data)
    assert got is None or ID_PATTERN.fullmatch(got)


ids = st.from_regex(ID_PATTERN, fullmatch=True)
jsonish = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                            max_size=4),
                       max_leaves=20)


@settings(max_examples=2000, deadline=None)
@given(ids, st.text(min_size=1, max_size=30), st.dictionaries(st.text(max_size=8), jsonish,
                                                              max_size=5),
       st.booleans(), st.none() | st.lists(st.text(max_size=10), max_size=5))
def test_command_round_trip(jid: str, name: str, args: dict, stream: bool, tags) -> None:  # type: ignore[no-untyped-def]
    c = Command(name, args, id=jid, stream=stream, tags=tags)
    assert decode_command(c.to_json()) == c


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_decode_raises_only_protocol_error(data: bytes) -> None:
    try:
        decode_command(data)
    except ProtocolError:
        pass


def test_log_record_meta() -> None:
    rec = LogRecord("j", 2, "text", 0x4, 123)
    assert rec.meta == (2 << 16) | 4
    back = LogRecord.from_json(rec.to_json())
    assert back == rec and back.eof


def test_result_round_trip_and_misspelled_state() -> None:
    r = Result("a", "core.ping", State.SUCCESS, data='"x"', level=20)
    assert Result.from_json(r.to_json()) == r
    d = r.to_dict()
    d["state"] = "DUPILICATE_ID"
    assert Result.from_dict(d).state is State.DUPLICATE_ID


def test_keys_prefix() -> None:
    assert Keys().result("x") == "result:x"
    k = Keys("{n1}:")
    assert k.queue() == "{n1}:core:default" and k.flag("x") == "{n1}:result:x:flag"
    assert k.processing(k.queue()) == "{n1}:core:default:processing"


def test_reserved_id_prefixes() -> None:
    for jid in ("svc:x", "dhcp:eth0", "dnsmasq.br0", "core0.boot", "startup:1:entry"):
        with pytest.raises(ProtocolError) as e:
            decode_command(json.dumps({"id": jid, "command": "core.ping"}))
        assert e.value.field == "id"
        assert decode_command(json.dumps({"id": jid, "command": "core.ping"}),
                              internal=True).id == jid


_ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=12)  # surrogates too


@settings(max_examples=400, deadline=None)
@given(jid=_ANY_TEXT | st.none(), name=_ANY_TEXT, state=st.sampled_from(list(State)),
       code=st.integers(-2**40, 2**40) | st.booleans(),
       level=st.sampled_from([0, 20, 30, *Level]), data=_ANY_TEXT, critical=_ANY_TEXT,
       streams=st.lists(_ANY_TEXT | st.none(), max_size=3), starttime=st.integers(0, 2**63),
       time=st.integers(0, 10**9) | st.floats(0, 10, allow_nan=False),
       tags=st.none() | st.lists(_ANY_TEXT, max_size=3),
       container=st.integers(0, 10**6), run=st.none() | st.integers(0, 10**6))
def test_result_to_json_is_the_generic_encoding(  # type: ignore[no-untyped-def]
        jid, name, state, code, level, data, critical, streams, starttime, time, tags,
        container, run) -> None:
    """The hot path's layout of a result is byte for byte what the json module makes of
    its dict, for every value the fields can hold (odd types take the generic encoder)."""
    r = Result(jid, name, state, code=code, data=data, level=level, streams=streams,
               critical=critical, starttime=starttime, time=time, tags=tags,
               container=container, run=run)
    assert r.to_json() == json.dumps(r.to_dict(), separators=(",", ":"))


@settings(max_examples=200, deadline=None)
@given(jid=st.from_regex(ID_PATTERN, fullmatch=True).filter(
           lambda s: not s.startswith(("svc:", "dhcp:", "dnsmasq.", "core0."))),
       name=st.text(min_size=1, max_size=20), args=st.none() | st.dictionaries(
           st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
def test_short_and_full_command_forms_decode_alike(jid: str, name: str, args) -> None:  # type: ignore[no-untyped-def]
    """{id, command[, arguments]} (core0's client) and every field sent with its null or zero
    (0-core's clients) are the same command."""
    short = {"id": jid, "command": name} | ({} if args is None else {"arguments": args})
    full = {"id": jid, "command": name, "arguments": args, "queue": None, "max_time": 0,
            "max_restart": 0, "recurring_period": 0, "stream": False, "tags": None,
            "stats_interval": 0, "log_levels": None}
    assert decode_command(json.dumps(short)) == decode_command(json.dumps(full))
    with pytest.raises(ProtocolError) as e:
        decode_command(json.dumps(short | {"arguments": args or {}, "bogus": 1}))
    assert e.value.field == "bogus"
