"""The cost of a process job (issue 11): ``core.system /bin/true`` against a bare spawn.

One run prints, as medians over N round trips (one command in flight unless said), each
sequential figure measured in several rounds that take the bare spawn, the ping and the job in
turn (this machine drifts by tens of percent within minutes; a ratio is taken within a round,
then the median of the rounds is printed with their spread):

* bare ``os.posix_spawn("/bin/true")`` + ``waitpid`` in this Python process (the floor);
  and the same after 1 ms of CPU work before each spawn (untimed): a parent that was busy
  before it spawns, as any server is, gets its child placed and woken differently by the
  scheduler (docs/performance.md, "Seventh pass"); printed beside the target, not instead;
* ``core.ping`` round trip (the bus, no process);
* ``core.system /bin/true`` round trip, sequential, and its overhead over a ping, as a multiple
  of the bare spawn (target ≤ 1.5×);
* ``core.system /bin/true`` with 8 in flight (commands per second; target ≥ 1,000/s);
* ``bash -c true``;
* the same sequential figure with 500 MiB of ballast in the dispatcher (fork cost must not grow
  with the dispatcher's memory: core0 spawns with vfork);
* the same overhead for two raw workers in the same rounds (bench/_floor.py): one that keeps
  no promise (the protocol's floor) and one that keeps core0's (pickup flag before the spawn,
  job log, output files, the publish script, an AOF): the difference between them is what the
  promises cost on this machine, whoever keeps them.

The state dir is a tmpfs (``/dev/shm``), as on a node; ``--disk`` puts it on disk instead.
Everything it starts is stopped and its directory removed.

``--cpu`` measures what wall-clock figures cannot show on a busy machine: the dispatcher's own
CPU time (user + system, from /proc) per ``core.ping`` and per ``core.system /bin/true`` over
N sequential commands (default 1,000).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis
from _common import ROOT, event_loop, halt_polling, idle_setting, tmpdir
from _floor import floors

sys.path.insert(0, str(ROOT / "tests"))


def bare_spawn(n: int, busy: float = 0.0) -> float:
    """Median ms of posix_spawn + waitpid of /bin/true (``busy``: ms of CPU work, untimed,
    before each spawn, as a server has done before it spawns: see docs/performance.md,
    "Seventh pass")."""
    times = []
    for _ in range(n):
        if busy:
            end = time.perf_counter() + busy / 1000
            while time.perf_counter() < end:
                pass
        t = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _rmdir_empty(path: Path) -> None:
    """Remove the bench's directory under build/ (and build/ itself) if nothing else is there."""
    for d in (path, path.parent):
        try:
            d.rmdir()
        except OSError:
            return


def _cmd(command: str, args: dict) -> tuple[str, str]:  # type: ignore[type-arg]
    jid = uuid.uuid4().hex
    return jid, json.dumps({"id": jid, "command": command, "arguments": args})


def round_trips(r: redis.Redis, command: str, args: dict, n: int) -> float:  # type: ignore[type-arg]
    """Median ms of push → result, one command in flight."""
    times = []
    for _ in range(n):
        jid, raw = _cmd(command, args)
        t = time.perf_counter()
        r.rpush("core:default", raw)
        res = r.brpoplpush(f"result:{jid}", f"result:{jid}", 10)
        times.append(time.perf_counter() - t)
        assert res is not None and json.loads(res)["state"] == "SUCCESS", res
    return statistics.median(times) * 1000


def in_flight(r: redis.Redis, command: str, args: dict, n: int, depth: int = 8) -> float:  # type: ignore[type-arg]
    """Commands per second with ``depth`` in flight."""
    pending: list[str] = []
    done = 0
    t = time.perf_counter()
    sent = 0
    while done < n:
        while len(pending) < depth and sent < n:
            jid, raw = _cmd(command, args)
            r.rpush("core:default", raw)
            pending.append(jid)
            sent += 1
        jid = pending.pop(0)
        res = r.brpoplpush(f"result:{jid}", f"result:{jid}", 10)
        assert res is not None, jid
        done += 1
    return n / (time.perf_counter() - t)


def cpu_per_job(r: redis.Redis, pid: int, command: str, args: dict, n: int  # type: ignore[type-arg]
                ) -> tuple[float, float]:
    """(dispatcher CPU ms, wall ms) per command, ``n`` sequential commands."""
    import psutil

    p = psutil.Process(pid)
    c0, t0 = p.cpu_times(), time.perf_counter()
    for _ in range(n):
        jid, raw = _cmd(command, args)
        r.rpush("core:default", raw)
        assert r.brpoplpush(f"result:{jid}", f"result:{jid}", 10) is not None, jid
    c1, t1 = p.cpu_times(), time.perf_counter()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return cpu * 1000 / n, (t1 - t0) * 1000 / n


def cpu_mode(work: Path, n: int) -> None:
    from conftest import start_node

    node = start_node(work / "state")
    try:
        r = node.redis()
        round_trips(r, "core.system", {"name": "true"}, 50)  # warm up
        pid = node.dispatcher_pid()
        ping = cpu_per_job(r, pid, "core.ping", {}, n)
        system = cpu_per_job(r, pid, "core.system", {"name": "true"}, n)
    finally:
        node.stop()
    print(f"dispatcher CPU per command, {n} sequential; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'command':>12} {'cpu ms':>8} {'wall ms':>8}")
    for name, (cpu, wall) in (("core.ping", ping), ("core.system", system)):
        print(f"{name:>12} {cpu:8.3f} {wall:8.3f}")
    print(f"process job over ping: {system[0] - ping[0]:.3f} ms of dispatcher CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=300, help="round trips per figure and round")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of (bare spawn, ping, system) per node; the ratio is the "
                         "median of the rounds' ratios")
    ap.add_argument("--disk", action="store_true", help="state dir on disk instead of tmpfs")
    ap.add_argument("--cpu", action="store_true",
                    help="the dispatcher's CPU time per command instead (n defaults to 1000)")
    ap.add_argument("--halt-poll-ns", type=int, default=None,
                    help="run with the KVM guest's halt polling set to this (the kernel's "
                         "default is 200000; the machine's own setting is put back after)")
    opts = ap.parse_args()
    with halt_polling(opts.halt_poll_ns):
        run(opts)


def run(opts: argparse.Namespace) -> None:
    """The rounds and the report (main's options in ``opts``)."""
    idle = idle_setting()
    from conftest import start_node

    base = Path(tmp := (os.path.join(ROOT, "build", "bench-spawn") if opts.disk else ""))
    if opts.disk:
        base.mkdir(parents=True, exist_ok=True)
        work = Path(os.path.join(tmp, uuid.uuid4().hex))
        work.mkdir()
    else:
        work = tmpdir("bench-spawn-")
    if opts.cpu:
        try:
            cpu_mode(work, opts.n if opts.n != 300 else 1000)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if opts.disk:
                _rmdir_empty(base)
        return
    rows = []
    bares: list[float] = []
    busies: list[float] = []
    floor_rounds: dict[str, list[float]] = {"plain": [], "guarded": []}
    try:
        with floors(work, opts.disk) as started:
            floor = {name: redis.Redis(port=f.port) for name, f in started.items()}
            for c in floor.values():
                round_trips(c, "core.system", {"name": "true"}, 100)  # warm up
            for _ in range(opts.rounds):
                bare = bare_spawn(opts.n)
                for name, c in floor.items():
                    ping = round_trips(c, "core.ping", {}, opts.n)
                    system = round_trips(c, "core.system", {"name": "true"}, opts.n)
                    floor_rounds[name].append((system - ping) / bare)
        for ballast in (0, 500):
            env = {"CORE0_TEST_BALLAST_MB": str(ballast)} if ballast else None
            node = start_node(work / f"state{ballast}", env=env)
            try:
                r = node.redis()
                round_trips(r, "core.system", {"name": "true"}, 100)  # warm up
                rounds = []
                for _ in range(opts.rounds):  # the machine drifts: pair each figure's parts
                    bare = bare_spawn(opts.n)
                    ping = round_trips(r, "core.ping", {}, opts.n)
                    system = round_trips(r, "core.system", {"name": "true"}, opts.n)
                    busy = bare_spawn(opts.n, busy=1.0)
                    rounds.append((bare, ping, system, (system - ping) / bare, busy,
                                   (system - ping) / busy))
                bares += [x[0] for x in rounds]
                busies += [x[4] for x in rounds]
                rate8 = in_flight(r, "core.system", {"name": "true"}, opts.n * 2)
                bash = round_trips(r, "core.system", {"name": "bash", "args": ["-c", "true"]},
                                   max(50, opts.n // 3))
                rows.append((ballast, rounds, rate8, bash))
            finally:
                node.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if opts.disk:
            _rmdir_empty(base)
    where = "disk" if opts.disk else "tmpfs"
    print(f"state dir on {where}; {opts.rounds} rounds of {opts.n} each (bare spawn, ping, "
          f"system in turn; medians); bare posix_spawn+wait = {statistics.median(bares):.2f} "
          f"ms; dispatcher loop: {event_loop()}; {idle}")
    print(f"{'ballast':>8} {'ping ms':>8} {'system ms':>10} {'overhead/bare':>14} "
          f"{'(rounds)':>12} {'8 in flight/s':>14} {'bash -c true ms':>16}")
    for ballast, rounds, rate8, bash in rows:
        ping, system, over = (statistics.median(x[i] for x in rounds) for i in (1, 2, 3))
        spread = f"{min(x[3] for x in rounds):.2f}-{max(x[3] for x in rounds):.2f}"
        print(f"{ballast:>6}MB {ping:8.2f} {system:10.2f} {over:13.2f}x {spread:>12} "
              f"{rate8:14.0f} {bash:16.2f}")
    print(f"bare spawn after 1 ms of CPU work in the parent (as a busy server spawns) = "
          f"{statistics.median(busies):.2f} ms; overhead over a ping / that: "
          + ", ".join(f"{ballast}MB {statistics.median(x[5] for x in rounds):.2f}x"
                      for ballast, rounds, _, _ in rows))
    for name, label in (("plain", "raw worker, no promises"),
                        ("guarded", "raw worker keeping core0's promises")):
        fr = floor_rounds[name]
        print(f"{label}: overhead/bare {statistics.median(fr):.2f}x "
              f"({min(fr):.2f}-{max(fr):.2f})")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("targets: overhead/bare <= 1.5x sequential; >= 1000/s with 8 in flight; "
          "flat with ballast")


if __name__ == "__main__":
    main()
