"""Strict decoding of what the node sends back: results and output records.

Everything a server returns is checked before the client uses it; anything that is not a
well-formed result or record raises one ``ProtocolError`` (never a raw ``ValueError``,
``KeyError``, ``RecursionError``…).
"""

from __future__ import annotations

import json
from typing import Any

from core0_client.errors import ProtocolError
from core0_client.protocol import ID_PATTERN, LogRecord, Result, State, json_depth_ok

#: deepest JSON accepted in a reply (a result is 2 levels deep; level-20 data may be deeper)
MAX_REPLY_DEPTH = 256


def load_json(raw: bytes | str, what: str) -> Any:
    """``json.loads`` that raises ProtocolError for invalid UTF-8, invalid JSON and
    nesting deeper than MAX_REPLY_DEPTH."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{what} is not valid UTF-8") from None
    if not isinstance(raw, bytes | bytearray):
        raise ProtocolError(f"{what}: expected a string reply, got {type(raw).__name__}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not valid UTF-8 (byte {e.start})") from None
    if not json_depth_ok(bytes(raw), MAX_REPLY_DEPTH):
        raise ProtocolError(f"{what} is nested deeper than {MAX_REPLY_DEPTH} levels")
    try:
        return json.loads(text)
    except RecursionError:
        raise ProtocolError(f"{what} is nested too deeply") from None
    except ValueError as e:
        raise ProtocolError(f"{what} is not valid JSON: {e}") from None


def _opt(d: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any) -> Any:
    v = d.get(name)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ProtocolError(f"result.{name}: expected {_tname(types)}, got bool", name)
    if not isinstance(v, types):
        raise ProtocolError(f"result.{name}: expected {_tname(types)}, got {type(v).__name__}",
                            name)
    return v


def _tname(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def _str_list(v: Any, name: str, max_len: int | None = None) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ProtocolError(f"result.{name}: expected a list of strings", name)
    if max_len is not None and len(v) > max_len:
        raise ProtocolError(f"result.{name}: more than {max_len} elements", name)
    return v


def parse_result(raw: Any, expect_id: str | None = None) -> Result:
    """A result read from ``result:<id>``, checked field by field.

    ``id`` and ``state`` are required (a result without an id is refused), and the id must
    be the one asked for; every other field is optional but must have its type."""
    d = load_json(raw, "result")
    if not isinstance(d, dict):
        raise ProtocolError(f"result: expected a JSON object, got {type(d).__name__}")
    rid = d.get("id")
    if not isinstance(rid, str) or not ID_PATTERN.fullmatch(rid):
        raise ProtocolError("result.id: missing or not a valid id", "id")
    if expect_id is not None and rid != expect_id:
        raise ProtocolError(f"result.id: {rid!r} is not the job asked for", "id")
    state = d.get("state")
    if not isinstance(state, str):
        raise ProtocolError("result.state: missing or not a string", "state")
    try:
        st = State.parse(state)
    except ValueError:
        raise ProtocolError(f"result.state: unknown state {state[:64]!r}", "state") from None
    streams = _opt(d, "streams", list, ["", ""])
    streams = _str_list(streams, "streams", 2) if streams else ["", ""]
    tags = d.get("tags")
    run = _opt(d, "run", int, None)
    return Result(
        id=rid,
        command=_opt(d, "command", str, ""),
        state=st,
        code=_opt(d, "code", int, 0),
        data=_opt(d, "data", str, ""),
        level=_opt(d, "level", int, 0),
        streams=[streams[0] if streams else "", streams[1] if len(streams) > 1 else ""],
        critical=_opt(d, "critical", str, ""),
        starttime=_opt(d, "starttime", int, 0),
        time=_opt(d, "time", int, 0),
        tags=_str_list(tags, "tags") if tags is not None else None,
        container=_opt(d, "container", int, 0),
        run=run,
    )


def parse_record(raw: Any) -> LogRecord:
    """One output record (``log:<id>`` entry), checked."""
    d = load_json(raw, "output record")
    if not isinstance(d, dict) or not isinstance(d.get("message"), dict):
        raise ProtocolError("output record: expected {'message': {...}}")
    msg = d["message"]
    meta, text, epoch = msg.get("meta", 0), msg.get("message", ""), msg.get("epoch", 0)
    core, job = d.get("core", 0), d.get("command", "")
    for name, v, t in (("meta", meta, int), ("epoch", epoch, int), ("core", core, int),
                       ("message", text, str), ("command", job, str)):
        if isinstance(v, bool) or not isinstance(v, t):
            raise ProtocolError(f"output record: {name} must be {t.__name__}")
    return LogRecord(job=job, level=(meta >> 16) & 0xFFFF, flags=meta & 0xFFFF, message=text,
                     epoch=epoch, core=core)


def result_data(result: Result) -> Any:
    """The decoded data of a level-20 result (None when empty)."""
    return load_json(result.data, "result.data") if result.data else None
