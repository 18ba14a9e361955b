"""Fan-out of ``core.ping`` to a fleet of core0 nodes sharing one redis-server.

For N nodes (5 and 20 by default: N ``core0 dev`` dispatchers, each with its own ``{nodeI}:``
prefix, on one shared redis-server, over its unix socket):

* slowest single: each node's own ``core.ping`` round trip (median of ``--rounds``), the
  slowest node's;
* fan-out: ``Fleet.run("core.ping")`` to all N (one pipelined push, pipelined result reads;
  the registry read included), median of ``--rounds``;
* sequential: a loop of ``Client.ping()`` over the N nodes, median of ``--rounds``.

Prints the wall times and the ratios fan-out / slowest single (target ≤ 1.5×) and
sequential / fan-out, all from the same run; and the CPU a fan-out costs: user + system time of
every process taking part (redis-server, every node's supervisor and dispatcher, this client),
idle background (heartbeats, blocked pops) subtracted, per fan-out, and that CPU divided by the
machine's cores — the least wall time a fan-out can take here whatever its parallelism, to
compare with the slowest single round trip. Every server and node it starts is stopped at the
end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

from _common import ROOT, start_redis, stop, tmpdir

sys.path.insert(0, str(ROOT / "client"))


def _median(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class CPU:
    """User + system CPU seconds of a set of processes (and their children)."""

    def __init__(self, pids: list[int]):
        import psutil

        self.procs = []
        for pid in pids:
            p = psutil.Process(pid)
            self.procs += [p, *p.children(recursive=True)]

    def seconds(self) -> float:
        import psutil

        total = 0.0
        for p in self.procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total


def _cpu_per_call(cpu: CPU, fn, idle_rate: float, span: float = 3.0) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds (all processes) per call of ``fn``, called for ``span`` seconds (CPU times
    tick in 10 ms steps per process: a long span keeps that error small), idle background
    subtracted."""
    calls = 0
    c0, t0 = cpu.seconds(), time.perf_counter()
    while time.perf_counter() - t0 < span:
        fn()
        calls += 1
    c1, t1 = cpu.seconds(), time.perf_counter()
    return max(0.0, (c1 - c0) - idle_rate * (t1 - t0)) / calls


def measure(n: int, rounds: int) -> tuple[str, ...]:
    from conftest import start_node
    from core0_client import Client
    from core0_client.fleet import Fleet

    tmp = tmpdir("core0-bench-fleet-")
    proc, port, sock = start_redis(tmp)
    nodes = []
    try:
        for i in range(n):
            nid = f"node{i}"
            prefix = f"{{{nid}}}:"
            env = {"CORE0_NODE_ID": nid, "CORE0_NODE_HEARTBEAT": "5"}
            nodes.append(start_node(tmp / nid, extra=["--redis-url", f"unix://{sock}",
                                                      "--prefix", prefix],
                                    env=env, port=port, prefix=prefix))
        clients = [Client(unix_socket_path=sock, prefix=f"{{node{i}}}:", timeout=30)
                   for i in range(n)]
        with Fleet(unix_socket_path=sock, timeout=30) as fleet:
            deadline = time.monotonic() + 30
            while len(fleet.nodes()) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            for c in clients:  # warm every connection and node
                c.ping()
            fleet.run("core.ping")
            single = max(_median(c.ping, rounds) for c in clients)

            def fan() -> None:
                res = fleet.run("core.ping", timeout=30)
                if len(res.succeeded) != n:
                    raise RuntimeError(f"fan-out failed: {res.failed}")

            fan_t = _median(fan, rounds)
            seq_t = _median(lambda: [c.ping() for c in clients], rounds)
            # the CPU side: every process of the fleet, this one included
            cpu = CPU([proc.pid, os.getpid(), *[nd.pid for nd in nodes]])
            c0 = cpu.seconds()
            time.sleep(3)
            idle_rate = (cpu.seconds() - c0) / 3
            fan_cpu = _cpu_per_call(cpu, fan, idle_rate)
            single_cpu = _cpu_per_call(cpu, clients[0].ping, idle_rate)
        for c in clients:
            c.close()
        cores = os.cpu_count() or 1
        floor = fan_cpu / cores
        return (f"{n} nodes", f"{single * 1000:.2f} ms",
                f"{fan_t * 1000:.2f} ms ({fan_t / single:.2f}× slowest single)",
                f"{seq_t * 1000:.2f} ms ({seq_t / fan_t:.2f}× fan-out)",
                f"{single_cpu * 1000:.2f} ms",
                f"{fan_cpu * 1000:.2f} ms",
                f"{floor * 1000:.2f} ms ({floor / single:.2f}× slowest single)")
    finally:
        for nd in nodes:
            nd.stop()
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", default="5,20", help="fleet sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=21)
    ns = ap.parse_args()
    rows: list[tuple[str, ...]] = [
        ("fleet", "slowest single ping", "fan-out (Fleet.run)", "sequential loop",
         "CPU per ping", "CPU per fan-out", f"CPU floor on {os.cpu_count()} cores")]
    for n in (int(x) for x in ns.nodes.split(",")):
        rows.append(measure(n, ns.rounds))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())


if __name__ == "__main__":
    main()
