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
from collections.abc import Callable, Sequence
from typing import Any

import hiredis

from core0.bus.endpoint import endpoint, slot_owner, timeouts
from core0.config import Config

Arg = bytes | str | int | float


class RespError(Exception):
    """An error reply from Redis."""


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP (hiredis's C packer: str as UTF-8, numbers as their repr)."""
    return hiredis.pack_command(tuple(args))  # type: ignore[arg-type]  # (its stub: 1-tuple)


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
        timeout = float(timeouts(self.cfg)["socket_connect_timeout"])
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
    __slots__ = ("n", "replies", "fut", "deadline", "on_reply")

    def __init__(self, n: int, fut: asyncio.Future[list[Any]], deadline: float,
                 on_reply: Callable[[list[Any]], None] | None = None):
        self.n = n
        self.replies: list[Any] = []
        self.fut = fut
        self.deadline = deadline
        self.on_reply = on_reply


class _Replies(asyncio.Protocol):
    """The transport's protocol once the connection is set up: replies are parsed and handed
    to their calls as the bytes arrive, with no reader task in between."""

    def __init__(self, owner: SharedConnection):
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def eof_received(self) -> bool:
        self.owner._lost(self, "redis closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, f"redis link failed: {exc!r}" if exc else
                         "redis closed the connection")


class SharedConnection:
    """One RESP connection shared by many coroutines, fully pipelined.

    :meth:`submit` queues commands and returns a future of their replies; everything submitted
    in one turn of the event loop goes out in one write (so eight jobs that end together cost
    one ``send``), and the transport's protocol hands the replies back in order as they arrive
    (no reader task: one hop of the event loop less per round trip). Each call has a deadline;
    one watchdog timer per connection (not a timer per call) drops the connection when a call
    is overdue. Connection problems fail every call in flight with ``ConnectionError``; the
    next call connects again."""

    def __init__(self, cfg: Config, scripts: Sequence[Script] = ()):
        self._conn = RespConnection(cfg, scripts)
        self._calls: deque[_Call] = deque()
        self._out: list[bytes] = []
        self._flushing = False
        self._transport: asyncio.BaseTransport | None = None
        self._protocol: _Replies | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        t = self._transport
        return t is not None and not t.is_closing()

    async def connect(self) -> None:
        """Connect (again) unless connected; concurrent callers share one attempt."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.connected:
                return
            self.close()
            await self._conn.connect()
            w = self._conn._w
            assert w is not None
            self._protocol = _Replies(self)
            self._transport = w.transport
            self._transport.set_protocol(self._protocol)
            self._loop = asyncio.get_running_loop()

    def close(self, why: str = "connection closed") -> None:
        self._transport = self._protocol = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._conn.close()
        self._out.clear()
        calls, self._calls = self._calls, deque()
        for c in calls:
            if not c.fut.done():
                c.fut.set_exception(ConnectionError(why))
                c.fut.exception()  # retrieved: a caller that went away leaves no warning

    def _lost(self, protocol: _Replies, why: str) -> None:
        if protocol is self._protocol:  # not an older connection's late news
            self.close(why)

    def submit(self, commands: Sequence[Sequence[Arg]], timeout: float = 10.0, *,
               now: bool = False, on_reply: Callable[[list[Any]], None] | None = None
               ) -> asyncio.Future[list[Any]]:
        """Queue ``commands`` for the next write (``now``: write at once, with whatever else
        is queued); the future gets their replies (error replies as :class:`RespError`
        values) within ``timeout`` seconds, or the connection is dropped. ``on_reply`` is
        called with the replies as they are parsed, before the future's waiters wake (a turn
        of the event loop later); it must not raise. The caller must be connected."""
        loop = self._loop
        if loop is None or not self.connected:
            fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            fut.set_exception(ConnectionError("not connected"))
            return fut
        fut = loop.create_future()
        deadline = loop.time() + timeout
        self._calls.append(_Call(len(commands), fut, deadline, on_reply))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline + 0.05, self._check_deadlines)
        self._out.append(b"".join([pack(c) for c in commands]))
        if now:
            self.flush()
        elif not self._flushing:
            self._flushing = True
            loop.call_soon(self.flush)
        return fut

    def _check_deadlines(self) -> None:
        """The watchdog: drop the connection if a call is overdue (the reply stream cannot
        be trusted any more), else sleep until the next deadline."""
        self._watchdog = None
        loop = self._loop
        if not self._calls or loop is None:
            return
        now = loop.time()
        first = min(c.deadline for c in self._calls)
        if first <= now:
            self.close("redis did not answer in time")
            return
        self._watchdog = loop.call_at(first + 0.05, self._check_deadlines)

    async def execute(self, commands: Sequence[Sequence[Arg]], timeout: float = 10.0,
                      *, now: bool = False) -> list[Any]:
        """Connect if needed, send ``commands`` with whatever else goes out now (``now``: at
        once, for a caller that only waits for them), and return their replies."""
        if not self.connected:
            await self.connect()
        return await self.submit(commands, timeout, now=now)

    def flush(self) -> None:
        """Write everything queued, now."""
        self._flushing = False  # a flush still scheduled finds nothing to write
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        t = self._transport
        if t is None:
            self.close()
            return
        try:
            t.write(data)  # type: ignore[attr-defined]
        except Exception as e:
            self.close(f"write failed: {e!r}")

    def _received(self, data: bytes) -> None:
        parser = self._conn._parser
        calls = self._calls
        try:
            parser.feed(data)
            while calls:
                reply = parser.gets()
                if reply is False:
                    break
                call = calls[0]
                call.replies.append(reply)
                if len(call.replies) == call.n:
                    calls.popleft()
                    if not call.fut.done():
                        if call.on_reply is not None:
                            call.on_reply(call.replies)
                        call.fut.set_result(call.replies)
        except Exception as e:
            self.close(f"redis link failed: {e!r}")
