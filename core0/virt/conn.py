"""The libvirt connection: bounded blocking calls, reconnection, lifecycle events.

Every libvirt call blocks (an RPC to libvirtd), so :meth:`Conn.call` runs it in a small thread
pool of its own (never on the event loop). When libvirtd goes away (restart, crash) the call
that notices it drops the connection and retries once on a new one; libvirt's close callback
and keepalive notice it too, and a watchdog task reconnects with backoff, re-registers the
event callbacks and publishes a ``connection`` event (``lost``, then ``reconnected``).

Events: libvirt's own default event loop implementation runs in one dedicated thread; the
lifecycle, device-added and device-removed callbacks hand each event to the asyncio loop with
``call_soon_threadsafe``, where it is fanned out to bounded subscriber queues. libvirtaio
(libvirt's asyncio event implementation) was tried first and not kept: its handle and timer
bookkeeping calls ``loop.add_reader`` directly from whatever thread libvirt calls it on, and
libvirt calls it from the worker threads that run the blocking RPCs, which asyncio does not
allow. The default implementation is libvirt's thread-safe one (the one libvirtd uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from core0.backoff import Backoff
from core0.errors import PreconditionFailed, Unavailable

if TYPE_CHECKING:
    import libvirt

log = logging.getLogger(__name__)
T = TypeVar("T")

#: libvirt lifecycle event names (index = VIR_DOMAIN_EVENT_*)
EVENTS = ["defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown",
          "pmsuspended", "crashed"]
#: detail names per event (index = VIR_DOMAIN_EVENT_<EVENT>_*)
DETAILS: dict[str, list[str]] = {
    "defined": ["added", "updated", "renamed", "from_snapshot"],
    "undefined": ["removed", "renamed"],
    "started": ["booted", "migrated", "restored", "from_snapshot", "wakeup"],
    "suspended": ["paused", "migrated", "ioerror", "watchdog", "restored", "from_snapshot",
                  "api_error", "postcopy", "postcopy_failed"],
    "resumed": ["unpaused", "migrated", "from_snapshot", "postcopy", "postcopy_failed"],
    "stopped": ["shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                "from_snapshot"],
    "shutdown": ["finished", "guest", "host"],
    "pmsuspended": ["memory", "disk"],
    "crashed": ["panicked", "crashloaded"],
}

_event_thread: threading.Thread | None = None
_event_lock = threading.Lock()


def libvirt_module() -> Any:
    """The ``libvirt`` module, or 412 when libvirt-python is not installed."""
    try:
        import libvirt
    except ImportError:
        raise PreconditionFailed("libvirt-python is not installed on this node") from None
    return libvirt


def _start_event_loop() -> None:
    """Register libvirt's default event implementation once and run it in a daemon thread."""
    global _event_thread
    lv = libvirt_module()
    with _event_lock:
        if _event_thread is not None:
            return
        lv.virEventRegisterDefaultImpl()
        lv.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come as exceptions

        def run() -> None:
            while True:
                try:
                    lv.virEventRunDefaultImpl()
                except Exception:  # pragma: no cover - keeps the loop alive
                    log.exception("libvirt event loop")
                    time.sleep(0.1)

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.unregisterCloseCallback()
    with contextlib.suppress(Exception):
        conn.close()


def event_name(event: int, detail: int) -> tuple[str, str]:
    """(event, detail) names of a lifecycle event's numbers."""
    name = EVENTS[event] if 0 <= event < len(EVENTS) else str(event)
    details = DETAILS.get(name, [])
    return name, details[detail] if 0 <= detail < len(details) else str(detail)


class Subscription:
    """A bounded queue of events; the oldest are dropped (and counted) when a reader lags."""

    def __init__(self, conn: Conn, size: int = 1000):
        self.conn = conn
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)
        self.dropped = 0

    def put(self, ev: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(ev)

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()

    def close(self) -> None:
        self.conn.subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Conn:
    """One libvirt connection of the dispatcher (reconnecting), with its event feed."""

    def __init__(self, uri: str, threads: int = 4):
        self.uri = uri
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="libvirt")
        #: calls that last minutes (live migrations), apart: a node drained by migrating all
        #: its VMs at once must still answer kvm.list / kvm.info meanwhile
        self._long = ThreadPoolExecutor(max_workers=8, thread_name_prefix="libvirt-long")
        self._conn: libvirt.virConnect | None = None
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.subscribers: set[Subscription] = set()
        #: internal listeners (cleanup), called on the event loop for every event
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._seq = itertools.count(1)
        self.reconnects = 0
        self.closed = False

    # ------------------------------------------------------------ calls

    async def _run(self, fn: Callable[..., T], *args: Any, long: bool = False) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._long if long else self._pool, fn, *args)

    async def connection(self) -> libvirt.virConnect:
        """The live connection, (re)connecting when needed (503 when libvirtd is down)."""
        conn = self._conn
        if conn is not None:
            return conn
        async with self._lock:
            if self._conn is None:
                self._loop = asyncio.get_running_loop()
                _start_event_loop()
                try:
                    self._conn = await self._run(self._open)
                except Exception as e:
                    raise Unavailable(f"libvirt at {self.uri} is not reachable: {e}") from None
                self._lost.clear()
                if self._watchdog is None or self._watchdog.done():
                    self._watchdog = asyncio.ensure_future(self._watch())
            return self._conn

    async def call(self, fn: Callable[..., T], *args: Any, long: bool = False) -> T:
        """Run ``fn(conn, *args)`` in the pool (``long``: in the pool of calls that last
        minutes); once more on a new connection when the first failed because libvirtd went
        away."""
        lv = libvirt_module()
        conn = await self.connection()
        try:
            return await self._run(fn, conn, *args, long=long)
        except lv.libvirtError as e:
            if not await self._run(self._broken, conn, e):
                raise
        self._drop(conn)
        conn = await self.connection()
        return await self._run(fn, conn, *args, long=long)

    @staticmethod
    def _broken(conn: libvirt.virConnect, e: Exception) -> bool:
        lv = libvirt_module()
        code = e.get_error_code() if isinstance(e, lv.libvirtError) else None
        if code in (lv.VIR_ERR_SYSTEM_ERROR, lv.VIR_ERR_RPC, lv.VIR_ERR_NO_CONNECT,
                    lv.VIR_ERR_INVALID_CONN):
            return True
        try:
            return not conn.isAlive()
        except lv.libvirtError:
            return True

    # ------------------------------------------------------------ connect / lose

    def _open(self) -> libvirt.virConnect:
        lv = libvirt_module()
        conn = lv.open(self.uri)
        try:
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(self._on_close, None)
            conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        self._on_lifecycle, None)
            conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                        self._on_device_removed, None)
            # a hot-plugged nic: its port guard (core0/virt/guards.py)
            conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                                        self._on_device_added, None)
        except lv.libvirtError:
            with contextlib.suppress(lv.libvirtError):
                conn.close()
            raise
        return conn

    def _drop(self, conn: libvirt.virConnect) -> None:
        """Forget a dead connection (closed in the pool); the watchdog reconnects."""
        if self._conn is not conn:
            return
        self._conn = None
        self._lost.set()
        self._publish({"event": "connection", "detail": "lost", "uuid": "", "name": ""})

        self._pool.submit(_close_quietly, conn)

    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        loop = self._loop
        if loop is not None and not self.closed:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drop, conn)

    async def _watch(self) -> None:
        """Reconnect after a loss (1 s, doubling to 10 s), so the event feed resumes even when
        no command comes."""
        while not self.closed:
            await self._lost.wait()
            backoff = Backoff.retrying(1.0, 10.0)
            while not self.closed and self._conn is None:
                await asyncio.sleep(backoff.next())
                try:
                    await self.connection()
                except Unavailable:
                    continue
                self.reconnects += 1
                log.info("libvirt: reconnected to %s", self.uri)
                self._publish({"event": "connection", "detail": "reconnected", "uuid": "",
                               "name": ""})

    async def close(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(lambda: conn.close())
        self._pool.shutdown(wait=False)
        self._long.shutdown(wait=False)

    # ------------------------------------------------------------ events

    def subscribe(self, size: int = 1000) -> Subscription:
        sub = Subscription(self, size)
        self.subscribers.add(sub)
        return sub

    def _publish(self, ev: dict[str, Any]) -> None:
        ev = {**ev, "sequence": next(self._seq), "time": time.time()}
        for fn in list(self.listeners):
            try:
                fn(ev)
            except Exception:
                log.exception("libvirt event listener failed")
        for sub in list(self.subscribers):
            sub.put(ev)

    def _from_thread(self, ev: dict[str, Any]) -> None:
        loop = self._loop
        if loop is not None and not self.closed:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._publish, ev)

    def _on_lifecycle(self, conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                      detail: int, _opaque: object) -> None:
        name, det = event_name(event, detail)
        self._from_thread({"uuid": dom.UUIDString(), "name": dom.name(), "event": name,
                           "detail": det})

    def _on_device_removed(self, conn: libvirt.virConnect, dom: libvirt.virDomain, alias: str,
                           _opaque: object) -> None:
        self._from_thread({"uuid": dom.UUIDString(), "name": dom.name(),
                           "event": "device_removed", "detail": alias})

    def _on_device_added(self, conn: libvirt.virConnect, dom: libvirt.virDomain, alias: str,
                         _opaque: object) -> None:
        self._from_thread({"uuid": dom.UUIDString(), "name": dom.name(),
                           "event": "device_added", "detail": alias})
