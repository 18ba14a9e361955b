"""The zfs-fuse daemon: is it answering, and start it when it is not.

zfs-fuse is ZFS in user space: the ``zpool``/``zfs`` tools talk to a daemon over the unix
socket ``/var/run/zfs/zfs_socket`` (one daemon per host). A ZFS command on a node without
``/dev/zfs`` calls :func:`ensure` first: when nothing answers on the socket, core0 starts
``zfs-fuse --pidfile <state_dir>/zfs-fuse.pid --no-kstat-mount`` (the daemon forks and keeps
running; as our child subreaper's orphan it is reaped by core0), after removing a stale
pidfile (with one, zfs-fuse exits silently), and waits until the socket answers (503 if it
does not within 10 s). A daemon started by someone else is used as it is and never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from core0.context import Context
from core0.errors import PreconditionFailed, Unavailable

SOCKET = "/var/run/zfs/zfs_socket"
START_TIMEOUT = 10.0


def running(sock_path: str = SOCKET) -> bool:
    """True when a daemon accepts connections on the socket (a leftover file does not)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(sock_path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _pid_alive(pidfile: str) -> bool:
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_lock: asyncio.Lock | None = None


async def ensure(ctx: Context) -> None:
    """Make sure a zfs-fuse daemon answers (start one if needed)."""
    global _lock
    if running():
        return
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if running():
            return
        pidfile = str(ctx.config.state_dir / "zfs-fuse.pid")
        if not _pid_alive(pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pidfile)
        ctx.emit(4, "starting the zfs-fuse daemon")
        res = await ctx.run(["zfs-fuse", "--pidfile", pidfile, "--no-kstat-mount"],
                            check=False, timeout=30)
        if res.status != 0:
            raise PreconditionFailed(f"zfs-fuse did not start: {res.stderr.strip()[-500:]}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if running():
                return
            await asyncio.sleep(0.05)
        raise Unavailable("zfs-fuse started but its socket does not answer")
