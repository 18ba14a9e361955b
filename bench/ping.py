"""Command round trips through Redis: a minimal raw worker vs core0's core.ping vs rq.

Four settings, each measured in the same run: the state dir on a tmpfs (a node's /run) and on
a disk (``core0 dev``'s default /run/core0-dev is on disk on many machines), each over TCP and
over the unix socket. Per setting, a raw worker and a core0 node whose redis-server keeps its
files in that kind of directory are measured with the same client code, in interleaved rounds
(median kept): the client RPUSHes 0-core-format command JSON and BLPOPs ``result:<id>``.

* raw worker: a separate process doing BLMOVE → json.loads → RPUSH+EXPIRE+LREM (pipelined) —
  the protocol floor, without any of core0's guarantees (no dedupe, no flag, no AOF);
* guarded worker (sequential only): the same loop keeping core0's promises with core0's own
  scripts (exactly one result per id, the flag 0-core's clients read) on a redis-server with
  core0's AOF (bench/_floor.py) — what the promises cost whoever keeps them, so that
  "core0 ÷ guarded" is what core0's own machinery costs;
* core0: ``core0 dev`` (supervisor + embedded redis-server with its AOF, appendfsync as
  configured: everysec by default + dispatcher), command core.ping;
* rq: rq's SimpleWorker (no fork per job: rq's fastest mode), ``enqueue`` + ``latest_result``
  (tmpfs, TCP).

Sequential = one command at a time; pipelined = N commands pushed in one pipeline, then all
results collected. Each figure is the median of the interleaved rounds (a best-of
would favour whichever side got the luckiest CPU placement). Every directory, server and
worker it starts is removed/stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import redis
from _common import ROOT, event_loop, halt_polling, idle_setting, rate, start_core0, stop, table
from _floor import floors

Factory = Callable[[float], redis.Redis]


def _cmd(jid: str) -> str:
    return json.dumps({"id": jid, "command": "core.ping", "arguments": {}})


def sequential(connect: Factory, n: int) -> float:
    r = connect(30)

    def go() -> None:
        for _ in range(n):
            jid = uuid.uuid4().hex
            r.rpush("core:default", _cmd(jid))
            assert r.blpop([f"result:{jid}"], 10) is not None

    go_rate = rate(n, go)
    r.close()
    return go_rate


def pipelined(connect: Factory, n: int, chunk: int = 1000) -> float:
    r = connect(120)
    ids = [uuid.uuid4().hex for _ in range(n)]

    def go() -> None:
        for i in range(0, n, chunk):
            pipe = r.pipeline(transaction=False)
            for jid in ids[i:i + chunk]:
                pipe.rpush("core:default", _cmd(jid))
            pipe.execute()
        for i in range(0, n, chunk):
            pipe = r.pipeline(transaction=False)
            for jid in ids[i:i + chunk]:
                pipe.blpop([f"result:{jid}"], 60)
            assert all(x is not None for x in pipe.execute())

    go_rate = rate(n, go)
    r.close()
    return go_rate


def rq_sequential(port: int, n: int) -> float:
    from rq import Queue

    r = redis.Redis(port=port)
    q = Queue("bench", connection=r)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
    w = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "--url", f"redis://127.0.0.1:{port}",
         "--worker-class", "rq.worker.SimpleWorker", "--quiet", "bench"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sys.path.insert(0, str(ROOT / "bench"))
    from rq_task import ping

    try:
        job = q.enqueue(ping)  # warm up: the worker imports things on its first job
        job.latest_result(timeout=30)

        def go() -> None:
            for _ in range(n):
                job = q.enqueue(ping)
                res = job.latest_result(timeout=10)
                assert res is not None and res.return_value == "PONG"

        return rate(n, go)
    finally:
        stop(w)


def fs_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    real = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def core0_processes(root: int) -> dict[str, int]:
    """The processes of a ``core0 dev`` tree: supervisor, redis-server, dispatcher."""
    out = {"supervisor": root}
    for child in psutil.Process(root).children():
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].startswith("redis-server"):
            out["redis-server"] = child.pid
        elif any("dispatcher" in a for a in cmd):
            out["dispatcher"] = child.pid
    return out


def scratch_dirs() -> dict[str, Path]:
    """A scratch dir on a tmpfs (/dev/shm) and one on a disk (/var/tmp, else the repo's build/)."""
    out = {"tmpfs": Path(tempfile.mkdtemp(prefix="bench-ping-", dir="/dev/shm"))}
    for base in ("/var/tmp", str(ROOT / "build")):
        Path(base).mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix="bench-ping-", dir=base))
        if fs_type(d) not in ("tmpfs", "ramfs"):
            out["disk"] = d
            break
        shutil.rmtree(d)
    return out


def transports(port: int, sock: str) -> dict[str, Factory]:
    """Client factories for one server: {"tcp"/"unix": timeout → client}."""
    def tcp(t: float) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=t)

    def unix(t: float) -> redis.Redis:
        return redis.Redis(unix_socket_path=sock, socket_timeout=t)

    return {"tcp": tcp, "unix": unix}


@contextlib.contextmanager
def setting(tmp: Path) -> Iterator[tuple[dict[str, dict[str, Factory]], int,
                                          dict[str, dict[str, int]]]]:
    """A raw redis + worker, a guarded one (bench/_floor.py) and a core0 node with their files
    in ``tmp``: ({"raw"/"guarded"/"core0": {transport: factory}}, raw TCP port,
    {"raw"/"guarded"/"core0": {process name: pid}})."""
    node = None
    try:
        with floors(tmp) as started:
            node = start_core0(tmp)
            raw, guarded = started["plain"], started["guarded"]
            factories = {"raw": transports(raw.port, raw.sock),
                         "guarded": transports(guarded.port, guarded.sock),
                         "core0": transports(node.port, node.socket)}
            procs = {who: {"redis-server": f.server_pid, "worker": f.worker_pid}
                     for who, f in (("raw", raw), ("guarded", guarded))}
            procs["core0"] = core0_processes(node.pid)
            yield factories, raw.port, procs
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1500, help="sequential round trips per round")
    ap.add_argument("--pipelined", type=int, default=20000)
    ap.add_argument("--rq", type=int, default=500, help="rq round trips (0 = skip rq)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median kept)")
    ap.add_argument("--pin", choices=("none", "one", "split"), default="none",
                    help="CPU placement: none (the scheduler's), one (every process on the "
                         "last CPU: the chain's CPU cost without cross-CPU wakeups), split "
                         "(servers on the last CPU, the client on the first: a client of "
                         "its own, as a remote one)")
    ap.add_argument("--halt-poll-ns", type=int, default=None,
                    help="run with the KVM guest's halt polling set to this (the kernel's "
                         "default is 200000; the machine's own setting is put back after)")
    ns = ap.parse_args()
    with halt_polling(ns.halt_poll_ns):
        run(ns)


def run(ns: argparse.Namespace) -> None:
    """The rounds and the report (main's options in ``ns``)."""
    idle = idle_setting()
    dirs = scratch_dirs()
    runs: dict[tuple[str, str, str, str], list[float]] = {}
    #: CPU seconds of each server/worker process over the rounds, and the commands done
    cpu: dict[tuple[str, str, str, str, str], float] = {}
    done: dict[tuple[str, str, str, str], int] = {}
    rq_rate = 0.0
    try:
        with contextlib.ExitStack() as stack:
            cpus = sorted(os.sched_getaffinity(0))
            if ns.pin != "none":
                os.sched_setaffinity(0, {cpus[-1]})  # inherited by every server started
            settings = {kind: stack.enter_context(setting(d)) for kind, d in dirs.items()}
            if ns.pin == "split":
                os.sched_setaffinity(0, {cpus[0]})
            for workers, _, _ in settings.values():  # warm up everything
                for tr in ("tcp", "unix"):
                    for by_tr in workers.values():
                        sequential(by_tr[tr], 200)
            for _ in range(ns.rounds):
                for kind, (workers, _, procs) in settings.items():
                    for tr in ("tcp", "unix"):
                        for who, by_tr in workers.items():
                            f = by_tr[tr]
                            for mode, fn, n in (("seq", sequential, ns.n),
                                                ("pipe", pipelined, ns.pipelined)):
                                if who == "guarded" and mode == "pipe":
                                    continue
                                before = {p: cpu_seconds(pid) for p, pid in procs[who].items()}
                                runs.setdefault((kind, tr, who, mode), []).append(fn(f, n))
                                for p, pid in procs[who].items():
                                    key = (kind, tr, who, mode, p)
                                    cpu[key] = cpu.get(key, 0.0) + cpu_seconds(pid) - before[p]
                                done[(kind, tr, who, mode)] = done.get((kind, tr, who, mode),
                                                                       0) + n
            if ns.rq:
                rq_rate = rq_sequential(settings["tmpfs"][1], ns.rq)
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    results = {k: statistics.median(v) for k, v in runs.items()}
    # "paired" and the guarded ratios: the median of each round's ratio (the two measured one
    # after the other, so a slow drift of the machine's load cancels out)
    rows: list[tuple[str, ...]] = [
        ("setting (state dir, transport)", "raw worker/s", "core0/s", "core0 ÷ raw", "paired",
         "guarded/s", "guarded ÷ raw", "core0 ÷ guarded")]

    def paired(a: str, b: str, key: tuple[str, str, str]) -> float:
        kind, tr, mode = key
        return statistics.median(x / y for x, y in zip(runs[(kind, tr, a, mode)],
                                                       runs[(kind, tr, b, mode)], strict=True))

    for kind, d in dirs.items():
        for tr in ("tcp", "unix"):
            for mode, label in (("seq", "sequential"), ("pipe", f"{ns.pipelined} pipelined")):
                raw_r = results[(kind, tr, "raw", mode)]
                c_r = results[(kind, tr, "core0", mode)]
                guard = ("", "", "")
                if mode == "seq":
                    g_r = results[(kind, tr, "guarded", mode)]
                    guard = (f"{g_r:.0f}", f"{paired('guarded', 'raw', (kind, tr, mode)):.2f}×",
                             f"{paired('core0', 'guarded', (kind, tr, mode)):.2f}×")
                rows.append((f"{kind} ({fs_type(d.parent)}), {tr}: {label}", f"{raw_r:.0f}",
                             f"{c_r:.0f}", f"{c_r / raw_r:.2f}×",
                             f"{paired('core0', 'raw', (kind, tr, mode)):.2f}×", *guard))
    if rq_rate:
        c_r = results[("tmpfs", "tcp", "core0", "seq")]
        rows.append(("tmpfs, tcp: sequential vs rq (SimpleWorker)", f"{rq_rate:.0f}",
                     f"{c_r:.0f}", f"{c_r / rq_rate:.1f}×", "", "", "", ""))
    print(f"bench/ping.py — median of {ns.rounds} interleaved rounds, {time.strftime('%F')}, "
          f"{os.cpu_count()} CPUs, placement: {ns.pin}, dispatcher loop: {event_loop()}; "
          f"{idle}")
    table(rows)
    # CPU per command: where the work is, free of the scheduler's placement luck (a round
    # trip's rate also depends on which vCPU each process wakes up on)
    print("CPU per command, user+sys µs (sequential | pipelined):")
    for kind in dirs:
        for tr in ("tcp", "unix"):
            parts = []
            for who in ("raw", "guarded", "core0"):
                names = sorted({k[4] for k in cpu if k[:3] == (kind, tr, who)})
                figs = []
                for mode in ("seq", "pipe"):
                    if (kind, tr, who, mode) not in done:
                        continue
                    per = {p: cpu[(kind, tr, who, mode, p)] / done[(kind, tr, who, mode)] * 1e6
                           for p in names}
                    figs.append(" + ".join(f"{p} {v:.0f}" for p, v in per.items() if v >= 0.5)
                                + f" = {sum(per.values()):.0f}")
                parts.append(f"{who}: {' | '.join(figs)}")
            print(f"  {kind} {tr}: " + "; ".join(parts))
    # the spread: on a few vCPUs one round's figure depends on where the scheduler put the
    # client, redis-server and the worker (a wakeup across vCPUs costs more than the work)
    print("rounds' spread (min–max /s): " + "; ".join(
        f"{kind} {tr} {who}: {min(runs[(kind, tr, who, 'seq')]):.0f}–"
        f"{max(runs[(kind, tr, who, 'seq')]):.0f}"
        for kind in dirs for tr in ("tcp", "unix") for who in ("raw", "guarded", "core0")))


if __name__ == "__main__":
    main()
