"""core0 nodes on a real Redis Cluster (3 masters + 3 replicas): each node's keys in its own
slot (hash-tagged prefix), registry entries across slots, and a master killed under a node:
the replica takes over and the node's pop loop re-resolves its slot owner and serves again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import kill_tree, start_node, wait_until
from core0_client import Client
from fleet_fixtures import CLUSTER_PASSWORD, Cluster, start_cluster
from redis.crc import key_slot

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = start_cluster(tmp_path)
    yield c
    for pid in c.pids:
        kill_tree(pid)


def _node_client(cluster: Cluster, prefix: str) -> Client:
    port = cluster.owner(f"{prefix}core:default")
    return Client("127.0.0.1", port, prefix=prefix, timeout=30, password=CLUSTER_PASSWORD)


def test_nodes_on_a_cluster_survive_a_master_failover(cluster: Cluster, tmp_path: Path) -> None:
    nodes = {}
    victim = cluster.owner("{c2}:core:default")
    # the URL names a node that is not killed below: the slot lookup starts there
    url = f"redis://127.0.0.1:{next(p for p in cluster.ports if p != victim)}"
    try:
        for nid in ("c1", "c2"):
            prefix = f"{{{nid}}}:"
            # the password reaches the slot lookup, the pop link and the cluster client
            env = {"CORE0_REDIS_CLUSTER": "true", "CORE0_NODE_ID": nid,
                   "CORE0_REDIS_PASSWORD": CLUSTER_PASSWORD,
                   "CORE0_NODE_HEARTBEAT": "1", "CORE0_NODE_TTL": "5",
                   "CORE0_BUS_BLOCK_TIMEOUT": "1"}
            nodes[nid] = start_node(tmp_path / nid, extra=["--redis-url", url, "--prefix",
                                                            prefix], env=env,
                                    port=cluster.owner(f"{prefix}core:default"), prefix=prefix,
                                    password=CLUSTER_PASSWORD)
        rc = cluster.client()
        assert wait_until(lambda: rc.exists("nodes:c1") and rc.exists("nodes:c2"), 10)
        for nid in nodes:
            with _node_client(cluster, f"{{{nid}}}:") as c:
                assert c.system("echo hi").get().stdout == "hi\n"
        # kill the master serving c2's slot (not the URL's node): a replica takes over
        cluster.kill(victim)

        def promoted() -> bool:
            try:
                return cluster.owner("{c2}:core:default") != victim
            except Exception:
                return False

        assert wait_until(promoted, 30), "no replica took over"
        with _node_client(cluster, "{c2}:") as c:
            assert wait_until(lambda: _pong(c), 30), nodes["c2"].log_text()[-3000:]
            assert c.system("echo again").get().stdout == "again\n"
        with _node_client(cluster, "{c1}:") as c:
            assert c.ping().startswith("PONG")
        assert "Traceback" not in nodes["c2"].log_text()
    finally:
        for n in nodes.values():
            n.stop()


def test_manual_failover_moves_the_node(cluster: Cluster, tmp_path: Path) -> None:
    """CLUSTER FAILOVER: the old master stays up as a replica and answers MOVED; the node's
    connections drop it and reach the new master."""
    prefix = "{m1}:"
    key = f"{prefix}core:default"
    old = cluster.owner(key)
    url = f"redis://127.0.0.1:{old}"  # the lookup node itself becomes a replica
    env = {"CORE0_REDIS_CLUSTER": "true", "CORE0_NODE_ID": "m1",
           "CORE0_REDIS_PASSWORD": CLUSTER_PASSWORD, "CORE0_BUS_BLOCK_TIMEOUT": "1"}
    node = start_node(tmp_path / "m1", extra=["--redis-url", url, "--prefix", prefix], env=env,
                      port=old, prefix=prefix, password=CLUSTER_PASSWORD)
    try:
        with _node_client(cluster, prefix) as c:
            assert c.system("echo before").get().stdout == "before\n"
        slots = redis.Redis(port=old, password=CLUSTER_PASSWORD).execute_command(
            "CLUSTER SLOTS")
        replica = next(int(e[3][1]) for e in slots
                       if int(e[0]) <= key_slot(key.encode()) <= int(e[1]))
        redis.Redis(port=replica, password=CLUSTER_PASSWORD).execute_command(
            "CLUSTER", "FAILOVER")
        assert wait_until(lambda: cluster.owner(key) == replica, 120), "no failover"
        with _node_client(cluster, prefix) as c:
            assert wait_until(lambda: _pong(c), 120), node.log_text()[-3000:]
            assert c.system("echo after").get().stdout == "after\n"
        assert "Traceback" not in node.log_text()
    finally:
        node.stop()


def _pong(c: Client) -> bool:
    try:
        return c.ping().startswith("PONG")
    except Exception:
        return False
