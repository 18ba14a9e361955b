"""Fleet fixtures: core0 nodes (``core0 dev``) sharing one real redis-server, each with its own
hash-tagged prefix and node id, optionally as its own ACL user."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from conftest import Node, RedisServer, start_node
from redis.cluster import ClusterNode


@dataclass
class FleetNode:
    """A node of the fleet: its ``core0 dev`` and the prefix it consumes."""

    id: str
    prefix: str
    node: Node
    #: its network namespace and address on the fleet's LAN ("": the host's)
    netns: str = ""
    addr: str = ""


def node_user(srv: RedisServer, node_id: str, password: str) -> None:
    """An ACL user that may touch only this node's keys (and the registry's ``nodes:*``)."""
    srv.client().execute_command(
        "ACL", "SETUSER", node_id, "reset", "on", f">{password}", f"~{{{node_id}}}:*",
        "~nodes:*", "+@all", "-@dangerous", "+info")


@dataclass
class Lan:
    """A network for a fleet: a bridge in a hub namespace holding the shared redis-server;
    each node joins it from a namespace of its own (:meth:`join`), with its own address."""

    hub: Any  # net_fixtures.Netns
    stack: contextlib.ExitStack
    net: str = "10.240.0"
    nodes: int = 0

    @property
    def redis_addr(self) -> str:
        return f"{self.net}.1"

    def join(self) -> tuple[str, str]:
        """A new namespace on the LAN: (its name, its address)."""
        from net_fixtures import netns

        self.nodes += 1
        ns = self.stack.enter_context(netns(f"fl{self.nodes}"))
        link = f"fl{self.nodes}h"
        self.hub.run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0",
                     "netns", ns.name)
        self.hub.run("ip", "link", "set", link, "master", "br0", "up")
        addr = f"{self.net}.{10 + self.nodes}"
        ns.run("ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        return ns.name, addr


@contextlib.contextmanager
def fleet_lan(base: Path) -> Iterator[tuple[Lan, RedisServer]]:
    """A hub namespace with a bridge and the fleet's redis-server on it (and its unix socket
    for the tests); everything removed afterwards (by PID and by namespace name)."""
    from conftest import kill_tree, require_root, start_redis
    from net_fixtures import netns

    require_root()
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(netns("hub"))
        hub.run("ip", "link", "add", "br0", "type", "bridge")
        hub.run("ip", "addr", "add", "10.240.0.1/24", "dev", "br0")
        hub.run("ip", "link", "set", "br0", "up")
        lan = Lan(hub, stack)
        srv = start_redis(base, bind=lan.redis_addr, netns=hub.name)
        try:
            yield lan, srv
        finally:
            kill_tree(srv.pid)


def start_fleet_node(srv: RedisServer, base: Path, node_id: str, *, tags: str = "",
                     user: bool = False, env: dict[str, str] | None = None,
                     lan: Lan | None = None) -> FleetNode:
    """``core0 dev`` on the shared Redis (its unix socket), prefix ``{<id>}:``; with ``lan``:
    in a network namespace of its own, reaching Redis over the LAN at its own address."""
    prefix = f"{{{node_id}}}:"
    e = {"CORE0_BUS_BLOCK_TIMEOUT": "1", "CORE0_NODE_ID": node_id, "CORE0_NODE_TAGS": tags,
         "CORE0_NODE_HEARTBEAT": "1", "CORE0_NODE_TTL": "3", **(env or {})}
    if user:
        node_user(srv, node_id, f"pw-{node_id}")
        e.update(CORE0_REDIS_USERNAME=node_id, CORE0_REDIS_PASSWORD=f"pw-{node_id}")
    if lan is None:
        n = start_node(base / node_id, extra=["--redis-url", f"unix://{srv.socket}",
                                              "--prefix", prefix],
                       env=e, port=srv.port, prefix=prefix)
        return FleetNode(node_id, prefix, n)
    ns, addr = lan.join()
    # plain TCP on a LAN of the test's own namespaces (TLS to a remote Redis: test_redis_tls)
    e["CORE0_REDIS_INSECURE"] = "true"
    n = start_node(base / node_id, extra=["--redis-url",
                                          f"redis://{lan.redis_addr}:{srv.port}",
                                          "--prefix", prefix],
                   env=e, port=srv.port, prefix=prefix, netns=ns, socket_path=srv.socket)
    return FleetNode(node_id, prefix, n, ns, addr)


def shared_client(srv: RedisServer) -> redis.Redis:
    return srv.client()


#: every cluster node requires it (so each connection, the slot lookup included, must AUTH)
CLUSTER_PASSWORD = "cluster-secret"


@dataclass
class Cluster:
    """A real Redis Cluster: 3 masters + 3 replicas on loopback."""

    ports: list[int]
    pids: list[int]
    dead: set[int] = field(default_factory=set)

    def client(self) -> redis.RedisCluster:
        """A cluster client started from a node that was not killed."""
        live = [p for p in self.ports if p not in self.dead]
        return redis.RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in live],
                                  password=CLUSTER_PASSWORD)

    def kill(self, port: int) -> None:
        """SIGKILL one of the servers."""
        from conftest import kill_tree

        self.dead.add(port)
        kill_tree(self.pid_of(port), signal.SIGKILL)

    def owner(self, key: str) -> int:
        """The port of the master serving ``key``'s slot."""
        node = self.client().get_node_from_key(key)
        return int(node.port)

    def pid_of(self, port: int) -> int:
        return self.pids[self.ports.index(port)]


def start_cluster(base: Path) -> Cluster:
    """6 ``redis-server --cluster-enabled yes`` + ``redis-cli --cluster create … --cluster-
    replicas 1``; cluster-node-timeout 2 s so a failover takes seconds."""
    from conftest import require

    require("redis-server", "redis-cli")
    ports: list[int] = []
    pids: list[int] = []
    try:
        _cluster_up(base, ports, pids)
    except BaseException:
        from conftest import kill_tree

        for pid in pids:
            kill_tree(pid)
        raise
    return Cluster(ports, pids)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    import socket

    from conftest import free_port

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cluster_up(base: Path, ports: list[int], pids: list[int]) -> None:
    import subprocess  # test fixture only

    from conftest import wait_until

    for _ in range(6):
        port = _cluster_port()
        d = base / f"cluster-{port}"
        d.mkdir(parents=True)
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout",
             "2000", "--save", "", "--appendonly", "no", "--dir", str(d), "--requirepass",
             CLUSTER_PASSWORD, "--masterauth", CLUSTER_PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        ports.append(port)
        pids.append(proc.pid)
    for p in ports:
        r = redis.Redis(port=p, password=CLUSTER_PASSWORD)
        assert wait_until(lambda r=r: _pings(r), 10), "cluster redis-server did not start"
    subprocess.run(["redis-cli", "--no-auth-warning", "-a", CLUSTER_PASSWORD, "--cluster",
                    "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "1",
                    "--cluster-yes"], check=True, timeout=60, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

    def ready() -> bool:
        """Every node sees the cluster ok and 3 slot ranges with a replica each, and every
        replica is in sync with its master (so a failover can happen)."""
        try:
            for p in ports:
                r = redis.Redis(port=p, password=CLUSTER_PASSWORD)
                if b"cluster_state:ok" not in r.execute_command("CLUSTER", "INFO"):
                    return False
                # [start, end, master, replica…] per range
                ranges = r.execute_command("CLUSTER SLOTS")
                if len(ranges) != 3 or any(len(e) < 4 for e in ranges):
                    return False
                info = r.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            return True
        except redis.RedisError:
            return False

    assert wait_until(ready, 30), "the cluster did not converge"


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
