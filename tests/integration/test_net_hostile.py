"""Hostile use of the network commands from operator and read-only queues.

A node in its own "host" namespace (tests/net_fixtures.py) serves three queues: ``default``
(admin), ``op`` (operator) and ``ro`` (read-only). From the lower queues: port forwards that
could match the same packets as an existing one are refused (409) and forward destinations
that would turn a forward against the node itself are refused (400); bridge leases and DHCP
ranges keep off the network, broadcast and bridge addresses; ``bridge.delete`` leaves alone
bridges core0 did not make; ``ip.*`` reaches only the named namespaces core0 made; netlink
errors reachable from user input are 4xx, never 500. At the end the node still answers an
admin ``core.ping`` within 1 s and logged no traceback.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import code_of
from core0_client.errors import ResultError
from net_fixtures import NetNode, Netns, fetch, netns, node_in_netns, serve, sh, unique

pytestmark = pytest.mark.root

CONFIG = ('[main]\ninclude = []\n'
          '[bus]\nprivate_queues = ["priv"]\n'
          'queues = {default = "admin", op = "operator", ro = "read-only", '
          'priv = "operator"}\n')

NODE_WAN = "198.51.100.1"  #: the node on the "wan" link h1
WAN = "198.51.100.2"  #: a remote host
NODE_CTR = "10.61.0.1"  #: the node on the "container" link h0
CTR = "10.61.0.2"  #: a container behind the node


@dataclass
class Env:
    node: NetNode
    admin: Any
    op: Any
    ro: Any
    wan: Netns
    ctr: Netns
    foreign: Netns  #: a namespace core0 did not make (made with the ip CLI, like the host's)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with node_in_netns(CONFIG) as node, netns("wan") as wan, netns("ctr") as ctr, \
            netns("foreign") as foreign:
        admin, op, ro = node.client(), node.client("op"), node.client("ro")
        try:
            # admin may use any namespace (documented): it wires the test topology
            for link, peer, mine, theirs in (("h0", ctr, NODE_CTR, CTR),
                                            ("h1", wan, NODE_WAN, WAN)):
                admin.ip.link.add(link, "veth", peer="eth0", peer_netns=peer.name, up=True)
                admin.ip.addr.add(link, f"{mine}/24")
                peer.run("ip", "addr", "add", f"{theirs}/24", "dev", "eth0")
                peer.run("ip", "link", "set", "eth0", "up")
            ctr.run("ip", "route", "add", "default", "via", NODE_CTR)
            yield Env(node, admin, op, ro, wan, ctr, foreign)
        finally:
            for c in (admin, op, ro):
                c.close()


def _state(env: Env) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((env.node.state_dir / "net" / "state.json").read_text())
    return data


# ---------------------------------------------------------------- port forwards


def test_overlapping_forwards_are_refused(env: Env) -> None:
    op, ro = env.op, env.ro
    srv = serve(env.ctr, 8080, "ctr")
    try:
        op.nft.forward_add("user:a", CTR, {"3000": 8080})
        assert fetch(env.wan, f"http://{NODE_WAN}:3000/") == f"ctr {WAN}"
        # the destination cannot become the node's own address afterwards either
        assert code_of(op.ip.addr.add, "h1", f"{CTR}/32") == 409
        table = op.nft.show()["text"]
        # every later source that could match the same packets: 409, nothing changes
        for owner, src in (("user:b", "h1:3000"), ("user:c", "10.0.0.0/8:3000"),
                           ("user:c", f"{NODE_WAN}:3000"), ("user:c", "h*:3000|tcp+udp"),
                           ("user:c", "0.0.0.0/0:3000"), ("user:a", "h1:3000"),
                           ("user:b", "3000")):
            assert code_of(op.nft.forward_add, owner, CTR, {src: 8080}) == 409, src
        assert op.nft.show()["text"] == table
        assert fetch(env.wan, f"http://{NODE_WAN}:3000/") == f"ctr {WAN}"
        # the same forward again is a no-op; another protocol or port does not overlap
        op.nft.forward_add("user:a", CTR, {"3000": 8080})
        op.nft.forward_add("user:b", CTR, {"3000|udp": 8080, "h1:3001": 8080})
        # addresses and links overlap by their ranges and prefixes
        op.nft.forward_add("user:c", CTR, {f"{NODE_WAN}:3002": 8080, "h0:3003": 8080})
        for src in ("198.51.100.0/24:3002", "0.0.0.0/0:3002", "h1:3002", "h*:3003",
                    "h0:3003|tcp+udp", "3003"):
            assert code_of(op.nft.forward_add, "user:d", CTR, {src: 8080}) == 409, src
        op.nft.forward_add("user:d", CTR, {f"{NODE_CTR}:3002": 8080, "h1*:3003": 8080})
        # overlapping sources within one call: all or nothing
        assert code_of(op.nft.forward_add, "user:e", CTR,
                       {"3010": 8080, "h0:3010": 8080}) == 409
        assert code_of(op.nft.forward_add, "user:e", CTR,
                       {"4000|tcp+udp": 8080, "4000|udp": 8081}) == 409
        assert op.nft.forward_list("user:e") == []
        assert fetch(env.wan, f"http://{NODE_WAN}:3001/") == f"ctr {WAN}"
        assert code_of(ro.nft.forward_add, "user:f", CTR, {"5000": 8080}) == 403
    finally:
        srv.kill()
        for owner in ("user:a", "user:b", "user:c", "user:d", "user:e"):
            env.admin.nft.owner_remove(owner)
    assert env.admin.nft.show()["text"] == ""


def test_workloads_forwards_only_through_their_commands(env: Env) -> None:
    """A container's or VM's forwards (owners ``container:<id>``, ``vm:<id>``) change below
    admin only through corex/kvm commands, which check who may act on that workload: an
    operator's ``nft.owner_remove container:7`` removed an admin container's forwards."""
    admin, op = env.admin, env.op
    try:
        admin.nft.forward_add("container:7", CTR, {"3100": 8080})
        admin.nft.forward_add("vm:web", CTR, {"3101": 8080})
        for owner in ("container:7", "vm:web"):
            assert code_of(op.nft.owner_remove, owner) == 403
            assert code_of(op.nft.forward_remove, owner, ["3100", "3101"]) == 403
            assert code_of(op.nft.forward_add, owner, CTR, {"3102": 8080}) == 403
        assert len(op.nft.forward_list("container:7")) == 1  # listed, untouched
        assert len(op.nft.forward_list("vm:web")) == 1
        op.nft.forward_add("user:op", CTR, {"3103": 8080})  # its own owners: fine
        assert op.nft.owner_remove("user:op") == 1
    finally:
        for owner in ("container:7", "vm:web", "user:op"):
            admin.nft.owner_remove(owner)
    assert admin.nft.show()["text"] == ""


def push(env: Env, queue: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """The result of one command pushed on ``queue`` with redis-cli's means (the private
    queue's ids carry its prefix)."""
    r = redis.Redis(unix_socket_path=env.node.socket, socket_timeout=60)
    try:
        jid = ("priv." if queue == "priv" else "") + uuid.uuid4().hex
        r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command,
                                             "arguments": args}))
        raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 30)
        assert raw is not None, (queue, command, "no answer")
        return dict(json.loads(raw))
    finally:
        r.close()


def test_user_owners_belong_to_their_maker(env: Env) -> None:
    """A ``user:`` owner's forwards change only from a queue that may act on its maker's
    jobs (an operator removed an admin's ``user:`` forwards, a private queue another
    queue's): 403, nothing touched; the maker and admin may; a name whose last forward went
    is free again."""
    admin, op = env.admin, env.op
    add = {"ip": CTR, "forwards": {"3113": 8080}}
    try:
        admin.nft.forward_add("user:adm", CTR, {"3110": 8080})
        op.nft.forward_add("user:opr", CTR, {"3111": 8080})
        assert push(env, "priv", "nft.forward_add", {"owner": "user:prv", "ip": CTR,
                                                     "forwards": {"3112": 8080}})["code"] == 0
        refused = [("op", "user:adm"), ("priv", "user:adm"), ("op", "user:prv"),
                   ("priv", "user:opr")]
        for queue, owner in refused:
            for cmd, args in (("nft.owner_remove", {"owner": owner}),
                              ("nft.forward_remove", {"owner": owner, "src": ["3110", "3111",
                                                                             "3112"]}),
                              ("nft.forward_add", {"owner": owner, **add})):
                res = push(env, queue, cmd, args)
                assert (res["state"], res["code"]) == ("ERROR", 403), (queue, cmd, owner, res)
                assert "may not change its forwards" in res["data"]
        assert sorted(f["owner"] for f in op.nft.forward_list()) == [
            "user:adm", "user:opr", "user:prv"]  # untouched
        assert json.loads(push(env, "priv", "nft.owner_remove",
                               {"owner": "user:prv"})["data"]) == 1
        assert admin.nft.owner_remove("user:opr") == 1
        assert "user:opr" not in _state(env)["owners"]
        op.nft.forward_add("user:prv", CTR, {"3114": 8080})  # a free name again
        assert op.nft.owner_remove("user:prv") == 1
    finally:
        for owner in ("user:adm", "user:opr", "user:prv"):
            admin.nft.owner_remove(owner)
    assert _state(env)["owners"] == {}
    assert admin.nft.show()["text"] == ""


def test_forwards_never_take_the_nodes_own_ports(env: Env) -> None:
    """A forward on a port the node listens on would take it from the node's service."""
    srv = serve(env.node.ns, 2222, "node")  # like the node's sshd: 0.0.0.0:2222
    try:
        for src in ("2222", "h1:2222", f"{NODE_WAN}:2222", "198.51.100.0/24:2222",
                    "2222|tcp+udp"):
            assert code_of(env.op.nft.forward_add, "user:x", CTR, {src: 22}) == 409, src
        assert fetch(env.wan, f"http://{NODE_WAN}:2222/") == f"node {WAN}"
        env.op.nft.forward_add("user:x", CTR, {"2222|udp": 22})  # another protocol
    finally:
        srv.kill()
        env.op.nft.owner_remove("user:x")


def test_racing_forwards_one_wins(env: Env) -> None:
    """20 owners race for one port (and overlapping spellings of it): exactly one gets it."""
    srcs = ["5000", "h1:5000", "h*:5000", f"{NODE_WAN}:5000", "198.51.100.0/24:5000"]
    jobs = [env.op.raw("nft.forward_add", {"owner": f"user:r{i}", "ip": CTR,
                                           "forwards": {srcs[i % len(srcs)]: 80}})
            for i in range(20)]
    results = [j.get(60) for j in jobs]
    won = [r for r in results if r.state.value == "SUCCESS"]
    assert len(won) == 1, [(r.state, r.code) for r in results]
    assert sorted({r.code for r in results if r not in won}) == [409]
    assert len(env.op.nft.forward_list()) == 1
    for i in range(20):
        env.op.nft.owner_remove(f"user:r{i}")
    assert env.op.nft.forward_list() == []


def test_forward_count_is_bounded(env: Env) -> None:
    """At most 4096 forwards on the node (503 beyond), and the node keeps answering."""
    try:
        for k in range(4):
            env.op.nft.forward_add(f"user:n{k}", CTR, {str(10000 + k * 1024 + i): 80
                                                       for i in range(1024)})
        assert code_of(env.op.nft.forward_add, "user:n4", CTR, {"9999": 80}) == 503
        assert env.admin.json("core.ping", timeout=1).startswith("PONG")
    finally:
        for k in range(4):
            env.op.nft.owner_remove(f"user:n{k}")
    assert env.op.nft.forward_list() == []


@pytest.mark.parametrize("ip", [
    "127.0.0.1", "127.1.2.3", "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1",
    "239.255.255.250", "240.0.0.1", "169.254.169.254",
    NODE_WAN, NODE_CTR,  # the node itself: would redirect traffic to its own services
    "10.61.0.255", "10.61.0.0",  # broadcast and network address of a node's network
])
def test_forward_destinations_are_checked(env: Env, ip: str) -> None:
    assert code_of(env.op.nft.forward_add, "user:x", ip, {"3100": 22}) == 400
    assert env.op.nft.forward_list() == []
    assert env.op.nft.show()["text"] == ""


@pytest.mark.parametrize("src", ["127.0.0.1:3100", "127.0.0.0/8:3100", "224.0.0.1:3100",
                                 "224.0.0.0/4:3100", "0.0.0.0:3100", "255.255.255.255:3100"])
def test_forward_sources_that_never_match_are_refused(env: Env, src: str) -> None:
    assert code_of(env.op.nft.forward_add, "user:x", CTR, {src: 80}) == 400


# ---------------------------------------------------------------- bridges


@pytest.mark.parametrize("network", [
    {"start": "10.62.0.0", "end": "10.62.0.20"},  # the network address
    {"start": "10.62.0.10", "end": "10.62.0.255"},  # the broadcast address
    {"start": "10.62.0.1", "end": "10.62.0.20"},  # the bridge's own address
    {"start": "10.62.0.2", "end": "10.62.0.254", "cidr": "10.62.0.100/24"},  # includes it
    {"start": "10.62.1.2", "end": "10.62.1.20"},  # outside the network
    {"cidr": "10.62.0.0/24"}, {"cidr": "10.62.0.255/24"}, {"cidr": "127.0.0.2/8"},
    {"cidr": "224.0.0.2/24"}, {"cidr": "0.0.0.1/0"},
])
def test_bridge_ranges_keep_off_reserved_addresses(env: Env, network: dict[str, str]) -> None:
    net = {"mode": "dnsmasq", "cidr": "10.62.0.1/24", "start": "10.62.0.10",
           "end": "10.62.0.20", **network}
    assert code_of(env.op.bridge.create, "hbr0", network=net) == 400
    assert "hbr0" not in env.op.bridge.list()


def test_bridge_dns_is_not_forwarded_away(env: Env) -> None:
    """A forward that would take DNS/DHCP from a new bridge's dnsmasq: the bridge is refused."""
    op = env.op
    for src in ("53|udp", "10.66.0.0/24:53", "hb*:67|udp"):
        op.nft.forward_add("user:dns", CTR, {src: 53})
        try:
            assert code_of(op.bridge.create, "hbr3", network={
                "mode": "dnsmasq", "cidr": "10.66.0.1/24", "start": "10.66.0.10",
                "end": "10.66.0.20"}) == 409, src
            assert "hbr3" not in op.bridge.list()
        finally:
            op.nft.owner_remove("user:dns")
    op.nft.forward_add("user:dns", CTR, {"10.67.0.0/24:53": 53})  # another network: fine
    try:
        op.bridge.create("hbr3", network={"mode": "static", "cidr": "10.66.0.1/24"})
        op.bridge.delete("hbr3")
    finally:
        op.nft.owner_remove("user:dns")


def test_bridge_static_leases_and_delete(env: Env) -> None:
    op, admin = env.op, env.admin
    op.bridge.create("hbr1", network={"mode": "dnsmasq", "cidr": "10.63.0.1/24",
                                      "start": "10.63.0.10", "end": "10.63.0.20"})
    try:
        mac = "02:00:00:00:63:01"
        for ip in ("10.63.0.0", "10.63.0.255", "10.63.0.1", "10.64.0.5", "0.0.0.0",
                   "255.255.255.255"):
            assert code_of(op.bridge.add_host, "hbr1", ip, mac) == 400, ip
        for bad in ("01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"):
            assert code_of(op.bridge.add_host, "hbr1", "10.63.0.5", bad) == 400, bad
        assert op.bridge.info("hbr1")["hosts"] == {}
        op.bridge.add_host("hbr1", "10.63.0.5", mac)
        assert op.bridge.info("hbr1")["hosts"] == {mac: "10.63.0.5"}
        # the bridge's DNS/DHCP (dnsmasq, listening on it) cannot be forwarded away
        for src in ("53|udp", "53|tcp", "10.63.0.0/24:53|udp", "hbr1:67|udp"):
            assert code_of(op.nft.forward_add, "user:x", CTR, {src: 53}) == 409, src
        # core0's bridge is removed by bridge.delete only (with its dnsmasq and rules)
        assert code_of(op.ip.link.delete, "hbr1") == 409
        assert code_of(op.ip.link.name, "hbr1", "hbr9") == 409
        assert code_of(op.ip.link.del_many, ["hbr1"]) == 409
        assert code_of(op.ip.addr.delete, "hbr1", "10.63.0.1/24") == 409
    finally:
        op.bridge.delete("hbr1")
    assert "hbr1" not in op.bridge.list()
    # a bridge core0 did not make (one of the host's): 409 for every role, and it stays
    admin.ip.link.add("hbr2", "bridge")
    try:
        assert code_of(op.bridge.delete, "hbr2") == 409
        assert code_of(admin.bridge.delete, "hbr2") == 409
        assert code_of(op.bridge.delete, "h0") == 409  # not even a bridge
        assert "hbr2" in op.bridge.list()
    finally:
        admin.ip.link.delete("hbr2")
    assert code_of(op.bridge.delete, "hbr2") == 404
    assert code_of(env.ro.bridge.delete, "hbr2") == 403


# ---------------------------------------------------------------- namespaces


def test_namespaces_are_scoped(env: Env) -> None:
    op, ro, admin = env.op, env.ro, env.admin
    foreign = env.foreign.name
    env.foreign.run("ip", "link", "add", "f0", "type", "veth", "peer", "name", "f1")
    for c in (op, ro):
        assert foreign not in c.ip.netns.list()
        assert code_of(c.ip.link.list, netns=foreign) == 404
        assert code_of(c.ip.addr.list, netns=foreign) == 404
        assert code_of(c.ip.route.list, netns=foreign) == 404
        assert code_of(c.ip.link.get, "f0", netns=foreign) == 404
    assert code_of(op.ip.link.delete, "f0", netns=foreign) == 404
    assert code_of(op.ip.addr.add, "f0", "10.65.0.1/24", netns=foreign) == 404
    assert code_of(op.ip.route.add, "10.66.0.0/24", dev="f0", netns=foreign) == 404
    assert code_of(op.ip.link.add, "hx0", "veth", peer="hx1", peer_netns=foreign) == 404
    assert code_of(op.ip.link.add, "hx0", "bridge", netns=foreign) == 404
    assert code_of(op.ip.link.set, "h0", move_to=foreign) == 404
    # 0-core's ip.bridge.* and ip.bond.* keep the same scope
    for cmd, a in (("ip.bridge.add", {"name": "hb0"}), ("ip.bridge.del", {"name": "f0"}),
                   ("ip.bridge.addif", {"name": "hb0", "inf": "f0"}),
                   ("ip.bridge.delif", {"name": "hb0", "inf": "f0"}),
                   ("ip.bond.add", {"bond": "hb0", "interfaces": ["f0"]}),
                   ("ip.bond.del", {"bond": "f0"}), ("ip.bond.list", {})):
        assert code_of(op.sync, cmd, {**a, "netns": foreign}) == 404, cmd
    assert code_of(ro.sync, "ip.bond.list", {"netns": foreign}) == 404
    assert code_of(op.ip.netns.delete, foreign) == 404
    assert code_of(ro.ip.netns.delete, foreign) == 403
    # admin sees and uses it (documented), but core0 never deletes what it did not make
    assert foreign in admin.ip.netns.list()
    assert "f0" in [link["name"] for link in admin.ip.link.list(netns=foreign)]
    assert code_of(admin.ip.netns.delete, foreign) == 409
    assert "f0" in env.foreign.run("ip", "-o", "link").stdout  # untouched
    assert "hx0" not in [link["name"] for link in admin.ip.link.list()]

    # something that is not a namespace (a FIFO: opening it must not hang a worker thread)
    fifo = Path("/run/netns") / unique("fifo")
    os.mkfifo(fifo)
    try:
        assert code_of(op.ip.link.list, netns=fifo.name) == 404
        assert code_of(admin.ip.link.list, netns=fifo.name) == 400
        assert code_of(admin.ip.netns.delete, fifo.name) == 404  # not a namespace
    finally:
        fifo.unlink()

    # a namespace made by core0 is the operator's to use and delete
    own = unique("own")
    op.ip.netns.add(own)
    try:
        assert _state(env)["netns"].keys() == {own}
        assert op.ip.netns.list() == ro.ip.netns.list() == [own]
        op.ip.link.add("hy0", "veth", peer="eth0", peer_netns=own)
        op.ip.addr.add("eth0", "10.67.0.2/24", netns=own)
        assert code_of(op.ip.route.add, "10.68.0.0/24", dev="eth0", netns=own) == 409  # down
        op.ip.link.up("eth0", netns=own)
        op.ip.route.add("10.68.0.0/24", dev="eth0", netns=own)
        assert "10.68.0.0/24" in [r["dst"] for r in ro.ip.route.list(netns=own)]
        op.ip.link.delete("hy0")
        assert code_of(op.ip.link.delete, "lo", netns=own) == 400  # not deletable
    finally:
        op.ip.netns.delete(own)
    assert op.ip.netns.list() == [] and _state(env)["netns"] == {}
    assert code_of(op.ip.netns.delete, own) == 404

    # the same name made again behind core0's back is not core0's namespace
    op.ip.netns.add(own)
    sh("ip", "netns", "del", own)
    sh("ip", "netns", "add", own)
    try:
        assert op.ip.netns.list() == []
        assert code_of(op.ip.link.list, netns=own) == 404
        assert code_of(op.ip.netns.delete, own) == 404
        assert code_of(admin.ip.netns.delete, own) == 409
    finally:
        sh("ip", "netns", "del", own)


# ---------------------------------------------------------------- netlink errors


#: (command, arguments, code) tried from the operator queue; the read-only queue gets 403
BAD: list[tuple[str, dict[str, Any], int]] = [
    ("ip.addr.add", {"name": "h0", "ip": "0.0.0.0/0"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "10.70.0.1/0"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "10.70.0.0/24"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "10.70.0.255/24"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "255.255.255.255/32"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "224.0.0.5/24"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "240.0.0.5/24"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "127.0.0.5/8"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "::/0"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "::1/128"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "ff02::1/64"}, 400),
    ("ip.addr.add", {"name": "h0", "ip": "::ffff:10.0.0.1/96"}, 400),
    ("ip.addr.add", {"name": "nope", "ip": "10.70.0.1/24"}, 404),
    ("ip.addr.add", {"name": "h0", "ip": f"{NODE_CTR}/24"}, 409),
    ("ip.addr.del", {"name": "h0", "ip": "10.70.0.1/24"}, 404),
    ("ip.route.add", {"dst": "10.71.0.0/24", "dev": "hdown"}, 409),  # the link is down
    ("ip.route.add", {"dst": "fd00:71::/64", "dev": "hdown"}, 409),
    ("ip.route.add", {"dst": "10.71.0.0/24", "gw": "10.61.0.9", "dev": "hdown"}, 400),
    ("ip.route.add", {"dst": "10.71.0.0/24", "gw": "192.0.2.1"}, 400),  # unreachable
    ("ip.route.add", {"dst": "10.71.0.0/24", "gw": "0.0.0.0"}, 400),
    ("ip.route.add", {"dst": "10.71.0.0/24", "gw": "224.0.0.1"}, 400),
    ("ip.route.add", {"dst": "10.71.0.0/24", "gw": "255.255.255.255"}, 400),
    ("ip.route.add", {"dst": "10.71.0.0/24", "gw": "10.61.0.255"}, 400),
    ("ip.route.add", {"dst": "10.71.0.0/24", "dev": "h0", "src": "10.99.0.1"}, 400),
    ("ip.route.add", {"dst": "10.71.0.0/24", "dev": "h0", "src": "224.0.0.1"}, 400),
    ("ip.route.add", {"dst": "10.61.0.0/24", "dev": "h0"}, 409),  # exists
    ("ip.route.add", {"dst": "10.71.0.0/24", "dev": "nope"}, 404),
    ("ip.route.del", {"dst": "10.72.0.0/16"}, 404),
    ("ip.route.list", {"dev": "nope"}, 404),
    ("ip.link.set", {"name": "hbr", "master": "hbr"}, 400),  # a loop
    ("ip.link.set", {"name": "h0", "master": "h1"}, 400),  # a veth takes no slaves
    ("ip.link.set", {"name": "h0", "master": "nope"}, 404),
    ("ip.link.set", {"name": "h0", "hwaddr": "01:00:00:00:00:01"}, 400),
    ("ip.link.set", {"name": "h0", "hwaddr": "00:00:00:00:00:00"}, 400),
    ("ip.link.set", {"name": "lo", "up": False}, 409),
    ("ip.link.set", {"name": "lo", "mtu": 68}, 409),
    ("ip.link.down", {"name": "lo"}, 409),
    ("ip.link.del", {"name": "lo"}, 409),
    ("ip.link.name", {"name": "lo", "new": "lo2"}, 409),
    ("ip.link.name", {"name": "h0", "new": "h1"}, 409),
    ("ip.link.del_many", {"names": ["hdown", "lo"]}, 409),
    ("bridge.nic-add", {"name": "hbr", "nic": "hbr"}, 400),
    ("bridge.nic-add", {"name": "h0", "nic": "hdown"}, 400),  # not a bridge
    ("bridge.nic-add", {"name": "hbr", "nic": "nope"}, 404),
    ("bridge.nic-add", {"name": "hbr", "nic": "lo"}, 409),
    ("ip.link.add", {"name": "hx2", "kind": "bridge", "master": "h0"}, 400),
    ("ip.link.add", {"name": "hx3", "kind": "bridge", "hwaddr": "ff:ff:ff:ff:ff:ff"}, 400),
    ("ip.link.add", {"name": "hx4", "kind": "vxlan", "id": 9, "remote": "0.0.0.0"}, 400),
    ("ip.link.add", {"name": "hx5", "kind": "vxlan", "id": 9, "remote": "255.255.255.255"},
     400),
    ("ip.link.add", {"name": "hx6", "kind": "vxlan", "id": 9, "local": "224.1.1.1"}, 400),
    ("ip.link.add", {"name": "hx7", "kind": "vxlan", "id": 9, "group": "239.1.1.1"}, 400),
    ("ip.link.add", {"name": "hx8", "kind": "veth", "peer": "h0"}, 409),
    ("ip.netns.add", {"name": "../x"}, 400),
    ("nft.forward_remove", {"owner": "user:nobody", "src": ["3000"]}, 404),
]


@pytest.fixture(scope="module")
def links(env: Env) -> Iterator[None]:
    """hdown: a veth that stays down; hbr: a plain bridge (made by the admin)."""
    env.admin.ip.link.add("hdown", "veth", peer="hdownp")
    env.admin.ip.addr.add("hdown", "fd00:70::1/64")
    env.admin.ip.link.add("hbr", "bridge")
    yield
    env.admin.ip.link.del_many(["hdown", "hbr"])


@pytest.mark.parametrize("command,args,code", BAD, ids=[f"{c}-{i}" for i, (c, _, _) in
                                                        enumerate(BAD)])
def test_netlink_errors_are_4xx(env: Env, links: None, command: str, args: dict[str, Any],
                                code: int) -> None:
    before = env.admin.ip.link.list()
    with pytest.raises(ResultError) as e:
        env.op.json(command, args)
    assert e.value.code == code, e.value
    if command != "ip.netns.add":
        with pytest.raises(ResultError) as e:
            env.ro.json(command, args)
        assert e.value.code == (404 if command == "ip.route.list" else 403), e.value
    assert env.admin.ip.link.list() == before


def test_node_still_answers(env: Env) -> None:
    """After all of the above: an admin ping within 1 s, and no handler failed with 500."""
    assert env.admin.json("core.ping", timeout=1).startswith("PONG")
    assert "Traceback" not in env.node.log_text()


# ---------------------------------------------------------------- core0's own links


def test_core0s_links_are_kept_from_lower_roles(env: Env) -> None:
    """Below admin, the links core0 makes in the node's namespace (its NAT bridges, a
    segment's bridge and uplink, a VM's tap, a container's veth) change only through core0's
    own commands, and their names cannot be taken ahead: an operator's veth enslaved to a
    segment bridge would join another queue's VLAN, a VM's tap moved into its namespace
    would take that VM's traffic. Admin may; other namespaces' names are free."""
    from core0.sandbox.store import node_tag

    op, admin = env.op, env.admin
    seg, tap = "c0vlb42", "c0t0a0000000042"
    veth = "vc" + node_tag(env.node.state_dir)[:4] + "77"  # container 77's host-side nic
    admin.ip.link.add(seg, "bridge", up=True)  # as core0 makes them (admin may)
    admin.ip.link.add(tap, "veth", peer="c0tpeer")
    own = unique("opns")
    op.ip.netns.add(own)
    try:
        op.ip.link.add("hv0", "veth", peer="hv1")
        op.sync("bridge.create", {"name": "opbr0"})
        for call, a, kw in (
                (op.ip.link.add, ("hv2", "veth"), {"peer": "hv3", "master": seg}),
                (op.ip.link.add, ("c0vlb43", "bridge"), {}),
                (op.ip.link.add, (veth, "veth"), {"peer": "hv4"}),
                (op.ip.link.add, ("hv5", "veth"), {"peer": "c0t0a0000000043"}),
                (op.ip.link.add, ("hm0", "macvlan"), {"parent": seg}),
                (op.ip.link.add_many, ([{"name": "hv6", "kind": "bridge"},
                                        {"name": "kvm0", "kind": "bridge"}],), {}),
                (op.ip.link.set, ("hv0",), {"master": seg}),
                (op.ip.link.set, (tap,), {"move_to": own}),
                (op.ip.link.set, (seg,), {"up": False}),
                (op.ip.link.down, (seg,), {}),
                (op.ip.link.mtu, (tap, 1400), {}),
                (op.ip.link.name, ("hv0", "c0vx7"), {}),
                (op.ip.link.name, (tap, "hv9"), {}),
                (op.ip.link.delete, (tap,), {}),
                (op.sync, ("ip.link.del_many", {"names": [tap]}), {}),
                (op.ip.addr.add, (seg, "10.70.0.1/24"), {})):
            assert code_of(call, *a, **kw) == 409, (call, a, kw)
        for cmd, args in (
                ("ip.bridge.addif", {"name": seg, "inf": "hv0"}),
                ("ip.bridge.add", {"name": "c0vxb9"}),
                ("ip.bridge.del", {"name": seg}),
                ("ip.bond.add", {"bond": "hb1", "interfaces": [tap]}),
                ("bridge.nic-add", {"name": seg, "nic": "hv0"}),
                ("bridge.nic-add", {"name": "opbr0", "nic": tap}),
                ("bridge.nic-remove", {"nic": tap}),
                ("bridge.create", {"name": "c0vlb44"}),
                ("bridge.delete", {"name": "core0"}),  # the containers' NAT bridge
                ("ip.netns.add", {"name": "core0-x"})):
            assert code_of(op.sync, cmd, args) == 409, cmd
        links = {x["name"]: x for x in admin.ip.link.list()}
        assert {seg, tap, "hv0"} <= set(links) and not {"hv2", "c0vlb43", veth} & set(links)
        assert links["hv0"]["master"] in ("", None) and links[seg]["up"]
        # the operator's own bridge and namespace are its to use, with any name in the latter
        op.sync("bridge.nic-add", {"name": "opbr0", "nic": "hv0"})
        op.ip.link.add("c0vlb1", "bridge", netns=own)
        # admin may (core0's tools and the operator of the machine)
        admin.ip.link.set("hv1", master=seg)
        admin.ip.link.delete(tap)
    finally:
        op.sync("bridge.delete", {"name": "opbr0"})
        for name in ("hv0", seg, tap):
            try:
                admin.ip.link.delete(name)
            except ResultError:
                pass
        op.ip.netns.delete(own)
