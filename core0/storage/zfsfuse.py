"""The zfs-fuse daemon: is it answering, and start it when it is not.

zfs-fuse is ZFS in user space: the ``zpool``/``zfs`` tools talk to a daemon over the unix
socket ``/var/run/zfs/zfs_socket`` (one daemon per host). A ZFS command on a node without
``/dev/zfs`` calls :func:`ensure` first: when nothing answers on the socket, core0 starts
``zfs-fuse --pidfile <state_dir>/zfs-fuse.pid --no-kstat-mount`` (the daemon forks and keeps
running; as our child subreaper's orphan it is reaped by core0), after removing a stale
pidfile (with one, zfs-fuse exits silently), and waits until the socket answers (503 if it
does not within 10 s). A daemon started by someone else is used as it is and never stopped.

**Supervision.** From the first ZFS command on, a watcher checks every second whether the
daemon still answers. When it does not and fuse.zfs mounts are left (stale: "Transport
endpoint is not connected"; it crashed, since a clean exit unmounts everything), core0
detaches the stale mounts, starts the daemon again, imports again the pools core0 created or
imported that the daemon did not bring back by itself (they are kept, with the directories of
their vdevs, in ``<state_dir>/zfs-pools.json``), mounts every dataset (``zfs mount -a``) and
gives back nosuid,nodev to the mounts of datasets with ``setuid=off``/``devices=off``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from core0.context import Context
from core0.errors import PreconditionFailed, ToolError, Unavailable
from core0.proc import process

if TYPE_CHECKING:
    from core0.config import Config

log = logging.getLogger(__name__)
#: seconds between two checks of the daemon
WATCH_INTERVAL = 1.0

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
    """Make sure a zfs-fuse daemon answers (start one if needed), and watch it."""
    global _lock
    supervise(ctx.config)
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


# ------------------------------------------------------------------ pools to bring back


def _pools_file(cfg: Config) -> Path:
    return cfg.state_dir / "zfs-pools.json"


def known_pools(cfg: Config) -> dict[str, list[str]]:
    """Pools core0 created or imported: name → directories of their vdevs."""
    try:
        data = json.loads(_pools_file(cfg).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [str(d) for d in v] for k, v in data.items() if isinstance(v, list)}


def _save_pools(cfg: Config, pools: dict[str, list[str]]) -> None:
    path = _pools_file(cfg)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(pools))
        os.replace(tmp, path)


def remember_pool(cfg: Config, name: str, vdevs: Sequence[str] = (),
                  dirs: Sequence[str] = ()) -> None:
    """Record a pool core0 created (its vdev paths) or imported (the ``-d`` dirs)."""
    pools = known_pools(cfg)
    found = {os.path.dirname(v) for v in vdevs if v.startswith("/")} | set(dirs)
    pools[name] = sorted(found | set(pools.get(name, [])))[:16]
    _save_pools(cfg, pools)


def forget_pool(cfg: Config, name: str) -> None:
    pools = known_pools(cfg)
    if pools.pop(name, None) is not None:
        _save_pools(cfg, pools)


def restore_pool(cfg: Config, name: str, dirs: list[str] | None) -> None:
    """Put back the record of pool ``name`` as :func:`known_pools` gave it (None: none)."""
    pools = known_pools(cfg)
    if pools.get(name) == dirs:
        return
    if dirs is None:
        pools.pop(name, None)
    else:
        pools[name] = dirs
    _save_pools(cfg, pools)


# ------------------------------------------------------------------ supervision


class _Runner:
    """What the watcher has instead of a job's Context: the config, tools, log lines."""

    def __init__(self, cfg: Config):
        self.config = cfg

    def emit(self, level: int, text: str) -> None:
        log.warning("zfs-fuse: %s", text)

    async def run(self, argv: Sequence[str], *, stdin: bytes | int | None = None,
                  env: Mapping[str, str] | None = None, cwd: str | None = None,
                  timeout: float | None = None, check: bool = True) -> process.RunResult:
        res = await process.run(argv, stdin=stdin, env=env, cwd=cwd, timeout=timeout)
        if check and res.status != 0:
            raise ToolError(list(res.argv), res.status, res.stderr, res.stdout)
        return res

    async def to_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)


_watcher: asyncio.Task[None] | None = None
restarts = 0


def supervise(cfg: Config) -> None:
    """Start the watcher of this process (once)."""
    global _watcher
    if _watcher is None or _watcher.done():
        _watcher = asyncio.get_running_loop().create_task(_watch(cfg))


def stale_mounts() -> list[str]:
    """Mount points of fuse.zfs mounts (deepest first). Called when no daemon answers: they
    are all stale then (one daemon serves the host, and a clean exit unmounts them all)."""
    from core0.storage import blockdev

    out = [m.mountpoint for m in blockdev.mounts() if m.fstype == "fuse.zfs"]
    return sorted(out, key=len, reverse=True)


async def _watch(cfg: Config) -> None:
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        try:
            if running() or not await asyncio.to_thread(stale_mounts):
                continue
            await recover(cfg)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # keep watching; the next round tries again
            log.warning("zfs-fuse: recovery failed: %s", e)


async def recover(cfg: Config) -> list[str]:
    """The daemon died leaving stale mounts: detach them, restart it, import the known pools
    again, mount everything, harden the mounts → the pools brought back."""
    from core0.storage import mountfd

    global restarts
    runner = _Runner(cfg)
    ctx = cast(Context, runner)
    stale = await asyncio.to_thread(stale_mounts)
    log.warning("zfs-fuse died: detaching %d stale mounts and restarting it", len(stale))
    for mp in stale:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(mountfd.detach_path, mp)
    await ensure(ctx)
    restarts += 1
    res = await runner.run(["zpool", "list", "-H", "-o", "name"], check=False, timeout=60)
    present = set(res.stdout.split())
    back = []
    for name, dirs in known_pools(cfg).items():
        if name in present:
            continue
        argv = ["zpool", "import", "-o", "cachefile=none"]
        for d in dirs or ["/dev"]:
            argv += ["-d", d]
        r = await runner.run([*argv, "--", name], check=False, timeout=120)
        if r.status == 0:
            back.append(name)
        else:
            log.warning("zfs-fuse: could not import %s again: %s", name, r.stderr.strip())
    await runner.run(["zfs", "mount", "-a"], check=False, timeout=120)
    await harden_all(ctx)
    return back


async def harden_all(ctx: Context, names: Sequence[str] = ()) -> None:
    """nosuid/nodev on the mounts of every dataset (or of ``names`` and what is under them)
    whose setuid/devices property is off."""
    from core0.storage import mountfd

    res = await ctx.run(["zfs", "list", "-H", "-o", "name,setuid,devices,mountpoint", "-t",
                         "filesystem", *(["-r", "--", *names] if names else [])],
                        check=False, timeout=60)
    want: dict[str, int] = {}
    for line in res.stdout.splitlines():
        p = line.split("\t")
        if len(p) == 4 and p[3].startswith("/"):
            flags = (mountfd.MS_NOSUID if p[1] == "off" else 0) | (
                mountfd.MS_NODEV if p[2] == "off" else 0)
            if flags:
                want[p[0]] = flags
    if not want:
        return
    from core0.storage import blockdev

    for m in blockdev.mounts():
        if m.fstype in ("zfs", "fuse.zfs") and m.source in want:
            await ctx.to_thread(_harden_path, m.mountpoint, want[m.source])


def _harden_path(mp: str, flags: int) -> None:
    from core0.storage import mountfd

    try:
        fd = os.open(mp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        mountfd.remount_bind_fd(fd, flags)
    except OSError as e:
        log.warning("zfs-fuse: could not set nosuid/nodev on %s: %s", mp, e)
    finally:
        os.close(fd)
