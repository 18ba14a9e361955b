"""Fleet fixtures: core0 nodes (``core0 dev``) sharing one real redis-server or a real Redis
Cluster, each with its own hash-tagged prefix and node id, optionally as its own ACL user, each
optionally in a network namespace of its own on a LAN (a bridge in a hub namespace that holds
Redis)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from conftest import Node, RedisServer, start_node
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot


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
def _hub(stack: contextlib.ExitStack) -> Iterator[Lan]:
    """The hub namespace with the LAN's bridge (``<net>.1/24``)."""
    from conftest import require_root
    from net_fixtures import netns

    require_root()
    hub = stack.enter_context(netns("hub"))
    # a MAC of its own: a bridge without one takes its lowest port's, so it would change as
    # nodes join, and the nodes' ARP entries for Redis would go stale (their packets lost
    # until the entry is probed again: seconds without Redis, heartbeats missed)
    hub.run("ip", "link", "add", "br0", "address", "02:c0:00:00:00:01", "type", "bridge")
    hub.run("ip", "addr", "add", "10.240.0.1/24", "dev", "br0")
    hub.run("ip", "link", "set", "br0", "up")
    yield Lan(hub, stack)


@contextlib.contextmanager
def fleet_lan(base: Path) -> Iterator[tuple[Lan, RedisServer]]:
    """A hub namespace with a bridge and the fleet's redis-server on it (and its unix socket
    for the tests); everything removed afterwards (by PID and by namespace name)."""
    from conftest import kill_tree, start_redis

    with contextlib.ExitStack() as stack:
        lan = stack.enter_context(_hub(stack))
        srv = start_redis(base, bind=lan.redis_addr, netns=lan.hub.name)
        try:
            yield lan, srv
        finally:
            kill_tree(srv.pid)


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(ns_name: str) -> Iterator[None]:
    """The calling thread (and every thread it starts meanwhile) in network namespace
    ``ns_name``: its TCP connections reach the addresses of that namespace; back to its own
    namespace afterwards. (setns(2) with CLONE_NEWNET acts on the calling thread only.)"""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(f"/var/run/netns/{ns_name}")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's own namespace")
    finally:
        os.close(own)


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


class Unsettled(Exception):
    """The cluster's nodes do not (yet) agree on a slot's master."""


@dataclass
class Cluster:
    """A real Redis Cluster: 3 masters + 3 replicas, each server on an address of its own on
    the fleet's LAN (in its hub namespace), announcing that address. A server is named by its
    port (unique in the cluster)."""

    hosts: list[str]
    ports: list[int]
    pids: list[int]
    sockets: list[str]
    dead: set[int] = field(default_factory=set)

    def host(self, port: int) -> str:
        return self.hosts[self.ports.index(port)]

    def url(self, port: int) -> str:
        return f"redis://{self.host(port)}:{port}"

    def redis(self, port: int, **kw: Any) -> redis.Redis:
        """A plain client of one server (over the LAN: the caller is in the hub)."""
        return redis.Redis(host=self.host(port), port=port, password=CLUSTER_PASSWORD, **kw)

    def socket_of(self, port: int) -> str:
        """The server's unix socket (reaches it from any namespace of this machine)."""
        return self.sockets[self.ports.index(port)]

    def client(self) -> RedisCluster:
        """A cluster client started from the nodes that were not killed."""
        live = [p for p in self.ports if p not in self.dead]
        return RedisCluster(startup_nodes=[ClusterNode(self.host(p), p) for p in live],
                                  password=CLUSTER_PASSWORD)

    def kill(self, port: int) -> None:
        """SIGKILL one of the servers."""
        from conftest import kill_tree

        self.dead.add(port)
        kill_tree(self.pid_of(port), signal.SIGKILL)

    def owner(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as every live server sees it
        (``Unsettled`` while they disagree, e.g. during a failover, whose news spreads by
        gossip; a cluster client asks a random node)."""
        slot = key_slot(key.encode())
        seen: set[int] = set()
        for p in self.ports:
            if p in self.dead:
                continue
            try:
                reply = self.redis(p, socket_timeout=5).execute_command("CLUSTER SLOTS")
            except redis.RedisError as e:
                raise Unsettled(f"{p}: {e}") from e
            owners = [int(e[2][1]) for e in reply if int(e[0]) <= slot <= int(e[1])]
            seen.add(owners[0] if owners else -1)
        if len(seen) != 1 or -1 in seen:
            raise Unsettled(f"slot {slot}: masters seen {sorted(seen)}")
        return seen.pop()

    def settled_owner(self, key: str) -> int | None:
        """:meth:`owner`, or None while unsettled (for ``wait_until``)."""
        try:
            return self.owner(key)
        except Unsettled:
            return None

    def replica_of(self, port: int) -> int:
        """A replica of the master on ``port``."""
        for e in self.redis(port).execute_command("CLUSTER SLOTS"):
            if int(e[2][1]) == port and len(e) > 3:
                return int(e[3][1])
        raise LookupError(f"no replica of {port}")

    def pid_of(self, port: int) -> int:
        return self.pids[self.ports.index(port)]

    def stop(self) -> None:
        from conftest import kill_tree

        for pid in self.pids:
            kill_tree(pid)


#: the cluster's servers: <net>.2 … <net>.7, ports 7001 … 7006 (the hub is the test's own)
_CLUSTER_HOSTS = 6


@contextlib.contextmanager
def cluster_lan(base: Path) -> Iterator[tuple[Lan, Cluster]]:
    """A LAN (:func:`fleet_lan`'s hub and bridge) holding a 3-master + 3-replica Redis Cluster,
    each server on an address of its own, announcing it (``cluster-announce-ip``) so that
    every namespace on the LAN reaches every server. The calling thread is moved into the hub
    namespace for the duration (:func:`entered`): the test's cluster clients reach the
    servers at the addresses the cluster announces, as the nodes do. Everything is removed
    afterwards (by PID and by namespace name)."""
    from conftest import require

    require("redis-server", "redis-cli")
    with contextlib.ExitStack() as stack:
        lan = stack.enter_context(_hub(stack))
        cluster = Cluster([], [], [], [])
        stack.callback(cluster.stop)
        for i in range(_CLUSTER_HOSTS):
            lan.hub.run("ip", "addr", "add", f"{lan.net}.{2 + i}/24", "dev", "br0")
        stack.enter_context(entered(lan.hub.name))
        _cluster_up(base, lan, cluster)
        yield lan, cluster


def _cluster_up(base: Path, lan: Lan, c: Cluster) -> None:
    import subprocess  # test fixture only

    from conftest import wait_until

    for i in range(_CLUSTER_HOSTS):
        host, port = f"{lan.net}.{2 + i}", 7001 + i
        d = base / f"cluster-{port}"
        d.mkdir(parents=True)
        sock = str(d / "redis.sock")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lan.hub.name,
             "redis-server", "--port", str(port), "--bind", host, "--cluster-enabled", "yes",
             "--cluster-announce-ip", host, "--cluster-config-file", str(d / "nodes.conf"),
             "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
             "--dir", str(d), "--unixsocket", sock, "--unixsocketperm", "700",
             "--requirepass", CLUSTER_PASSWORD, "--masterauth", CLUSTER_PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        c.hosts.append(host)
        c.ports.append(port)
        c.pids.append(proc.pid)
        c.sockets.append(sock)
    for p in c.ports:
        r = c.redis(p)
        assert wait_until(lambda r=r: _pings(r), 10), "cluster redis-server did not start"
    subprocess.run(["redis-cli", "--no-auth-warning", "-a", CLUSTER_PASSWORD, "--cluster",
                    "create", *[f"{c.host(p)}:{p}" for p in c.ports], "--cluster-replicas",
                    "1", "--cluster-yes"], check=True, timeout=60, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

    def ready() -> bool:
        """Every node sees the cluster ok and 3 slot ranges with a replica each, and every
        replica is in sync with its master (so a failover can happen)."""
        try:
            for p in c.ports:
                r = c.redis(p)
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


def cluster_user(cluster: Cluster, node_id: str, password: str) -> None:
    """:func:`node_user` on every server of the cluster (ACLs are per server, not replicated:
    a replica promoted by a failover must know the node's user too)."""
    for p in cluster.ports:
        if p not in cluster.dead:
            cluster.redis(p).execute_command(
                "ACL", "SETUSER", node_id, "reset", "on", f">{password}",
                f"~{{{node_id}}}:*", "~nodes:*", "+@all", "-@dangerous", "+info")


def start_cluster_node(cluster: Cluster, lan: Lan, base: Path, node_id: str, *,
                       tags: str = "", user: bool = False, url_port: int | None = None,
                       env: dict[str, str] | None = None) -> FleetNode:
    """``core0 dev`` in a network namespace of its own on the LAN, consuming ``{<id>}:`` on the
    cluster (``redis.cluster``), which it reaches over the LAN at the address of ``url_port``'s
    server (the slot lookup starts there); ``user``: as an ACL user of its own, else with the
    cluster's password."""
    from conftest import start_node

    prefix = f"{{{node_id}}}:"
    e = {"CORE0_REDIS_CLUSTER": "true", "CORE0_NODE_ID": node_id, "CORE0_NODE_TAGS": tags,
         "CORE0_NODE_HEARTBEAT": "1", "CORE0_NODE_TTL": "3", "CORE0_BUS_BLOCK_TIMEOUT": "1",
         # plain TCP on a LAN of the test's own namespaces (TLS to a remote Redis: test_redis_tls)
         "CORE0_REDIS_INSECURE": "true", "CORE0_REDIS_PASSWORD": CLUSTER_PASSWORD,
         **(env or {})}
    if user:
        cluster_user(cluster, node_id, f"pw-{node_id}")
        e.update(CORE0_REDIS_USERNAME=node_id, CORE0_REDIS_PASSWORD=f"pw-{node_id}")
    url_port = url_port or cluster.ports[0]
    owner = cluster.owner(f"{prefix}core:default")
    ns, addr = lan.join()
    # the readiness ping from here goes to the slot's master through its unix socket
    n = start_node(base / node_id, extra=["--redis-url", cluster.url(url_port),
                                          "--prefix", prefix],
                   env=e, port=owner, prefix=prefix, password=CLUSTER_PASSWORD, netns=ns,
                   socket_path=cluster.socket_of(owner))
    return FleetNode(node_id, prefix, n, ns, addr)


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
