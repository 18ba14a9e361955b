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
idle background (heartbeats, blocked pops) subtracted, per fan-out (fan-outs back to back, and
20 ms apart), the nodes' part per node, how many cores were busy, and that CPU divided by the
machine's cores: back to back, the least wall time per fan-out this machine allows whatever
the parallelism, to compare with the slowest single round trip. Every server and node it
starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from typing import Any

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
    """User + system CPU seconds of groups of processes (each with its children)."""

    def __init__(self, groups: dict[str, list[int]], alone: tuple[str, ...] = ()):
        """``alone``: groups counted without their children (this process: the nodes it
        started are its children)."""
        import psutil

        self.groups: dict[str, list[Any]] = {}
        for name, pids in groups.items():
            procs = []
            for pid in pids:
                p = psutil.Process(pid)
                procs += [p, *([] if name in alone else p.children(recursive=True))]
            self.groups[name] = procs

    def seconds(self) -> dict[str, float]:
        import psutil

        out = {}
        for name, procs in self.groups.items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                total += t.user + t.system
            out[name] = total
        return out


def _cpu_per_call(cpu: CPU, fn, idle: dict[str, float],  # type: ignore[no-untyped-def]
                  span: float = 6.0, gap: float = 0.02) -> tuple[dict[str, float], float]:
    """(CPU seconds per call of ``fn`` by group, idle background subtracted; mean wall seconds
    per call). ``fn`` is called for ``span`` seconds, ``gap`` apart: back to back (0), the
    machine's throughput, where wall per call ≥ CPU per call ÷ cores must hold; or apart, each
    call alone, with what a node still does after answering (its bookkeeping) counted with the
    call. A long span keeps the error of CPU times (10 ms ticks per process) small."""
    calls = 0
    busy = 0.0
    c0, t0 = cpu.seconds(), time.perf_counter()
    while time.perf_counter() - t0 < span:
        t = time.perf_counter()
        fn()
        busy += time.perf_counter() - t
        calls += 1
        time.sleep(gap)
    c1, t1 = cpu.seconds(), time.perf_counter()
    return ({k: max(0.0, (c1[k] - c0[k]) - idle[k] * (t1 - t0)) / calls for k in c0},
            busy / calls)


#: the nodes' registry heartbeat (s), and the span the idle background is measured over
HEARTBEAT = 5
IDLE_SPAN = 2 * HEARTBEAT

#: the CPU figures of each fleet size measured, printed after the wall times
CPU_ROWS: list[tuple[str, ...]] = []


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
            env = {"CORE0_NODE_ID": nid, "CORE0_NODE_HEARTBEAT": str(HEARTBEAT)}
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
            cpu = CPU({"client": [os.getpid()], "redis": [proc.pid],
                       "nodes": [nd.pid for nd in nodes]}, alone=("client",))
            # the idle background over two heartbeats of every node
            c0 = cpu.seconds()
            time.sleep(IDLE_SPAN)
            idle = {k: (v - c0[k]) / IDLE_SPAN for k, v in cpu.seconds().items()}
            regimes = {"back to back": _cpu_per_call(cpu, fan, idle, gap=0.0),
                       "20 ms apart": _cpu_per_call(cpu, fan, idle, gap=0.02)}
        for c in clients:
            c.close()
        cores = os.cpu_count() or 1
        ms = 1000
        for regime, (fan_cpu, fan_mean) in regimes.items():
            total = sum(fan_cpu.values())
            CPU_ROWS.append((
                f"{n} nodes", regime, f"{fan_mean * ms:.2f} ms",
                f"{total * ms:.2f} ms (nodes {fan_cpu['nodes'] * ms:.2f}, redis "
                f"{fan_cpu['redis'] * ms:.2f}, client {fan_cpu['client'] * ms:.2f})",
                f"{fan_cpu['nodes'] / n * ms:.2f} ms",
                f"{total / fan_mean:.2f}",
                f"{total / cores * ms:.2f} ms ({total / cores / single:.2f}×)"))
        return (f"{n} nodes", f"{single * ms:.2f} ms",
                f"{fan_t * ms:.2f} ms ({fan_t / single:.2f}× slowest single)",
                f"{seq_t * ms:.2f} ms ({seq_t / fan_t:.2f}× fan-out)")
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
        ("fleet", "slowest single ping", "fan-out (Fleet.run)", "sequential loop")]
    for n in (int(x) for x in ns.nodes.split(",")):
        rows.append(measure(n, ns.rounds))
    _print(rows)
    cores = os.cpu_count()
    print(f"\nCPU (user + system, idle background subtracted; {cores} cores; ratio: × the "
          "slowest single ping above), fan-outs repeated for 6 s")
    _print([("fleet", "fan-outs", "wall per fan-out (mean)", "CPU per fan-out",
             "nodes' CPU per node", "cores busy", f"CPU / {cores} cores"), *CPU_ROWS])

def _print(rows: list[tuple[str, ...]]) -> None:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())

if __name__ == "__main__":
    main()
