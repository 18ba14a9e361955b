"""Client and AsyncClient have one API: the same public methods, signatures and managers;
the RESP parser's bounds."""

from __future__ import annotations

import inspect
import json

import pytest
from core0_client import AsyncClient, Client, ProtocolError
from core0_client.aio import AsyncResponse
from core0_client.replies import parse_result
from core0_client.resp import ErrorReply, Parser, pack
from core0_client.sync import Response
from hypothesis import given, settings
from hypothesis import strategies as st


def public(obj: object) -> dict[str, str]:
    """Public name -> its signature (methods), "property" or "attribute"."""
    out = {}
    for name in dir(obj):
        if name.startswith("_"):
            continue
        value = getattr(type(obj), name, None)
        if isinstance(value, property):
            out[name] = "property"
        elif callable(value):
            out[name] = str(inspect.signature(value))
        else:
            out[name] = "attribute"
    return out


def test_same_public_api() -> None:
    c, ac = Client(), AsyncClient()
    sync_api, async_api = public(c), public(ac)
    assert sync_api == async_api
    for name in ("raw", "submit_many", "upload", "download", "upload_file", "download_file",
                 "sync", "json", "ping", "system", "bash", "subscribe", "commands",
                 "response_for", "close"):
        assert name in sync_api
    assert public(Response(c, "x")) == public(AsyncResponse(ac, "x"))


def test_same_managers() -> None:
    c, ac = Client(), AsyncClient()
    managers = [n for n in dir(c) if not n.startswith("_")
                and type(getattr(c, n)).__module__.startswith("core0_client.managers")]
    assert {"info", "job", "filesystem", "disk", "zfs", "bridge"} <= set(managers)
    for name in managers:
        assert public(getattr(c, name)) == public(getattr(ac, name))
        assert type(getattr(c, name)) is type(getattr(ac, name))


def test_async_methods_are_awaitable() -> None:
    ac = AsyncClient()
    coro = ac.response_for("x").get(0.01)
    assert inspect.iscoroutine(coro)
    coro.close()


def parse(data: bytes) -> object:
    p = Parser(max_bulk=1000)
    p.feed(data)
    ok, reply = p.get()
    assert ok
    return reply


def test_parser_values() -> None:
    assert parse(b"+OK\r\n") == "OK"
    assert parse(b":-12\r\n") == -12
    assert parse(b"$3\r\nabc\r\n") == b"abc"
    assert parse(b"$-1\r\n") is None and parse(b"*-1\r\n") is None
    assert parse(b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n") == [b"a", [1]]
    err = parse(b"-ERR nope\r\n")
    assert isinstance(err, ErrorReply) and err == "ERR nope"
    assert pack(["RPUSH", b"k", 1]) == b"*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$1\r\n1\r\n"


def test_parser_incremental() -> None:
    p = Parser()
    data = b"*2\r\n$5\r\nhello\r\n:42\r\n+next\r\n"
    out = []
    for i in range(len(data)):
        p.feed(data[i : i + 1])
        ok, reply = p.get()
        if ok:
            out.append(reply)
    assert out == [[b"hello", 42], "next"]


@pytest.mark.parametrize("data", [
    b"$1001\r\n", b"$99999999999\r\n", b"$-5\r\n", b"*-2\r\n", b"*99999999999\r\n",
    b"?x\r\n", b"\r\n", b":1.5\r\n", b": 1\r\n", b"$1_0\r\n", b"*1\r\n" * 20,
    b"$1\r\nabc\r\n", b"+" + b"x" * 70_000, b"-\xff\r\n",
])
def test_parser_refuses(data: bytes) -> None:
    p = Parser(max_bulk=1000)
    p.feed(data)
    with pytest.raises(ProtocolError):
        p.get()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parser_fuzz_only_protocol_errors(data: bytes) -> None:
    p = Parser(max_bulk=1000)
    p.feed(data)
    try:
        while p.get()[0]:
            pass
    except ProtocolError:
        pass


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
FIELDS = st.sampled_from(["id", "state", "code", "data", "level", "streams", "critical",
                          "starttime", "time", "tags", "container", "run", "command"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(FIELDS, JSON | st.just("SUCCESS") | st.just("job-1"), max_size=13)
       | JSON)
def test_result_fuzz_only_protocol_errors(obj: object) -> None:
    raw = json.dumps(obj).encode()
    try:
        res = parse_result(raw, "job-1")
    except ProtocolError:
        return
    assert res.id == "job-1" and isinstance(res.code, int) and isinstance(res.data, str)
    assert all(isinstance(s, str) for s in res.streams) and len(res.streams) == 2
