"""The fleet on a real Redis Cluster (3 masters + 3 replicas): 5 core0 nodes, each with its
``{nodeN}:`` prefix in its own slot, and ``Fleet(…, cluster=True)`` fanning out over the
masters: one call on all 5, tags selecting a subset, live output merged with node labels, a
node killed mid-call reported lost while the other 4 succeed, the registry showing 5 then 4."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from conftest import Node, kill_tree, start_node, wait_until
from core0_client.fleet import Fleet
from fleet_fixtures import CLUSTER_PASSWORD, Cluster, start_cluster
from redis.crc import key_slot

pytestmark = pytest.mark.slow

TAGS = {"node1": "web,eu", "node2": "web,us", "node3": "db,eu", "node4": "db,us",
        "node5": "web,eu"}


@pytest.fixture(scope="module")
def cfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster,
                                                                        dict[str, Node]]]:
    base = tmp_path_factory.mktemp("cfleet")
    cluster = start_cluster(base)
    nodes: dict[str, Node] = {}
    url = f"redis://127.0.0.1:{cluster.ports[0]}"
    try:
        for nid, tags in TAGS.items():
            prefix = f"{{{nid}}}:"
            env = {"CORE0_REDIS_CLUSTER": "true", "CORE0_NODE_ID": nid,
                   "CORE0_NODE_TAGS": tags, "CORE0_REDIS_PASSWORD": CLUSTER_PASSWORD,
                   "CORE0_NODE_HEARTBEAT": "1", "CORE0_NODE_TTL": "3",
                   "CORE0_BUS_BLOCK_TIMEOUT": "1"}
            nodes[nid] = start_node(base / nid, extra=["--redis-url", url, "--prefix", prefix],
                                    env=env, port=cluster.owner(f"{prefix}core:default"),
                                    prefix=prefix, password=CLUSTER_PASSWORD)
        yield cluster, nodes
    finally:
        for n in nodes.values():
            n.stop()
        for pid in cluster.pids:
            kill_tree(pid)


def _fleet(cluster: Cluster) -> Fleet:
    # any node of the cluster: here a replica-or-master other than the first
    return Fleet("127.0.0.1", cluster.ports[-1], password=CLUSTER_PASSWORD, timeout=30,
                 cluster=True)


def test_nodes_spread_over_the_masters(cfleet: tuple[Cluster, dict[str, Node]]) -> None:
    cluster, _ = cfleet
    owners = {cluster.owner(f"{{{n}}}:core:default") for n in TAGS}
    assert len(owners) >= 2, "the 5 prefixes should not all hash to one master"
    assert len({key_slot(f"{{{n}}}:x".encode()) for n in TAGS}) == 5


def test_fan_out_on_a_cluster(cfleet: tuple[Cluster, dict[str, Node]]) -> None:
    cluster, _ = cfleet
    with _fleet(cluster) as f:
        assert wait_until(lambda: len(f.nodes()) == 5, 15)
        res = f.run("core.ping", timeout=20)
        assert res.ok and res.succeeded == sorted(TAGS), res.to_dict()
        web_eu = f.run("core.ping", tags=["web", "eu"], timeout=20)
        assert sorted(web_eu.nodes) == ["node1", "node5"] and web_eu.ok
        bad = f.run("core.system", {"name": "false"}, nodes=["node3", "node4"], timeout=20)
        assert bad.failed == ["node3", "node4"] and bad["node3"].result is not None
        lines: list[tuple[str, str]] = []
        out = f.stream("core.system", {"name": "sh", "args": ["-c", "echo a; echo b"]},
                       tags=["db"], timeout=20,
                       callback=lambda node, level, msg, flags: lines.append((node, msg)))
        assert out.ok and sorted(out.nodes) == ["node3", "node4"]
        for n in ("node3", "node4"):
            assert [m for node, m in lines if node == n] == ["a", "b"]


def test_cli_on_a_cluster(cfleet: tuple[Cluster, dict[str, Node]]) -> None:
    cluster, _ = cfleet
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORE0_")}
    r = subprocess.run([sys.executable, "-m", "core0_client.cli", "--url",
                        f"redis://:{CLUSTER_PASSWORD}@127.0.0.1:{cluster.ports[1]}",
                        "--cluster", "--timeout", "20", "--node-tags", "eu", "--json", "ping"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(out) == ["node1", "node3", "node5"] and all(v["ok"] for v in out.values())


def test_node_killed_mid_call_on_a_cluster(cfleet: tuple[Cluster, dict[str, Node]]) -> None:
    cluster, nodes = cfleet
    victim = nodes["node5"]
    rc = cluster.client()
    with _fleet(cluster) as f:
        assert wait_until(lambda: len(f.nodes()) == 5, 15)

        def kill_when_running() -> None:
            assert wait_until(lambda: rc.exists("{node5}:core:default:processing")
                              or rc.keys("{node5}:result:*:flag"), 10)
            kill_tree(victim.pid, signal.SIGKILL)

        t = threading.Thread(target=kill_when_running)
        t.start()
        res = f.run("core.system", {"name": "sleep", "args": ["2"]}, timeout=25)
        t.join()
        assert res.succeeded == ["node1", "node2", "node3", "node4"], res.to_dict()
        assert res.failed == ["node5"] and "lost" in (res["node5"].error or "")
        assert wait_until(lambda: len(f.nodes()) == 4, 10)
