"""The synchronous client: the shared API (``_api``) driven with blocking sockets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from core0_client._api import (
    Arg,
    Blocking,
    Call,
    ClientAPI,
    Gen,
    ResponseAPI,
    Sleep,
    StreamCallback,
    abandon,
    default_callback,
)
from core0_client.transport import Pool

__all__ = ["Client", "Response", "StreamCallback", "default_callback"]


class Response(ResponseAPI):
    """A handle on a job: ``get()`` its result, ``stream()`` its output, ``exists``,
    ``running``."""


class Client(ClientAPI):
    """A node's command bus (blocking). See ``ClientAPI`` for the arguments; safe to share
    between threads (one connection per concurrent call)."""

    _response_class = Response
    pool: Pool

    def _open_pool(self, max_bulk: int, connect_timeout: float) -> None:
        self.pool = Pool(self.endpoint, max_bulk, connect_timeout)

    def _connected_once(self) -> bool:
        return self.pool.connected_once

    def _execute(self, cmds: Sequence[Sequence[Arg]], deadline: float) -> list[Any]:
        """One round trip (a cluster client routes it to the slots' owners)."""
        return self.pool.execute(cmds, deadline)

    def _drive(self, gen: Gen) -> Any:
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
                    value = self._execute(op.cmds, op.deadline)
                elif isinstance(op, Sleep):
                    time.sleep(op.seconds)
                elif isinstance(op, Blocking):
                    value = op.fn(*op.args)
                else:  # pragma: no cover - the generators yield nothing else
                    raise TypeError(f"unknown operation {op!r}")
            except Exception as e:  # handed to the generator, which may handle it
                error = e
            except BaseException:  # cancelled, interrupted: the call is abandoned
                abandon(gen)
                raise

    def close(self) -> None:
        """Close the connections."""
        self.pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
