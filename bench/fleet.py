"""Fan-out of ``core.ping`` to a fleet of core0 nodes sharing one redis-server.

For N nodes (5 and 20 by default: N ``core0 dev`` dispatchers, each with its own ``{nodeI}:``
prefix, on one shared redis-server, over its unix socket):

* slowest single: each node's own ``core.ping`` round trip (median of ``--rounds``), the
  slowest node's;
* fan-out: ``Fleet.run("core.ping")`` to all N (one pipelined push, pipelined result reads;
  the registry read included), median of ``--rounds``;
* sequential: a loop of ``Client.ping()`` over the N nodes, median of ``--rounds``.

Prints the wall times and the ratios fan-out / slowest single (target ≤ 1.5×) and
sequential / fan-out. Every server and node it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time

from _common import ROOT, start_redis, stop, table, tmpdir

sys.path.insert(0, str(ROOT / "client"))


def _median(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(n: int, rounds: int) -> tuple[str, str, str, str]:
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
        for c in clients:
            c.close()
        return (f"{n} nodes", f"{single * 1000:.2f} ms",
                f"{fan_t * 1000:.2f} ms ({fan_t / single:.2f}× slowest single)",
                f"{seq_t * 1000:.2f} ms ({seq_t / fan_t:.2f}× fan-out)")
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
    rows = [("fleet", "slowest single ping", "fan-out (Fleet.run)", "sequential loop")]
    for n in (int(x) for x in ns.nodes.split(",")):
        rows.append(measure(n, ns.rounds))
    table(rows)


if __name__ == "__main__":
    main()
