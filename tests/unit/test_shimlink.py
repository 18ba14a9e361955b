"""The shim socket's ``services`` op against a real supervisor listening on a real unix socket
(its loop run in a thread): both clients (the boot assessment's blocking one and the
dispatcher's ShimLink) read the counts, and a shim that never answers (an older supervisor)
costs each a bounded wait, not a hang."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

from core0.init.supervise import Service, Supervisor
from core0.proc import shimlink


def ask(path: str) -> list[dict[str, object]]:
    """The ``services`` answer through the dispatcher's client (ShimLink)."""
    async def go() -> list[dict[str, object]]:
        link = shimlink.ShimLink(path)
        assert await link.connect()
        try:
            return await link.services()
        finally:
            await link.close()
    return asyncio.run(go())


def test_services_op_from_both_clients(tmp_path: Path) -> None:
    disp = Service("dispatcher", ["true"], starts=3, exits=2, last_exit=-9)
    redis = Service("redis-server", ["true"], starts=1, pid=4242)
    sup = Supervisor(tmp_path, [redis, disp])
    sup.listen()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sup.step(0.05)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        path = str(tmp_path / "shim.sock")
        want = [{"name": "redis-server", "pid": 4242, "starts": 1, "exits": 0,
                 "last_exit": None, "permanent": False},
                {"name": "dispatcher", "pid": None, "starts": 3, "exits": 2, "last_exit": -9,
                 "permanent": False}]
        assert shimlink.services(path) == want
        assert ask(path) == want
    finally:
        stop.set()
        t.join(5)


def test_a_shim_that_never_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    held: list[socket.socket] = []
    t = threading.Thread(target=lambda: held.extend(srv.accept()[0] for _ in range(2)),
                         daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        assert shimlink.services(path, timeout=0.3) is None
        assert time.monotonic() - t0 < 2
        t0 = time.monotonic()
        assert ask(path) == []
        assert time.monotonic() - t0 < 5
        assert shimlink.services(str(tmp_path / "nothing.sock")) is None
    finally:
        for c in held:
            c.close()
        srv.close()
