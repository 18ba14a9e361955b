"""The private channel between the supervisor (shim) and the dispatcher.

Length-prefixed msgpack frames over a unix socket in the state dir. The dispatcher uses it to
learn the exit status of job processes it adopted after a restart: those are no longer its
children (they were re-parented to the shim, the subreaper above it), so only the shim can reap
them. Messages:

* dispatcher → shim ``{"op": "watch", "pid": P}``
* shim → dispatcher ``{"op": "exit", "pid": P, "status": S}`` (now, if P was reaped already, or
  when it is) or ``{"op": "unknown", "pid": P}`` (P is neither alive under the shim nor recorded).
* dispatcher → shim ``{"op": "find", "rid": R, "comm": C, "since": T}``: which processes
  started at or after boot tick T did the shim reap, or has it running, that no dispatcher
  watched by pid? (a job spawned in the instant before its dispatcher died, whose pid was never
  written down) → ``{"op": "found", "rid": R, "matches": [[pid, status or None while running,
  start_ticks, comm], …]}``.
* the boot assessment (:func:`services`) and the dispatcher's metrics
  (:meth:`ShimLink.services`) → shim ``{"op": "services", "rid": R}`` → ``{"op": "services",
  "rid": R, "services": [{"name", "pid", "starts", "exits", "last_exit", "permanent"}, …]}``:
  how each supervised process fared since the shim started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 20


def pack(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def read_frame(sock: socket.socket, buf: bytearray) -> list[Any]:
    """Parse the complete frames in ``buf`` (consuming them)."""
    out = []
    while len(buf) >= 4:
        (n,) = _LEN.unpack_from(buf)
        if n > MAX_FRAME:
            raise ValueError("frame too large")
        if len(buf) < 4 + n:
            break
        out.append(msgpack.unpackb(bytes(buf[4 : 4 + n]), raw=False))
        del buf[: 4 + n]
    return out


def socket_path(state_dir: Path) -> str:
    """Where the supervisor's socket is for a process it started (``CORE0_SHIM_SOCKET``), or
    under ``state_dir``."""
    return os.environ.get("CORE0_SHIM_SOCKET") or str(state_dir / "shim.sock")


def services(path: str, timeout: float = 2.0) -> list[dict[str, Any]] | None:
    """The supervised services' starts and exits, asked over the shim socket at ``path``
    (blocking, at most ``timeout`` seconds); None when no shim answers there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(pack({"op": "services", "rid": 1}))
            buf = bytearray()
            while True:
                data = sock.recv(65536)
                if not data:
                    return None
                buf += data
                for msg in read_frame(sock, buf):
                    if isinstance(msg, dict) and msg.get("op") == "services":
                        return [s for s in msg.get("services") or [] if isinstance(s, dict)]
    except (OSError, ValueError) as e:
        log.debug("no supervisor at %s: %s", path, e)
        return None


class ShimLink:
    """Dispatcher side: ask the shim for exit statuses of adopted pids, for processes lost
    while being spawned, and for the supervised services' counts (the metrics)."""

    def __init__(self, path: str):
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiters: dict[int, asyncio.Future[int | None]] = {}
        #: requests answered by rid ("find" → "found", "services" → "services")
        self._asks: dict[int, asyncio.Future[list[Any]]] = {}
        self._rid = 0
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> bool:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path)
        except OSError as e:
            log.info("no supervisor link at %s (%s): adopted jobs report no exit status",
                     self.path, e)
            return False
        self._task = asyncio.ensure_future(self._read_loop())
        return True

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def wait_exit(self, pid: int) -> int | None:
        """The raw wait status of ``pid`` once it has exited; None if the shim cannot know."""
        if not self.connected:
            return None
        assert self._writer is not None
        fut = self._waiters.get(pid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiters[pid] = fut
            self._writer.write(pack({"op": "watch", "pid": pid}))
            await self._writer.drain()
        return await asyncio.shield(fut)

    async def find(self, comm: str, since: int) -> list[list[Any]]:
        """Processes started at/after ``since`` that the shim reaped or has running, never
        watched by pid: ``[[pid, status or None, start_ticks, comm], …]`` ([] without a
        shim)."""
        return await self._ask({"op": "find", "comm": comm, "since": since})

    async def services(self) -> list[dict[str, Any]]:
        """How the supervised services fared: ``[{"name", "pid", "starts", "exits",
        "last_exit", "permanent"}, …]`` ([] without a shim)."""
        # bounded: a supervisor that does not know the op (an older one) never answers it
        return [s for s in await self._ask({"op": "services"}, timeout=2.0)
                if isinstance(s, dict)]

    async def _ask(self, msg: dict[str, Any], timeout: float | None = None) -> list[Any]:
        """Send ``msg`` with a request id; its answer's list ([] without a shim, or after
        ``timeout`` seconds)."""
        if not self.connected:
            return []
        assert self._writer is not None
        self._rid += 1
        rid = self._rid
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._asks[rid] = fut
        self._writer.write(pack({**msg, "rid": rid}))
        await self._writer.drain()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self._asks.pop(rid, None)
            return []

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                head = await self._reader.readexactly(4)
                (n,) = _LEN.unpack(head)
                if n > MAX_FRAME:
                    raise ValueError("frame too large")
                msg = msgpack.unpackb(await self._reader.readexactly(n), raw=False)
                if msg.get("op") in ("found", "services"):
                    ff = self._asks.pop(msg.get("rid"), None)
                    if ff is not None and not ff.done():
                        ff.set_result(list(msg.get("matches") or msg.get("services") or []))
                    continue
                pid = msg.get("pid")
                fut = self._waiters.pop(pid, None)
                if fut is None or fut.done():
                    continue
                if msg.get("op") == "exit":
                    fut.set_result(int(msg["status"]))
                else:
                    fut.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
            log.warning("supervisor link closed: %s", e)
        finally:
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_result(None)
            self._waiters.clear()
            for ff in self._asks.values():
                if not ff.done():
                    ff.set_result([])
            self._asks.clear()
            if self._writer is not None:
                self._writer.close()
