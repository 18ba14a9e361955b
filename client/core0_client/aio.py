"""The asyncio client (redis.asyncio): the same API as ``Client``, awaitable."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core0_client._base import (
    DEFAULT_TIMEOUT,
    WAIT_CHUNK,
    ClientBase,
    build,
    check,
    decode_json,
    system_args,
)
from core0_client.errors import JobNotFoundError, TimeoutError
from core0_client.protocol import Command, LogRecord, Result
from core0_client.sync import StreamCallback, default_callback

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError)


class AsyncResponse:
    """A handle on a job (awaitable twin of ``Response``)."""

    def __init__(self, client: AsyncClient, id: str, command: Command | None = None):
        self.client = client
        self.id = id
        self.command = command

    def __repr__(self) -> str:
        return f"<AsyncResponse {self.id}>"

    async def exists(self) -> bool:
        k = self.client.keys
        return bool(await self.client._do(lambda r: r.exists(k.flag(self.id), k.result(self.id))))

    async def running(self) -> bool:
        return await self.client._do(lambda r: r.ttl(self.client.keys.flag(self.id))) == -1

    async def get(self, timeout: float | None = None) -> Result:
        """Wait for the result; see ``Response.get``."""
        c = self.client
        timeout = c.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        key = c.keys.result(self.id)
        checked = self.command is not None
        while True:
            try:
                if not checked:
                    if not await c.redis.exists(c.keys.flag(self.id), key):
                        raise JobNotFoundError(f"no such job: {self.id}")
                    checked = True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {self.id}: no result within {timeout:g}s")
                chunk = max(0.01, min(left, WAIT_CHUNK))
                raw = await c.redis.blmove(key, key, chunk, "RIGHT", "RIGHT")  # type: ignore[arg-type]
                if raw is not None:
                    return Result.from_json(raw)
            except _TRANSIENT:
                await c._reconnected(deadline)
                if self.command is not None:
                    known = await c._do(
                        lambda r: r.exists(c.keys.flag(self.id), c.keys.result(self.id)))
                    if not known:
                        await c._push(self.command)

    async def stream(self, callback: StreamCallback | None = None,
                     timeout: float | None = None) -> None:
        """Call ``callback(level, message, flags)`` per output record until the job ends."""
        c = self.client
        cb = callback or default_callback
        deadline = time.monotonic() + (c.timeout if timeout is None else timeout)
        log_key = c.keys.log(self.id)
        last = "0-0"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id}: output did not end within the timeout")
            try:
                resp: Any = await c.redis.xread({log_key: last}, count=1000,
                                           block=int(max(10, min(left, 2.0) * 1000)))
            except _TRANSIENT:
                await c._reconnected(deadline)
                continue
            if not resp:
                if await c.redis.exists(c.keys.result(self.id)) and not await c.redis.exists(
                    log_key
                ):
                    return
                continue
            for _key, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    rec = LogRecord.from_json(fields[b"record"])
                    if rec.eof:
                        return
                    cb(rec.level, rec.message, rec.flags)


class AsyncClient(ClientBase):
    """Awaitable twin of ``Client`` (same arguments, same managers)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        password: str | None = None,
        unix_socket_path: str | None = None,
        ssl: bool = False,
        *,
        username: str | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = "",
        queue: str = "default",
        retries: int = 20,
    ):
        self.timeout = timeout
        self.retries = retries
        self._init_common(prefix, queue)
        kw = self._connection_kwargs(host, port, password, username, unix_socket_path, ssl,
                                     ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_verify, 5.0)
        if "unix_socket_path" in kw:
            kw["path"] = kw.pop("unix_socket_path")
            pool = aioredis.ConnectionPool(connection_class=aioredis.UnixDomainSocketConnection,
                                           **kw)
            self.redis = aioredis.Redis(connection_pool=pool)
        else:
            self.redis = aioredis.Redis(**kw)

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _reconnected(self, deadline: float | None = None) -> None:
        delay = 0.05
        for _ in range(self.retries * 4):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("redis unreachable until the deadline")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                await self.redis.ping()
                return
            except _TRANSIENT:
                continue
        raise ConnectionError("redis unreachable")

    async def _do(self, fn: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        for attempt in range(self.retries):
            try:
                return await fn(self.redis)
            except _TRANSIENT:
                if attempt == self.retries - 1:
                    raise
                await self._reconnected()
        return None

    async def _push(self, cmd: Command) -> None:
        data = cmd.to_json()
        await self._do(lambda r: r.rpush(self.queue_key, data))

    async def raw(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        queue: str | None = None,
        max_time: int | None = None,
        stream: bool = False,
        tags: Sequence[str] | None = None,
        id: str | None = None,
        recurring_period: int | None = None,
        max_restart: int | None = None,
    ) -> AsyncResponse:
        cmd = build(command, arguments, queue=queue, max_time=max_time, max_restart=max_restart,
                    recurring_period=recurring_period, stream=stream, tags=tags, id=id)
        await self._push(cmd)
        return AsyncResponse(self, cmd.id, cmd)

    def response_for(self, id: str) -> AsyncResponse:
        return AsyncResponse(self, id)

    async def sync(self, command: str, arguments: dict[str, Any] | None = None,
                   timeout: float | None = None, **kw: Any) -> Result:
        return check(await (await self.raw(command, arguments, **kw)).get(timeout))

    async def json(self, command: str, arguments: dict[str, Any] | None = None,
                   timeout: float | None = None, **kw: Any) -> Any:
        return decode_json(await (await self.raw(command, arguments, **kw)).get(timeout))

    async def ping(self) -> str:
        return str(await self.json("core.ping"))

    async def system(self, cmdline: str | Sequence[str], dir: str = "", stdin: str = "",
                     env: dict[str, str] | None = None, **kw: Any) -> AsyncResponse:
        return await self.raw("core.system", system_args(cmdline, dir, stdin, env), **kw)

    async def bash(self, script: str, stdin: str = "", **kw: Any) -> AsyncResponse:
        return await self.raw("bash", {"script": script, "stdin": stdin}, **kw)

    async def subscribe(self, job_id: str, id: str | None = None) -> AsyncResponse:
        return await self.raw("core.subscribe", {"id": job_id}, id=id, stream=True)

    async def commands(self) -> Any:
        return await self.json("core.commands")

    async def upload(self, remote: str, data: bytes, mode: str = "w") -> int:
        fd = await self.json("filesystem.open", {"file": remote, "mode": mode})
        try:
            for off in range(0, len(data), 512 * 1024):
                block = base64.b64encode(data[off : off + 512 * 1024]).decode()
                await self.json("filesystem.write", {"fd": fd, "block": block})
        finally:
            await self.json("filesystem.close", {"fd": fd})
        return len(data)

    async def download(self, remote: str) -> bytes:
        fd = await self.json("filesystem.open", {"file": remote, "mode": "r"})
        parts = []
        try:
            while True:
                block = base64.b64decode(await self.json("filesystem.read", {"fd": fd}))
                if not block:
                    break
                parts.append(block)
        finally:
            await self.json("filesystem.close", {"fd": fd})
        return b"".join(parts)
