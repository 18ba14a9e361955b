"""core0 nodes on a real Redis Cluster (3 masters + 3 replicas on the fleet's LAN, each node in
a network namespace of its own): each node's keys in its own slot (hash-tagged prefix),
registry entries across slots, and a master killed or failed over under a node: a replica
takes over and the node's pop loop re-resolves its slot owner and serves again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from core0_client import Client
from fleet_fixtures import CLUSTER_PASSWORD, Cluster, Lan, cluster_lan, start_cluster_node

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Lan, Cluster]]:
    with cluster_lan(tmp_path) as (lan, c):
        yield lan, c


def _node_client(cluster: Cluster, prefix: str) -> Client:
    """A client of the node, on the master its slot has now (every server agreeing)."""
    port = cluster.owner(f"{prefix}core:default")
    return Client(cluster.host(port), port, prefix=prefix, timeout=30,
                  password=CLUSTER_PASSWORD)


def _pong_now(cluster: Cluster, prefix: str) -> bool:
    """The node answers a ping through its slot's current master (looked up afresh: a client
    kept on the old master would only get MOVED)."""
    if cluster.settled_owner(f"{prefix}core:default") is None:
        return False
    try:
        with _node_client(cluster, prefix) as c:
            return c.ping().startswith("PONG")
    except Exception:
        return False


def test_nodes_on_a_cluster_survive_a_master_failover(cluster: tuple[Lan, Cluster],
                                                      tmp_path: Path) -> None:
    lan, cl = cluster
    nodes = {}
    victim = cl.owner("{c2}:core:default")
    # the URL names a node that is not killed below: the slot lookup starts there
    url_port = next(p for p in cl.ports if p != victim)
    try:
        for nid in ("c1", "c2"):
            # the password reaches the slot lookup, the pop link and the cluster client
            nodes[nid] = start_cluster_node(cl, lan, tmp_path, nid, url_port=url_port,
                                            env={"CORE0_NODE_TTL": "5"})
        rc = cl.client()
        assert wait_until(lambda: rc.exists("nodes:c1") and rc.exists("nodes:c2"), 10)
        for nid in nodes:
            with _node_client(cl, f"{{{nid}}}:") as c:
                assert c.system("echo hi").get().stdout == "hi\n"
        # kill the master serving c2's slot (not the URL's node): a replica takes over
        cl.kill(victim)
        assert wait_until(lambda: cl.settled_owner("{c2}:core:default") not in (None, victim),
                          60), "no replica took over"
        assert wait_until(lambda: _pong_now(cl, "{c2}:"), 60), \
            nodes["c2"].node.log_text()[-3000:]
        with _node_client(cl, "{c2}:") as c:
            assert c.system("echo again").get().stdout == "again\n"
        with _node_client(cl, "{c1}:") as c:
            assert c.ping().startswith("PONG")
        assert "Traceback" not in nodes["c2"].node.log_text()
    finally:
        for n in nodes.values():
            n.node.stop()


def test_manual_failover_moves_the_node(cluster: tuple[Lan, Cluster], tmp_path: Path) -> None:
    """CLUSTER FAILOVER: the old master stays up as a replica and answers MOVED; the node's
    connections drop it and reach the new master."""
    lan, cl = cluster
    prefix = "{m1}:"
    key = f"{prefix}core:default"
    old = cl.owner(key)
    # the lookup node itself becomes a replica
    node = start_cluster_node(cl, lan, tmp_path, "m1", url_port=old)
    try:
        with _node_client(cl, prefix) as c:
            assert c.system("echo before").get().stdout == "before\n"
        replica = cl.replica_of(old)

        def promoted() -> bool:
            return bool(cl.redis(replica).execute_command("ROLE")[0] == b"master")

        # asked again when not done: a manual failover is aborted when the replica does not
        # catch up within its own short deadline (seen on a busy machine)
        for _ in range(12):
            cl.redis(replica).execute_command("CLUSTER", "FAILOVER")
            if wait_until(promoted, 10, step=0.2):
                break
        assert promoted(), "no failover"
        # every server knows the new master before the test looks it up
        assert wait_until(lambda: cl.settled_owner(key) == replica, 60), "not seen everywhere"
        assert wait_until(lambda: _pong_now(cl, prefix), 120), node.node.log_text()[-3000:]
        with _node_client(cl, prefix) as c:
            assert c.system("echo after").get().stdout == "after\n"
        assert "Traceback" not in node.node.log_text()
    finally:
        node.node.stop()
