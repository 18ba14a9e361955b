"""A small pipelined RESP connection for the dispatcher's hot path.

The pop loop spends its life on a handful of commands: BLMOVE, and EVALSHA of core0's own
scripts (batched pop, pickup, publish). redis-py's general machinery (pools, retries, health
checks, per-command parsing dispatch) costs several times the work of the command itself, so
this connection packs commands by hand, sends a whole batch in one write and parses the
replies with hiredis. Errors are returned as :class:`RespError` values in the reply list
(never raised), connection problems raise ``ConnectionError``/``OSError``/``TimeoutError``.
Everything else in core0 uses redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis

from core0.bus.endpoint import endpoint, slot_owner
from core0.config import Config

Arg = bytes | str | int | float


class RespError(Exception):
    """An error reply from Redis."""


def pack(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        else:
            b = repr(a).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class Script:
    """A Lua script called by SHA (loaded on every connect)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, keys: Sequence[Arg], args: Sequence[Arg]) -> list[Arg]:
        return ["EVALSHA", self.sha, len(keys), *keys, *args]


class RespConnection:
    """One connection to Redis for the pop loop: ``connect`` (TCP, unix socket or TLS, AUTH,
    SCRIPT LOAD of its scripts), ``execute`` (a batch of commands in one write, replies in
    order, errors as :class:`RespError` values), ``close``."""

    def __init__(self, cfg: Config, scripts: Sequence[Script] = ()):
        self.cfg = cfg
        self.scripts = list(scripts)
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader(replyError=RespError)

    @property
    def connected(self) -> bool:
        return self._w is not None and not self._w.is_closing()

    async def connect(self) -> None:
        self.close()
        self._parser = hiredis.Reader(replyError=RespError)
        ep = endpoint(self.cfg)  # the same endpoint as redis.asyncio's (bus.endpoint)
        timeout = 5.0
        if ep.path is not None:
            self._r, self._w = await asyncio.wait_for(
                asyncio.open_unix_connection(ep.path), timeout)
        else:
            host, port = ep.host, ep.port
            if ep.cluster:
                host, port = await slot_owner(self.cfg)
            self._r, self._w = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ep.ssl_context(),
                                        server_hostname=host if ep.tls else None), timeout)
        setup: list[list[Arg]] = []
        if ep.password:
            setup.append(["AUTH", ep.username, ep.password] if ep.username
                         else ["AUTH", ep.password])
        if ep.db and not ep.cluster:
            setup.append(["SELECT", ep.db])
        setup += [["SCRIPT", "LOAD", s.source] for s in self.scripts]
        if setup:
            for reply in await self.execute(setup, timeout=timeout):
                if isinstance(reply, RespError):
                    self.close()
                    raise ConnectionError(f"redis refused the connection setup: {reply}")

    def close(self) -> None:
        if self._w is not None:
            with contextlib.suppress(Exception):
                self._w.close()
        self._r = self._w = None

    async def execute(self, commands: Sequence[Sequence[Arg]],
                      timeout: float | None = 10.0) -> list[Any]:
        """Send ``commands`` in one write; return their replies in order."""
        if self._w is None or self._r is None:
            raise ConnectionError("not connected")
        self._w.write(b"".join([pack(c) for c in commands]))
        try:
            async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
                return await self._replies(len(commands))
        except BaseException:
            self.close()  # a half-read reply stream cannot be reused
            raise

    async def _replies(self, n: int) -> list[Any]:
        assert self._r is not None
        out: list[Any] = []
        while len(out) < n:
            reply = self._parser.gets()
            if reply is False:
                data = await self._r.read(65536)
                if not data:
                    raise ConnectionError("redis closed the connection")
                self._parser.feed(data)
                continue
            out.append(reply)
        return out


class _Call:
    __slots__ = ("n", "replies", "fut")

    def __init__(self, n: int, fut: asyncio.Future[list[Any]]):
        self.n = n
        self.replies: list[Any] = []
        self.fut = fut


class SharedConnection:
    """One RESP connection shared by many coroutines, fully pipelined.

    :meth:`submit` queues commands and returns a future of their replies; everything submitted
    in one turn of the event loop goes out in one write (so eight jobs that end together cost
    one ``send``), and one reader task hands the replies back in order. Connection problems
    fail every call in flight with ``ConnectionError``; the next call connects again."""

    def __init__(self, cfg: Config, scripts: Sequence[Script] = ()):
        self._conn = RespConnection(cfg, scripts)
        self._calls: deque[_Call] = deque()
        self._out: list[bytes] = []
        self._flushing = False
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        return self._conn.connected and self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        """Connect (again) unless connected; concurrent callers share one attempt."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.connected:
                return
            self.close()
            await self._conn.connect()
            self._reader = asyncio.ensure_future(self._read_loop())

    def close(self, why: str = "connection closed") -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._conn.close()
        self._out.clear()
        calls, self._calls = self._calls, deque()
        for c in calls:
            if not c.fut.done():
                c.fut.set_exception(ConnectionError(why))
                c.fut.exception()  # retrieved: a caller that went away leaves no warning

    def submit(self, commands: Sequence[Sequence[Arg]]) -> asyncio.Future[list[Any]]:
        """Queue ``commands`` for the next write; the future gets their replies (error
        replies as :class:`RespError` values). The caller must be connected."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        if not self.connected:
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self._calls.append(_Call(len(commands), fut))
        self._out.append(b"".join([pack(c) for c in commands]))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        return fut

    async def wait(self, fut: asyncio.Future[list[Any]], timeout: float | None = 10.0
                   ) -> list[Any]:
        """Await a :meth:`submit` future; a timeout drops the connection (the reply stream
        cannot be trusted any more) and fails every call in flight. A timer handle rather
        than ``asyncio.timeout`` + ``shield``: this is the hot path of every round trip."""
        if fut.done():
            return fut.result()
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, self._expire, fut)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, fut: asyncio.Future[list[Any]]) -> None:
        if not fut.done():
            self.close("redis did not answer in time")

    async def execute(self, commands: Sequence[Sequence[Arg]], timeout: float | None = 10.0,
                      *, now: bool = False) -> list[Any]:
        """Connect if needed, send ``commands`` with whatever else goes out now (``now``: at
        once, for a caller that only waits for them), and return their replies."""
        if not self.connected:
            await self.connect()
        fut = self.submit(commands)
        if now:
            self._flush()
        return await self.wait(fut, timeout)

    def _flush(self) -> None:
        self._flushing = False
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        w = self._conn._w
        if w is None:
            self.close()
            return
        try:
            w.write(data)
        except Exception as e:
            self.close(f"write failed: {e!r}")

    async def _read_loop(self) -> None:
        r = self._conn._r
        parser = self._conn._parser
        why = "redis closed the connection"
        try:
            assert r is not None
            while True:
                data = await r.read(65536)
                if not data:
                    break
                parser.feed(data)
                while self._calls:
                    reply = parser.gets()
                    if reply is False:
                        break
                    call = self._calls[0]
                    call.replies.append(reply)
                    if len(call.replies) == call.n:
                        self._calls.popleft()
                        if not call.fut.done():
                            call.fut.set_result(call.replies)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            why = f"redis link failed: {e!r}"
        if self._reader is asyncio.current_task():
            self.close(why)
