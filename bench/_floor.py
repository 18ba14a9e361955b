"""Raw workers for the benchmarks' floors: the protocol alone, and with core0's promises.

A worker is one plain blocking loop (redis-py, no event loop, no registry, no schema) serving
``core.ping`` and ``core.system`` (it always runs ``/bin/true``) from ``core:default``:

* ``plain``: BLMOVE → ``json.loads`` → RPUSH + EXPIRE + LREM of the processing entry, pipelined;
  a system command is ``posix_spawn`` + ``waitpid``. The protocol's floor: no duplicate check,
  no flag, output to nowhere, nothing survives a crash.
* ``guarded``: the same loop keeping what core0 promises, with core0's own Lua scripts
  (core0/bus/store.py): the pickup flag set (its reply awaited; the round trip overlaps making
  the job's files, as core0's overlaps building its spec) before a process starts, so an id
  never runs twice; the result written by the publish script (exactly one result per id,
  the flag kept for 0-core's clients, TTLs); for a process, a job log written at ``spawning``,
  ``running`` and ``exited`` (when ``durable``, synced to the disk at most once a second, as
  core0 does on a disk state dir with ``appendfsync everysec``: core0/jobs/logsync.py), the
  exit status peeked before the reap, and stdout/stderr in files of their own that are read back
  for the result. Its redis-server keeps an AOF (``appendfsync everysec``, core0's default).

The difference between the two is what the promises cost on this machine whoever keeps them;
between ``guarded`` and core0, what core0's own machinery costs (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from _common import ROOT, start_redis, stop

sys.path.insert(0, str(ROOT))
from core0.bus.store import _PICKUP, _PUBLISH

QUEUE = "core:default"
PROCESSING = QUEUE + ":processing"


def worker(sock: str, guarded: bool, jobs: str = "", durable: bool = False) -> None:
    """Serve commands forever (run it in a process of its own; ``jobs``: a directory for the
    guarded worker's job files)."""
    r = redis.Redis(unix_socket_path=sock, single_connection_client=True)
    conn = r.connection
    assert conn is not None
    pickup_sha = r.script_load(_PICKUP)
    publish = r.register_script(_PUBLISH)
    env = dict(os.environ)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    new = os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    synced = 0.0  # when a job log was last synced (durable)

    def sync(fd: int) -> None:
        nonlocal synced
        if durable and time.monotonic() - synced >= 1.0:
            os.fsync(fd)
            synced = time.monotonic()

    while True:
        raw: bytes = r.blmove(QUEUE, PROCESSING, 0, "LEFT", "RIGHT")  # type: ignore[assignment]
        cmd = json.loads(raw)
        jid = cmd["id"]
        flag, key = f"result:{jid}:flag", f"result:{jid}"
        data = '"PONG"'
        mode = "new"
        if cmd["command"] == "core.system":
            if not guarded:
                os.waitpid(os.posix_spawn("/bin/true", ["true"], env), 0)
                data = ""
            else:
                mode = "owned"
                # the pickup's round trip overlaps the job files, as in core0 (whose flag is
                # in before its spec is built): sent, files made, then its reply read
                conn.send_command("EVALSHA", pickup_sha, 2, flag, PROCESSING, raw)
                base = str(Path(jobs) / jid)
                log = os.open(base + ".log", os.O_WRONLY | os.O_APPEND | new, 0o600)
                out = os.open(base + ".out", os.O_RDWR | new, 0o600)
                err = os.open(base + ".err", os.O_RDWR | new, 0o600)
                os.write(log, (json.dumps({"job": cmd, "state": "spawning"}) + "\n").encode())
                if conn.read_response() != 1:  # a duplicate: dropped by the script
                    for ext in (".log", ".out", ".err"):
                        os.unlink(base + ext)
                    for fd in (log, out, err):
                        os.close(fd)
                    continue
                sync(log)
                pid = os.posix_spawn("/bin/true", ["true"], env, setsid=True, file_actions=[
                    (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2)])
                os.write(log, f'{{"state":"running","pid":{pid}}}\n'.encode())
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                assert info is not None
                os.write(log, f'{{"state":"exited","status":{info.si_status}}}\n'.encode())
                sync(log)
                os.waitpid(pid, 0)
                data = os.pread(out, 1 << 20, 0).decode(errors="replace")
                os.pread(err, 1 << 20, 0)
                for fd in (log, out, err):
                    os.close(fd)
        res = json.dumps({"id": jid, "command": cmd["command"], "data": data, "level": 20,
                          "state": "SUCCESS", "code": 0})
        if guarded:
            publish(keys=[flag, key, PROCESSING], args=[res, 300, raw, mode])
            if cmd["command"] == "core.system":
                for ext in (".log", ".out", ".err"):
                    os.unlink(base + ext)
        else:
            pipe = r.pipeline(transaction=False)
            pipe.rpush(key, res)
            pipe.expire(key, 300)
            pipe.lrem(PROCESSING, 1, raw)  # type: ignore[arg-type]
            pipe.execute()


@dataclass
class Floor:
    """A started worker: its redis-server's TCP port and unix socket, and both pids."""

    port: int
    sock: str
    server_pid: int
    worker_pid: int


@contextlib.contextmanager
def floors(tmp: Path, durable: bool = False) -> Iterator[dict[str, Floor]]:
    """The plain and the guarded worker, each in a process of its own on a redis-server of its
    own with its files under ``tmp`` (the guarded one's with an AOF): {"plain"/"guarded": …};
    everything is stopped at the end."""
    ctx = mp.get_context("spawn")
    started: list[tuple[subprocess.Popen[bytes], Any]] = []
    try:
        out = {}
        for name in ("plain", "guarded"):
            d = tmp / f"floor-{name}"
            (d / "jobs").mkdir(parents=True)
            srv, port, sock = start_redis(d, aof=name == "guarded", name=name)
            w = ctx.Process(target=worker, args=(sock, name == "guarded", str(d / "jobs"),
                                                 durable), daemon=True)
            started.append((srv, w))
            w.start()
            out[name] = Floor(port, sock, srv.pid, w.pid or 0)
        yield out
    finally:
        for server, proc in started:
            proc.terminate()
            proc.join(10)
            stop(server)
