"""The fleet on a real Redis Cluster (3 masters + 3 replicas, each server on an address of its
own on the fleet's LAN): 5 core0 nodes, each in a network namespace of its own with its own
address, its ``{nodeN}:`` prefix in its own slot and an ACL user of its own, and
``Fleet(…, cluster=True)`` fanning out over the masters: one call on all 5, tags selecting a
subset, live output merged with node labels, one node's ACL user kept off another node's keys
(NOPERM), a node killed mid-call reported lost while the other 4 succeed, the registry showing
5 then 4."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis
from conftest import kill_tree, wait_until
from core0_client.fleet import Fleet
from fleet_fixtures import CLUSTER_PASSWORD, Cluster, FleetNode, cluster_lan, start_cluster_node
from redis.crc import key_slot

pytestmark = pytest.mark.slow

TAGS = {"node1": "web,eu", "node2": "web,us", "node3": "db,eu", "node4": "db,us",
        "node5": "web,eu"}


@pytest.fixture(scope="module")
def cfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster,
                                                                        dict[str, FleetNode]]]:
    base = tmp_path_factory.mktemp("cfleet")
    with cluster_lan(base) as (lan, cluster):
        nodes: dict[str, FleetNode] = {}
        try:
            for nid, tags in TAGS.items():
                nodes[nid] = start_cluster_node(cluster, lan, base, nid, tags=tags, user=True)
            yield cluster, nodes
        finally:
            for n in nodes.values():
                n.node.stop()


def _fleet(cluster: Cluster) -> Fleet:
    # any node of the cluster: here a replica-or-master other than the first
    port = cluster.ports[-1]
    return Fleet(cluster.host(port), port, password=CLUSTER_PASSWORD, timeout=30,
                 cluster=True)


def test_registry_on_a_cluster(cfleet: tuple[Cluster, dict[str, FleetNode]]) -> None:
    cluster, nodes = cfleet
    with _fleet(cluster) as f:
        assert wait_until(lambda: len(f.nodes()) == 5, 15)
        infos = {n.id: n for n in f.nodes()}
    assert set(infos) == set(TAGS)
    # each node in a network namespace of its own, with its own address on the LAN
    assert len({fn.netns for fn in nodes.values()}) == 5
    for nid, fn in nodes.items():
        assert infos[nid].entry["addresses"] == [fn.addr], (nid, infos[nid].entry["addresses"])
        assert infos[nid].tags == TAGS[nid].split(",")


def test_nodes_spread_over_the_masters(cfleet: tuple[Cluster, dict[str, FleetNode]]) -> None:
    cluster, _ = cfleet
    owners = {cluster.owner(f"{{{n}}}:core:default") for n in TAGS}
    assert len(owners) >= 2, "the 5 prefixes should not all hash to one master"
    assert len({key_slot(f"{{{n}}}:x".encode()) for n in TAGS}) == 5


def test_fan_out_on_a_cluster(cfleet: tuple[Cluster, dict[str, FleetNode]]) -> None:
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


def test_acl_user_cannot_touch_another_node_on_a_cluster(
        cfleet: tuple[Cluster, dict[str, FleetNode]]) -> None:
    cluster, _ = cfleet
    own, other = "{node1}:core:default", "{node2}:core:default"

    def as_node1(key: str) -> redis.Redis:  # on the master serving the key's slot
        port = cluster.owner(key)
        return redis.Redis(host=cluster.host(port), port=port, username="node1",
                           password="pw-node1")

    assert as_node1(own).llen(own) == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_node1(other).llen(other)
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_node1(other).rpush(other, "x")
    # every server knows the user (a replica promoted by a failover too), none lets it by
    for port in cluster.ports:
        r = redis.Redis(host=cluster.host(port), port=port, username="node1",
                        password="pw-node1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.get("{node3}:anything")


def test_cli_on_a_cluster(cfleet: tuple[Cluster, dict[str, FleetNode]]) -> None:
    cluster, _ = cfleet
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORE0_")}
    port = cluster.ports[1]
    # the CLI runs in the hub namespace too (a child of this thread)
    r = subprocess.run([sys.executable, "-m", "core0_client.cli", "--url",
                        f"redis://:{CLUSTER_PASSWORD}@{cluster.host(port)}:{port}",
                        "--cluster", "--timeout", "20", "--node-tags", "eu", "--json", "ping"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(out) == ["node1", "node3", "node5"] and all(v["ok"] for v in out.values())


def test_node_killed_mid_call_on_a_cluster(cfleet: tuple[Cluster, dict[str, FleetNode]]) -> None:
    cluster, nodes = cfleet
    victim = nodes["node5"]
    rc = cluster.client()
    with _fleet(cluster) as f:
        assert wait_until(lambda: len(f.nodes()) == 5, 15)

        def kill_when_running() -> None:
            assert wait_until(lambda: rc.exists("{node5}:core:default:processing")
                              or rc.keys("{node5}:result:*:flag"), 10)
            kill_tree(victim.node.pid, signal.SIGKILL)

        t = threading.Thread(target=kill_when_running)
        t.start()
        res = f.run("core.system", {"name": "sleep", "args": ["2"]}, timeout=25)
        t.join()
        assert res.succeeded == ["node1", "node2", "node3", "node4"], res.to_dict()
        assert res.failed == ["node5"] and "lost" in (res["node5"].error or "")
        assert wait_until(lambda: len(f.nodes()) == 4, 10)
