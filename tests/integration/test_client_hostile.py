"""The client against a hostile or broken server (a fake Redis-speaking TCP server, in
tests/fake_redis.py): every malformed reply is one typed ProtocolError from Client and
AsyncClient and one line + exit status 2 from core0ctl; a server that never answers or
drips its answer gives a TimeoutError at the caller's deadline."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from core0_client import AsyncClient, Client, Core0Error, ProtocolError, TimeoutError
from fake_redis import FakeRedis, Reply, bulk, scripted


def result_of(template: bytes) -> Callable[[list[bytes]], Reply]:
    """A BLMOVE answer: ``template`` with %ID% replaced by the id of the job asked for."""
    return lambda argv: bulk(template.replace(b"%ID%", argv[1].split(b":", 1)[1]))


OK = (b'{"id":"%ID%","command":"core.ping","state":"SUCCESS","code":0,"level":20,'
      b'"data":"\\"PONG\\""}')
DEEP = 200_000

#: name -> (replies of the fake server, the call that meets the bad reply)
CASES: dict[str, tuple[dict[bytes, Any], str]] = {
    "hello refused": ({b"HELLO": b"-ERR unknown command 'HELLO'\r\n"}, "get"),
    "hello not a map": ({b"HELLO": b"+OK\r\n"}, "get"),
    "hello odd map": ({b"HELLO": b"*1\r\n$6\r\nserver\r\n"}, "get"),
    "hello huge bulk": ({b"HELLO": b"$99999999999\r\n"}, "get"),
    "rpush not an integer": ({b"RPUSH": b"$2\r\nno\r\n"}, "get"),
    "non-JSON result": ({b"BLMOVE": result_of(b"not json at all")}, "get"),
    "JSON array": ({b"BLMOVE": result_of(b'["%ID%", "SUCCESS"]')}, "get"),
    "JSON string": ({b"BLMOVE": result_of(b'"SUCCESS"')}, "get"),
    "code is a string": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","code":"x"}')},
                         "get"),
    "code is a bool": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","code":true}')},
                       "get"),
    "unknown state": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"MAYBE","code":0}')}, "get"),
    "state not a string": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":1}')}, "get"),
    "deep nesting": ({b"BLMOVE": result_of(b"[" * DEEP + b"]" * DEEP)}, "get"),
    "deep nesting in data": ({b"BLMOVE": result_of(
        b'{"id":"%ID%","state":"SUCCESS","data":' + b"{\"a\":" * DEEP + b"1" + b"}" * DEEP
        + b"}")}, "get"),
    "streams not a list": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS",'
                                                 b'"streams":"out"}')}, "get"),
    "streams of numbers": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS",'
                                                 b'"streams":[1,2]}')}, "get"),
    "three streams": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS",'
                                            b'"streams":["a","b","c"]}')}, "get"),
    "level a string": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","level":"20"}')},
                       "get"),
    "data an object": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","data":{}}')},
                       "get"),
    "tags of numbers": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","tags":[1]}')},
                        "get"),
    "time a float": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","time":1.5}')},
                     "get"),
    "invalid UTF-8": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","data":"\xff\xfe"}')},
                      "get"),
    "no id": ({b"BLMOVE": result_of(b'{"state":"SUCCESS"}')}, "get"),
    "id a number": ({b"BLMOVE": result_of(b'{"id":5,"state":"SUCCESS"}')}, "get"),
    "another job's id": ({b"BLMOVE": result_of(b'{"id":"other","state":"SUCCESS"}')}, "get"),
    "two replies to one request": ({b"RPUSH": b":1\r\n:1\r\n"}, "get"),
    "RESP garbage": ({b"BLMOVE": b"hello world\r\n"}, "get"),
    "RESP unknown type": ({b"BLMOVE": b"?what\r\n"}, "get"),
    "RESP bad length": ({b"BLMOVE": b"$abc\r\n"}, "get"),
    "RESP bulk -5": ({b"BLMOVE": b"$-5\r\n"}, "get"),
    "RESP array -5": ({b"BLMOVE": b"*-5\r\n"}, "get"),
    "RESP bad integer": ({b"BLMOVE": b":12x\r\n"}, "get"),
    "RESP bulk without CRLF": ({b"BLMOVE": b"$2\r\nabcd\r\n"}, "get"),
    "RESP integer reply": ({b"BLMOVE": b":7\r\n"}, "get"),
    "RESP array reply": ({b"BLMOVE": b"*1\r\n$2\r\n{}\r\n"}, "get"),
    "RESP huge bulk": ({b"BLMOVE": b"$99999999999\r\n"}, "get"),
    "RESP huge array": ({b"BLMOVE": b"*99999999999\r\n"}, "get"),
    "RESP nested arrays": ({b"BLMOVE": b"*1\r\n" * 100 + b":1\r\n"}, "get"),
    "RESP endless line": ({b"BLMOVE": b"+" + b"x" * 100_000}, "get"),
    "RESP3 type": ({b"BLMOVE": b"%1\r\n+a\r\n+b\r\n"}, "get"),
    "data not JSON": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","level":20,'
                                            b'"data":"{bad"}')}, "json"),
    "data too deep": ({b"BLMOVE": result_of(b'{"id":"%ID%","state":"SUCCESS","level":20,'
                                            b'"data":"' + b"[" * DEEP + b'"}')}, "json"),
    "XREAD an integer": ({b"XREAD": b":1\r\n"}, "stream"),
    "XREAD bad shape": ({b"XREAD": b"*1\r\n*1\r\n$3\r\nlog\r\n"}, "stream"),
    "XREAD odd fields": ({b"XREAD": b"*1\r\n*2\r\n$3\r\nlog\r\n*1\r\n*2\r\n$3\r\n1-1\r\n"
                                    b"*1\r\n$6\r\nrecord\r\n"}, "stream"),
    "record not JSON": ({b"XREAD": b"*1\r\n*2\r\n$3\r\nlog\r\n*1\r\n*2\r\n$3\r\n1-1\r\n"
                                   b"*2\r\n$6\r\nrecord\r\n$5\r\nnope!\r\n"}, "stream"),
    "record missing": ({b"XREAD": b"*1\r\n*2\r\n$3\r\nlog\r\n*1\r\n*2\r\n$3\r\n1-1\r\n"
                                  b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n"}, "stream"),
    "record meta a string": ({b"XREAD": b"*1\r\n*2\r\n$3\r\nlog\r\n*1\r\n*2\r\n$3\r\n1-1\r\n"
                                        b"*2\r\n$6\r\nrecord\r\n"
                              + bulk(b'{"message":{"message":"a","meta":"x"}}')}, "stream"),
}


def call_sync(c: Client, via: str) -> None:
    if via == "get":
        c.raw("core.ping").get(timeout=10)
    elif via == "json":
        c.ping()
    else:
        c.response_for("job1").stream(lambda *a: None, timeout=10)


async def call_async(c: AsyncClient, via: str) -> None:
    if via == "get":
        await (await c.raw("core.ping")).get(timeout=10)
    elif via == "json":
        await c.ping()
    else:
        await c.response_for("job1").stream(lambda *a: None, timeout=10)


def ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core0_client.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def ctl_args(via: str) -> list[str]:
    return {"get": ["raw", "core.ping", "{}"], "json": ["ping"],
            "stream": ["stream", "job1"]}[via]


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_reply_is_one_protocol_error(name: str) -> None:
    replies, via = CASES[name]
    with FakeRedis(scripted(replies)) as srv:
        with Client(url=srv.url, timeout=10) as c, pytest.raises(ProtocolError) as e:
            call_sync(c, via)
        assert isinstance(e.value, Core0Error) and "\n" not in str(e.value)

        async def go() -> None:
            async with AsyncClient(url=srv.url, timeout=10) as ac:
                with pytest.raises(ProtocolError):
                    await call_async(ac, via)

        asyncio.run(go())
        r = ctl("--url", srv.url, "--timeout", "10", *ctl_args(via))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("core0ctl: protocol error: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_fine_server_is_fine() -> None:
    """The fake itself is sane: a well-formed result is accepted (so the cases above fail for
    their one defect)."""
    with FakeRedis(scripted({b"BLMOVE": result_of(OK)})) as srv, \
            Client(url=srv.url, timeout=10) as c:
        assert c.ping() == "PONG"
        assert c.raw("core.ping").get(10).ok
        r = ctl("--url", srv.url, "ping")
    assert r.returncode == 0 and r.stdout == "PONG\n"


def finishes(fn: Callable[[], None], limit: float = 30) -> BaseException | None:
    """Run ``fn`` in a thread; the error it raised (it must finish well before ``limit``:
    a hang guard, not a timing assertion)."""
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as e:  # handed to the test
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert out, "the call hung"
    return out[0]


SILENT: dict[str, dict[bytes, Any]] = {
    "accepts, never answers": {b"HELLO": None},
    "never answers the push": {b"RPUSH": None},
    "never answers the wait": {b"BLMOVE": None},
    "drips a huge reply": {b"BLMOVE": ("drip", b"$1000\r\n" + b"x" * 1000)},
}


@pytest.mark.parametrize("name", list(SILENT))
def test_deadline_is_honoured(name: str) -> None:
    with FakeRedis(scripted(SILENT[name])) as srv:
        c = Client(url=srv.url, timeout=1)
        err = finishes(lambda: c.raw("core.ping").get(timeout=1))
        assert isinstance(err, TimeoutError), repr(err)
        c.close()
        c = Client(url=srv.url)  # default timeout: connect and wait still bounded
        err = finishes(lambda: c.raw("core.ping").get(timeout=1))
        assert isinstance(err, TimeoutError), repr(err)
        c.close()

        async def go() -> None:
            async with AsyncClient(url=srv.url, timeout=1) as ac:
                with pytest.raises(TimeoutError):
                    await (await ac.raw("core.ping")).get(timeout=1)

        assert finishes(lambda: asyncio.run(go())) is None
        r = ctl("--url", srv.url, "--timeout", "1", "raw", "core.ping", "{}", timeout=30)
    assert r.returncode == 3 and r.stderr.startswith("core0ctl: timeout"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_server_error_reply_is_typed() -> None:
    from core0_client import AuthError, ServerError

    with FakeRedis(scripted({b"RPUSH": b"-NOPERM no permissions to access 'core:default'\r\n",
                             b"BLMOVE": b"-WRONGTYPE wrong kind of value\r\n"})) as srv, \
            Client(url=srv.url, timeout=5) as c:
        with pytest.raises(AuthError):
            c.raw("core.ping")
        with pytest.raises(ServerError) as e:
            c.response_for("x").get(2)
        assert e.value.kind == "WRONGTYPE"
        r = ctl("--url", srv.url, "raw", "core.ping", "{}")
    assert r.returncode == 1 and "NOPERM" in r.stderr and "Traceback" not in r.stderr


def test_loading_redis_is_waited_for() -> None:
    """A restarted Redis answering LOADING is retried until it serves (not an error)."""
    n = {"rpush": 0}

    def rpush(argv: list[bytes]) -> Reply:
        n["rpush"] += 1
        return b"-LOADING Redis is loading the dataset in memory\r\n" if n["rpush"] < 3 \
            else b":1\r\n"

    with FakeRedis(scripted({b"RPUSH": rpush, b"BLMOVE": result_of(OK)})) as srv, \
            Client(url=srv.url, timeout=10) as c:
        assert c.ping() == "PONG"
    assert n["rpush"] == 3


def test_lost_connection_resubmits_unknown_job() -> None:
    """The connection drops while waiting; the node then knows nothing of the job: the
    client reconnects and pushes the same command (same id) again."""
    with FakeRedis(scripted({b"BLMOVE": result_of(OK), b"EXISTS": b":0\r\n"})) as srv, \
            Client(url=srv.url, timeout=10) as c:
        resp = c.raw("core.ping")
        srv.cut()  # the node restarts (and lost the job)
        assert resp.get(10).ok
        pushes = [cmd for cmd in srv.commands if cmd[0] == b"RPUSH"]
    assert len(pushes) == 2 and pushes[0] == pushes[1]


def test_lost_connection_resubmits_unknown_job_async() -> None:
    with FakeRedis(scripted({b"BLMOVE": result_of(OK), b"EXISTS": b":0\r\n"})) as srv:
        async def go() -> None:
            async with AsyncClient(url=srv.url, timeout=10) as ac:
                resp = await ac.raw("core.ping")
                srv.cut()
                await asyncio.sleep(0.1)  # let the end of stream reach the idle connection
                assert (await resp.get(10)).ok

        asyncio.run(go())
        pushes = [cmd for cmd in srv.commands if cmd[0] == b"RPUSH"]
    assert len(pushes) == 2 and pushes[0] == pushes[1]
