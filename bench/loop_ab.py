"""The dispatcher's event loop, A/B: a node on asyncio's loop against a node on uvloop.

Both nodes run the same code (``CORE0_EVENT_LOOP=asyncio`` for the first), state dirs on a
tmpfs, and are measured in interleaved rounds (the order alternates), so that both meet the
same machine: sequential ``core.ping`` per second over TCP and over the unix socket, and the
``core.system /bin/true`` round trip. Prints the medians, each round's uvloop ÷ asyncio ratio,
and the dispatchers' CPU per ping. Both nodes and their directories are removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import psutil
import redis
from _common import table, tmpdir
from ping import sequential
from spawn import round_trips

LOOPS = {"asyncio": {"CORE0_EVENT_LOOP": "asyncio"}, "uvloop": {"CORE0_EVENT_LOOP": "uvloop"}}


def per_round(a: list[float], b: list[float]) -> str:
    """Each round's b ÷ a."""
    return " ".join(f"{y / x:.2f}" for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("-n", type=int, default=1500, help="pings per round and transport")
    ap.add_argument("--jobs", type=int, default=300, help="core.system per round (0: none)")
    opts = ap.parse_args()
    from conftest import start_node

    work = tmpdir("bench-loop-")
    nodes = {}
    try:
        for name, env in LOOPS.items():
            nodes[name] = start_node(work / name, env=env)
        #: (node, transport) → a connection factory, as bench/ping.py's client takes it
        conns = {(name, "tcp"): (lambda t, port=node.port: redis.Redis(port=port, socket_timeout=t))
                 for name, node in nodes.items()}
        conns.update({(name, "unix"): (lambda t, sock=node.socket:
                                       redis.Redis(unix_socket_path=sock, socket_timeout=t))
                      for name, node in nodes.items()})
        disp = {name: psutil.Process(node.dispatcher_pid()) for name, node in nodes.items()}
        for connect in conns.values():
            sequential(connect, 200)  # warm up
        rates: dict[tuple[str, str], list[float]] = {k: [] for k in conns}
        cpu: dict[str, list[float]] = {name: [] for name in nodes}
        system: dict[str, list[float]] = {name: [] for name in nodes}
        for i in range(opts.rounds):
            order = list(nodes) if i % 2 == 0 else list(reversed(nodes))
            for name in order:
                for tr in ("tcp", "unix"):
                    c0 = disp[name].cpu_times()
                    rates[(name, tr)].append(sequential(conns[(name, tr)], opts.n))
                    c1 = disp[name].cpu_times()
                    cpu[name].append((c1.user + c1.system - c0.user - c0.system) / opts.n * 1e6)
                if opts.jobs:
                    r = conns[(name, "unix")](30)
                    system[name].append(round_trips(r, "core.system", {"name": "true"},
                                                    opts.jobs))
                    r.close()
    finally:
        for node in nodes.values():
            node.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    rows = [("measure", "asyncio", "uvloop", "uvloop ÷ asyncio", "per round")]
    for tr in ("tcp", "unix"):
        a, b = rates[("asyncio", tr)], rates[("uvloop", tr)]
        rows.append((f"sequential core.ping/s, {tr}", f"{med(a):.0f}", f"{med(b):.0f}",
                     f"{med(b) / med(a):.3f}", per_round(a, b)))
    rows.append(("dispatcher CPU µs per ping", f"{med(cpu['asyncio']):.0f}",
                 f"{med(cpu['uvloop']):.0f}", f"{med(cpu['uvloop']) / med(cpu['asyncio']):.3f}",
                 ""))
    if opts.jobs:
        a, b = system["asyncio"], system["uvloop"]
        rows.append(("core.system /bin/true ms (unix)", f"{med(a):.3f}", f"{med(b):.3f}",
                     f"{med(b) / med(a):.3f}", per_round(a, b)))
    print(f"bench/loop_ab.py — medians of {opts.rounds} interleaved rounds, "
          f"{time.strftime('%F %H:%M')}, load average {psutil.getloadavg()[0]:.1f}")
    table(rows)


if __name__ == "__main__":
    main()
