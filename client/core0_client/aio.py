"""The asyncio client: the same API as ``Client`` (one definition, ``_api``), awaitable."""

from __future__ import annotations

import asyncio
from typing import Any

from core0_client._api import Blocking, Call, ClientAPI, Gen, ResponseAPI, Sleep, abandon
from core0_client.atransport import AsyncPool

__all__ = ["AsyncClient", "AsyncResponse"]


class AsyncResponse(ResponseAPI):
    """Awaitable twin of ``Response``: ``await r.get()``, ``await r.stream()``,
    ``await r.exists``, ``await r.running``."""


class AsyncClient(ClientAPI):
    """Awaitable twin of ``Client`` (same arguments, methods and managers)."""

    _response_class = AsyncResponse
    pool: AsyncPool

    def _open_pool(self, max_bulk: int, connect_timeout: float) -> None:
        self.pool = AsyncPool(self.endpoint, max_bulk, connect_timeout)

    def _connected_once(self) -> bool:
        return self.pool.connected_once

    def _drive(self, gen: Gen) -> Any:
        return self._run(gen)

    async def _run(self, gen: Gen) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                if isinstance(op, Call):
                    value = await self.pool.execute(op.cmds, op.deadline)
                elif isinstance(op, Sleep):
                    await asyncio.sleep(op.seconds)
                elif isinstance(op, Blocking):
                    value = await asyncio.to_thread(op.fn, *op.args)
                else:  # pragma: no cover - the generators yield nothing else
                    raise TypeError(f"unknown operation {op!r}")
            except Exception as e:  # handed to the generator, which may handle it
                error = e
            except BaseException:  # cancelled, interrupted: the call is abandoned
                abandon(gen)
                raise

    async def close(self) -> None:
        """Close the connections."""
        self.pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
