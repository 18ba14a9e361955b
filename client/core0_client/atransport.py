"""Connections to a node's Redis, asyncio flavour (same rules as ``transport``)."""

from __future__ import annotations

import asyncio
import builtins
import ssl
import time
from collections.abc import Sequence
from typing import Any

from core0_client.errors import ConnectionError, Core0Error, ProtocolError, TimeoutError
from core0_client.resp import Arg, Parser, pack
from core0_client.transport import MAX_IDLE, check_hello, clean, hello, left, ssl_context, where
from core0_client.url import Endpoint

builtins_timeout = builtins.TimeoutError  # asyncio.timeout raises it; ours subclasses it


class AsyncConnection:
    """One asyncio connection (TCP, TLS or unix socket)."""

    def __init__(self, ep: Endpoint, max_bulk: int):
        self.ep = ep
        self.parser = Parser(max_bulk)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, deadline: float) -> None:
        ep = self.ep
        try:
            async with asyncio.timeout(left(deadline)):
                if ep.unix_socket_path is not None:
                    self.reader, self.writer = await asyncio.open_unix_connection(
                        ep.unix_socket_path)
                else:
                    ctx = ssl_context(ep) if ep.tls else None
                    self.reader, self.writer = await asyncio.open_connection(
                        ep.host, ep.port, ssl=ctx,
                        server_hostname=(ep.server_name or ep.host) if ctx else None)
        except Core0Error:
            raise
        except builtins_timeout as e:
            raise TimeoutError(f"connecting to {where(ep)}: timed out") from e
        except ssl.SSLError as e:
            raise ConnectionError(f"TLS with {where(ep)} failed: {clean(str(e))}") from None
        except OSError as e:
            raise ConnectionError(f"cannot connect to {where(ep)}: {e.strerror or e}") from None
        try:
            check_hello((await self.request([hello(ep)], deadline))[0])
        except BaseException:
            self.close()
            raise

    async def request(self, cmds: Sequence[Sequence[Arg]], deadline: float) -> list[Any]:
        reader, writer = self.reader, self.writer
        if reader is None or writer is None:
            raise ConnectionError("connection closed")
        try:
            async with asyncio.timeout(left(deadline)):
                writer.write(b"".join(pack(c) for c in cmds))
                await writer.drain()
                out: list[Any] = []
                while len(out) < len(cmds):
                    ok, reply = self.parser.get()
                    if ok:
                        out.append(reply)
                        continue
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        raise ConnectionError(f"{where(self.ep)} closed the connection")
                    self.parser.feed(chunk)
                if self.parser.pending():
                    raise ProtocolError("the server sent more than the replies asked for")
                return out
        except Core0Error:
            raise
        except builtins_timeout:
            raise TimeoutError(f"{where(self.ep)} did not answer in time") from None
        except OSError as e:
            raise ConnectionError(f"connection to {where(self.ep)} lost: "
                                  f"{clean(e.strerror or str(e))}") from None

    def stale(self) -> bool:
        """Closed by the server, or holding data nobody asked for."""
        return (self.reader is None or self.reader.at_eof() or self.parser.pending()
                or bool(getattr(self.reader, "_buffer", b"")))

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except (OSError, RuntimeError):
                pass
        self.reader = self.writer = None



class AsyncPool:
    """Idle connections of an asyncio client."""

    def __init__(self, ep: Endpoint, max_bulk: int, connect_timeout: float):
        self.ep = ep
        self.max_bulk = max_bulk
        self.connect_timeout = connect_timeout
        self.idle: list[AsyncConnection] = []
        self.connected_once = False
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def execute(self, cmds: Sequence[Sequence[Arg]], deadline: float) -> list[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # connections belong to the loop that opened them
            self.drop_idle()
            self.loop = loop
        conn = self.idle.pop() if self.idle else None
        if conn is not None and conn.stale():
            conn.close()
            self.drop_idle()
            raise ConnectionError(f"{where(self.ep)} closed the connection")
        if conn is None:
            conn = AsyncConnection(self.ep, self.max_bulk)
            await conn.open(min(deadline, time.monotonic() + self.connect_timeout))
            self.connected_once = True
        try:
            replies = await conn.request(cmds, deadline)
        except BaseException:
            conn.close()
            raise
        if not self.closed and len(self.idle) < MAX_IDLE:
            self.idle.append(conn)
        else:
            conn.close()
        return replies

    def drop_idle(self) -> None:
        idle, self.idle = self.idle, []
        for c in idle:
            c.close()

    def close(self) -> None:
        self.closed = True
        self.drop_idle()
