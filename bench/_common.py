"""Shared helpers of the benchmarks: start servers, time things, print the table."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(tmp: Path, aof: bool = False,
                name: str = "raw") -> tuple[subprocess.Popen[bytes], int, str]:
    """A plain redis-server with its files in ``tmp`` (``aof``: an AOF with ``appendfsync
    everysec``, core0's default); (process, TCP port, unix socket)."""
    port = free_port()
    sock = str(tmp / f"{name}-redis.sock")
    persist = ["--appendonly", "yes", "--appendfsync", "everysec",
               "--appendfilename", f"{name}.aof", "--appenddirname", f"{name}-aof"
               ] if aof else ["--appendonly", "no"]
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", sock,
         "--save", "", *persist, "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import redis

    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            break
        except redis.RedisError:
            time.sleep(0.02)
    return p, port, sock


def start_core0(tmp: Path):  # type: ignore[no-untyped-def]
    from conftest import start_node

    return start_node(tmp / "state")


def stop(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    p.wait(10)


def rate(n: int, fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def tmpdir(prefix: str) -> Path:
    """A scratch dir on a tmpfs when there is one (a node's /run is a tmpfs)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def table(rows: list[tuple[str, ...]]) -> None:
    """Rows of text cells as left-aligned columns (the first row is the header)."""
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def event_loop() -> str:
    """The event loop the dispatchers started by this bench run on (core0/bus/dispatcher.py)."""
    from core0.bus.dispatcher import loop_factory

    return "asyncio" if loop_factory() is None else "uvloop"


#: the guest's halt polling (drivers/cpuidle/governors/haltpoll.c): how long an idle vCPU of
#: a KVM guest polls for work before it halts; the kernel's default is 200,000 ns
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def idle_setting() -> str:
    """How this machine's CPUs idle, for a bench's header: the cpuidle driver and, on a KVM
    guest with cpuidle-haltpoll, its halt polling (0: an idle vCPU halts at once, and waking
    it is a trip through the hypervisor: docs/performance.md, "Halt polling")."""
    try:
        driver = Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip()
    except OSError:
        return "cpuidle: unknown"
    try:
        poll = int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return f"cpuidle: {driver}"
    return f"cpuidle: {driver}, guest halt polling {poll:,} ns" + (" (off)" if poll == 0 else "")


@contextlib.contextmanager
def halt_polling(ns: int | None) -> Iterator[None]:
    """Run the block with the guest's halt polling set to ``ns`` (None: as it is), and put
    the machine's own setting back after it, whatever happens."""
    if ns is None:
        yield
        return
    try:
        old = HALT_POLL.read_text().strip()
    except OSError as e:
        raise SystemExit(f"--halt-poll-ns: this machine has no {HALT_POLL} ({e.strerror})") \
            from None
    HALT_POLL.write_text(str(ns))
    try:
        yield
    finally:
        HALT_POLL.write_text(old)
