"""Create + delete 100 veth pairs: direct pyroute2 vs through core0, in the same run.

* baseline: a process inside a fresh network namespace (``ip netns exec``) doing
  ``IPRoute().link("add", kind="veth")`` 100 times, then ``link("del")`` 100 times, on one
  netlink socket — pyroute2 at its best;
* core0, one command per link: a ``core0 dev`` node running inside its own fresh namespace,
  driven by the sync client: 100 ``ip.link.add`` then 100 ``ip.link.del``, each waiting for
  its result (a thread hop and a fresh netlink socket per command);
* core0, batch: one ``ip.link.add_many`` with the 100 pairs, one ``ip.link.del_many``.

Deleting a veth costs the kernel an RCU grace period, so deletes dominate every figure. Each
figure is the best of ``--rounds`` rounds. Needs root; touches only namespaces it creates.

    .venv/bin/python bench/net.py [--pairs 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

BASELINE = """
import json, sys, time
from pyroute2 import IPRoute
n = int(sys.argv[1])
ipr = IPRoute()
t0 = time.perf_counter()
for i in range(n):
    ipr.link("add", ifname=f"b{i}", kind="veth", peer=f"b{i}p")
t1 = time.perf_counter()
for i in range(n):
    ipr.link("del", ifname=f"b{i}")
t2 = time.perf_counter()
ipr.close()
print(json.dumps({"add": t1 - t0, "del": t2 - t1}))
"""


def baseline(ns: str, pairs: int) -> dict[str, float]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", BASELINE, str(pairs)],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    d: dict[str, float] = json.loads(out)
    return d


def per_command(c, pairs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for i in range(pairs):
        c.ip.link.add(f"c{i}", "veth", peer=f"c{i}p")
    t1 = time.perf_counter()
    for i in range(pairs):
        c.ip.link.delete(f"c{i}")
    t2 = time.perf_counter()
    return {"add": t1 - t0, "del": t2 - t1}


def batch(c, pairs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    links = [{"name": f"c{i}", "kind": "veth", "peer": f"c{i}p"} for i in range(pairs)]
    t0 = time.perf_counter()
    c.ip.link.add_many(links)
    t1 = time.perf_counter()
    res = c.ip.link.del_many([f"c{i}" for i in range(pairs)])
    t2 = time.perf_counter()
    assert len(res["deleted"]) == pairs, res
    return {"add": t1 - t0, "del": t2 - t1}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    tot = min(runs, key=lambda r: r["add"] + r["del"])
    return {**tot, "total": tot["add"] + tot["del"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ns_args = ap.parse_args()
    from net_fixtures import netns, node_in_netns

    pairs = ns_args.pairs
    with netns("bench") as bns, node_in_netns() as node:
        c = node.client()
        c.ip.link.list()  # warm up: the dispatcher imports pyroute2 on the first command
        base, seq, bat = [], [], []
        for _ in range(ns_args.rounds):
            base.append(baseline(bns.name, pairs))
            seq.append(per_command(c, pairs))
            bat.append(batch(c, pairs))
        c.close()
    b, s, m = best(base), best(seq), best(bat)
    print(f"{pairs} veth pairs, create + delete, best of {ns_args.rounds} "
          f"(add / del / total, seconds)")
    rows = [("baseline: pyroute2 direct", b), ("core0: ip.link.add/del x1", s),
            ("core0: ip.link.add_many/del_many", m)]
    for label, r in rows:
        ratio = r["total"] / b["total"]
        print(f"  {label:34} {r['add']:7.3f} {r['del']:7.3f} {r['total']:7.3f}   "
              f"ratio {ratio:4.2f}x")


if __name__ == "__main__":
    main()
