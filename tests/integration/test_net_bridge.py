"""bridge.* and nft forwards end to end, inside namespaces (see tests/net_fixtures.py).

Topology (every namespace is made by the fixtures; the root namespace is never touched)::

    wan (remote server 198.18.0.2:8000)
      │ eth0 ── w0 198.18.0.1/24
    host (the core0 node runs here)
      │ br0 10.231.0.1/24: NAT, dnsmasq DHCP .100-.150, static lease .50
      │ l0 ── eth0 (DHCP)
    lan (a "container": HTTP server on 8080)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from core0_client.errors import ResultError
from net_fixtures import (
    NetNode,
    Netns,
    dhcp,
    dns_answers,
    fetch,
    mac_of,
    net_node,
    netns,
    serve,
)

pytestmark = pytest.mark.root
__all__ = ["net_node"]

BR = "br0"
NET = "10.231.0.0/24"
STATIC = "10.231.0.50"


@dataclass
class Topo:
    node: NetNode
    c: Any
    wan: Netns
    lan: Netns
    host: Netns


def _assert_clean(c: Any) -> None:
    """Nothing of core0's is left: no bridge, no forward, no nft table, only lo and w0."""
    assert c.bridge.list() == []
    assert c.nft.forward_list() == []
    assert c.nft.show() == {"text": "", "rules": []}
    assert {link["name"] for link in c.ip.link.list()} <= {"lo", "w0"}


@pytest.fixture(scope="module")
def topo(net_node: NetNode) -> Iterator[Topo]:
    c = net_node.client()
    with netns("wan") as wan, netns("lan") as lan:
        c.ip.link.add("w0", "veth", peer="eth0", peer_netns=wan.name, up=True)
        c.ip.addr.add("w0", "198.18.0.1/24")
        wan.run("ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")
        wan.run("ip", "link", "set", "eth0", "up")
        serve(wan, 8000, "wan")
        try:
            yield Topo(net_node, c, wan, lan, net_node.ns)
            _assert_clean(c)
        finally:
            for name in ("l0",):
                try:
                    c.ip.link.delete(name)
                except ResultError:
                    pass
            if BR in c.bridge.list():
                c.bridge.delete(BR)
            c.close()


@pytest.fixture(scope="module")
def lan_bridge(topo: Topo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    """br0 (NAT + DHCP) with the lan namespace plugged in and leased its static address."""
    c, lan = topo.c, topo.lan
    tmp = tmp_path_factory.mktemp("dhcp")
    info = c.bridge.create(BR, network={"mode": "dnsmasq", "nat": True,
                                        "cidr": "10.231.0.1/24", "start": "10.231.0.100",
                                        "end": "10.231.0.150"})
    try:
        assert info["managed"] and info["dnsmasq"], info
        assert "10.231.0.1/24" in info["addrs"]
        c.ip.link.add("l0", "veth", peer="eth0", peer_netns=lan.name)
        c.bridge.nic_add(BR, "l0")
        assert c.bridge.nic_list(BR) == ["l0"]

        # a dynamic lease from the range, with router and DNS = the bridge
        ip, router, dns = dhcp(lan, "eth0", tmp)
        assert ip_address("10.231.0.100") <= ip_address(ip) <= ip_address("10.231.0.150")
        assert (router, dns) == ("10.231.0.1", "10.231.0.1")
        leases = c.bridge.info(BR)["leases"]
        mac = mac_of(lan, "eth0")
        assert [(le["mac"], le["ip"]) for le in leases] == [(mac, ip)]

        # a static lease: the same client now gets the fixed address
        c.bridge.add_host(BR, STATIC, mac)
        c.bridge.add_host(BR, STATIC, mac)  # idempotent
        with pytest.raises(ResultError) as e:
            c.bridge.add_host(BR, "10.231.0.51", mac)
        assert e.value.code == 409
        assert c.bridge.info(BR)["hosts"] == {mac: STATIC}
        lan.run("ip", "-4", "addr", "flush", "dev", "eth0")
        ip, _, _ = dhcp(lan, "eth0", tmp)
        assert ip == STATIC
        yield topo
    finally:
        try:
            c.ip.link.delete("l0")
        except ResultError:
            pass
        pid = c.bridge.info(BR)["dnsmasq"]
        c.bridge.delete(BR)
        assert pid and not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_nat_bridge_with_dhcp_reaches_remote_server(lan_bridge: Topo) -> None:
    body = fetch(lan_bridge.lan, "http://198.18.0.2:8000/")
    # the remote server sees the host's address: masqueraded
    assert body == "wan 198.18.0.1"
    # dnsmasq answers DNS on the bridge (no upstream here: any well-formed reply will do)
    reply = dns_answers(lan_bridge.lan, "10.231.0.1")
    assert reply is not None and reply.endswith("id-ok True"), reply
    rules = lan_bridge.c.nft.show()["rules"]
    assert {"chain": "postrouting", "comment": f"bridge={BR}"} in [
        {"chain": r["chain"], "comment": r["comment"]} for r in rules]


def test_port_forwards_and_owner_removal(lan_bridge: Topo) -> None:
    t = lan_bridge
    c = t.c
    srv = serve(t.lan, 8080, "lan")
    try:
        fw = c.nft.forward_add("container:7", STATIC, {
            "8080": 8080, "w0:9090": 8080, "w*:9091": 8080, "198.18.0.1:7070|tcp+udp": 8080,
            "198.18.0.0/24:7071": 8080})
        assert {f["src"] for f in fw} == {"8080|tcp", "w0:9090|tcp", "w*:9091|tcp",
                                          "198.18.0.1:7070|tcp+udp", "198.18.0.0/24:7071|tcp"}
        # the same again is a no-op; another owner on a taken source is a conflict
        c.nft.forward_add("container:7", STATIC, {"8080": 8080})
        with pytest.raises(ResultError) as e:
            c.nft.forward_add("user:bob", STATIC, {"8080|tcp+udp": 80})
        assert e.value.code == 409
        c.nft.forward_add("vm:web", STATIC, {"8081": 8080})

        # from a remote host, every source form
        for port in (8080, 9090, 9091, 7070, 7071, 8081):
            assert fetch(t.wan, f"http://198.18.0.1:{port}/") == "lan 198.18.0.2", port
        # from the host itself (output-chain DNAT, 0-core#682)
        for port in (8080, 7070, 8081):
            body = fetch(t.host, f"http://198.18.0.1:{port}/")
            assert body is not None and body.startswith("lan "), port
        # from another host of the bridge, through the node's address (hairpin: masqueraded)
        with netns("lanb") as lanb:
            c.ip.link.add("l1", "veth", peer="eth0", peer_netns=lanb.name)
            try:
                c.bridge.nic_add(BR, "l1")
                c.ip.link.up("eth0", netns=lanb.name)
                c.ip.addr.add("eth0", "10.231.0.60/24", netns=lanb.name)
                c.ip.route.add(gw="10.231.0.1", netns=lanb.name)
                assert fetch(lanb, "http://198.18.0.1:8080/") == "lan 10.231.0.1"
            finally:
                c.ip.link.delete("l1")

        rules = c.nft.show()["rules"]
        mine = [r for r in rules if r["comment"] == "owner=container:7"]
        hairpin = [r for r in rules if r["comment"] == f"bridge={BR}"]
        assert len(hairpin) == 2
        # prerouting: 8080, 9090, 9091, 7070 tcp+udp, 7071 = 6; output: 8080, 7070 x2, 7071 = 4
        assert len(mine) == 10
        assert c.nft.owner_remove("container:7") == 5
        assert c.nft.owner_remove("container:7") == 0
        rules = c.nft.show()["rules"]
        assert not [r for r in rules if r["comment"] == "owner=container:7"]
        assert fetch(t.wan, "http://198.18.0.1:8080/", timeout=2) is None
        # the other owner's forward is untouched
        assert fetch(t.wan, "http://198.18.0.1:8081/") == "lan 198.18.0.2"
        assert c.nft.forward_list("vm:web") == [
            {"owner": "vm:web", "src": "8081|tcp", "ip": STATIC, "port": 8080}]
        with pytest.raises(ResultError) as e:
            c.nft.forward_remove("vm:web", ["9999"])
        assert e.value.code == 404
        assert c.nft.forward_remove("vm:web", ["8081|tcp"]) == 1
        assert c.nft.forward_list() == []
        assert fetch(t.wan, "http://198.18.0.1:8081/", timeout=2) is None
    finally:
        srv.kill()
        for owner in ("container:7", "vm:web", "user:bob"):
            c.nft.owner_remove(owner)


def test_bridge_modes_and_refusals(topo: Topo) -> None:
    c = topo.c
    # static mode: address + DNS only; none mode: a plain bridge
    info = c.bridge.create("br1", network={"mode": "static",
                                           "settings": {"cidr": "10.232.0.1/24"}})
    try:
        assert info["dnsmasq"] and info["network"]["mode"] == "static"
        # dnsmasq is a supervised service: killed, it comes back (after the 1 s backoff)
        assert [j["id"] for j in c.job.list("dnsmasq.br1")] == ["dnsmasq.br1"]
        os.kill(info["dnsmasq"], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pid = c.bridge.info("br1")["dnsmasq"]
            if pid and pid != info["dnsmasq"]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("dnsmasq was not restarted")
        with pytest.raises(ResultError) as e:
            c.bridge.add_host("br1", "10.232.0.9", "02:00:00:00:00:09")
        assert e.value.code == 412
        # overlapping network, existing name
        for name, net in (("br2", "10.232.0.77/16"), ("br1", "10.233.0.1/24")):
            with pytest.raises(ResultError) as e:
                c.bridge.create(name, network={"mode": "static", "cidr": net})
            assert e.value.code == 409
        c.bridge.create("br2", hwaddr="02:11:22:33:44:55")
        assert c.ip.link.get("br2")["hwaddr"] == "02:11:22:33:44:55"
        assert {"br1", "br2"} <= set(c.bridge.list())
        assert c.bridge.info("br2")["managed"] is True
    finally:
        for b in ("br1", "br2"):
            if b in c.bridge.list():
                c.bridge.delete(b)
    with pytest.raises(ResultError) as e:
        c.bridge.delete("br1")
    assert e.value.code == 404


def test_bridge_survives_dispatcher_restart(topo: Topo) -> None:
    """The network state and the dnsmasq service outlive a killed dispatcher; the new one
    still removes everything."""
    import psutil

    c = topo.c
    info = c.bridge.create("br3", network={"mode": "static", "nat": True, "cidr": "10.234.0.1/24"})
    try:
        sup = psutil.Process(topo.node.pid)
        disp = [p for p in sup.children() if "dispatcher" in " ".join(p.cmdline())]
        assert len(disp) == 1
        disp[0].kill()
        disp[0].wait(10)
        deadline = time.monotonic() + 30
        while True:
            try:
                c.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        again = c.bridge.info("br3")
        assert again["dnsmasq"] == info["dnsmasq"]
        assert again["network"] == info["network"]
        assert "bridge=br3" in [r["comment"] for r in c.nft.show()["rules"]]
    finally:
        c.bridge.delete("br3")
    assert not Path(f"/proc/{info['dnsmasq']}").exists() or \
        Path(f"/proc/{info['dnsmasq']}/stat").read_text().split()[2] == "Z"
    assert "br3" not in c.nft.show()["text"]
