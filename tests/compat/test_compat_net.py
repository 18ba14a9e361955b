"""0-core's client, network managers (ip.*, bridge, nft) on the node's own netns."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from compat_fixtures import IN_QEMU
from net_fixtures import netns

pytest_plugins = ["storage_fixtures", "compat_fixtures"]

pytestmark = pytest.mark.root


def ip(*argv: str) -> str:
    """``ip`` in the node's namespace (the test process is inside it)."""
    return subprocess.run(["ip", *argv], check=True, capture_output=True, text=True).stdout


def test_ip_link_addr_route(cl: Any, record: Any) -> None:
    ip("link", "add", "cv0", "type", "veth", "peer", "name", "cv1")
    try:
        assert cl.ip.link.up("cv0") is None
        assert "UP" in ip("link", "show", "cv0")
        record("ip.link.up", "`None`; the link is up")
        assert cl.ip.link.down("cv0") is None
        assert ",UP" not in ip("link", "show", "cv0")
        record("ip.link.down", "`None`; the link is down")
        cl.ip.link.name("cv0", "cv2")
        assert "cv2" in ip("link", "show", "cv2")
        record("ip.link.name", "`None`; renamed")
        cl.json("ip.link.mtu", {"name": "cv2", "mtu": 1400})
        assert "mtu 1400" in ip("link", "show", "cv2")
        record("ip.link.mtu", "`None`; MTU set")
        links = {x["name"]: x for x in cl.ip.link.list()}
        assert {"name", "type", "hwaddr", "master", "up", "mtu"} <= set(links["cv2"])
        assert links["cv2"]["type"] == "veth" and links["cv2"]["mtu"] == 1400
        record("ip.link.list", "[{name, type, hwaddr, master, up, mtu}] (+ index, operstate)")

        cl.ip.link.up("cv2")
        cl.ip.addr.add("cv2", "10.91.0.1/24")
        assert "10.91.0.1/24" in ip("addr", "show", "cv2")
        record("ip.addr.add", "`None`; address added")
        assert "10.91.0.1/24" in cl.ip.addr.list("cv2")
        record("ip.addr.list", "[\"a.b.c.d/n\", ...]")
        cl.ip.route.add("cv2", "10.92.0.0/24", "10.91.0.2")
        assert "10.92.0.0/24 via 10.91.0.2" in ip("route")
        record("ip.route.add", "`None`; route added")
        routes = cl.ip.route.list()
        r = next(x for x in routes if x["dst"] == "10.92.0.0/24")
        assert r["gw"] == "10.91.0.2" and r["dev"] == "cv2"
        record("ip.route.list", "[{dev, dst, gw, ...}]")
        cl.ip.route.delete("cv2", "10.92.0.0/24", "10.91.0.2")
        assert "10.92.0.0/24" not in ip("route")
        record("ip.route.delete", "`None`; route gone")
        cl.ip.addr.delete("cv2", "10.91.0.1/24")
        assert "10.91.0.1" not in ip("addr", "show", "cv2")
        record("ip.addr.delete", "`None`; address gone")
    finally:
        subprocess.run(["ip", "link", "del", "cv0"], capture_output=True)
        subprocess.run(["ip", "link", "del", "cv2"], capture_output=True)


def test_ip_bridge(cl: Any, zc: Any, record: Any) -> None:
    ip("link", "add", "cb0", "type", "veth", "peer", "name", "cb0p")
    try:
        assert cl.ip.bridge.add("cbr0", "02:00:00:aa:bb:01") is None
        assert "02:00:00:aa:bb:01" in ip("link", "show", "cbr0")
        cl.ip.bridge.add("cbr1")  # hwaddr None, the client's default
        record("ip.bridge.add", "`None`; a Linux bridge (hwaddr optional)")
        cl.ip.bridge.addif("cbr0", "cb0")
        assert "master cbr0" in ip("link", "show", "cb0")
        record("ip.bridge.addif", "`None`; the link is attached")
        with pytest.raises(zc.ResultError) as e:
            cl.ip.bridge.delif("cbr1", "cb0")
        assert e.value.code == 400
        cl.ip.bridge.delif("cbr0", "cb0")
        assert "master" not in ip("link", "show", "cb0")
        record("ip.bridge.delif", "`None`; detached (400 if not attached to that bridge)")
        cl.ip.bridge.delete("cbr0")
        cl.ip.bridge.delete("cbr1")
        assert "cbr0" not in ip("link")
        with pytest.raises(zc.ResultError) as e:
            cl.ip.bridge.delete("cb0")  # not a bridge
        assert e.value.code == 400
        record("ip.bridge.delete", "`None`; deleted (400 for a link that is not a bridge)")
        with netns("peer") as peer:  # core0's extra: like every ip.* command, in a netns
            cl.json("ip.bridge.add", {"name": "cbr5", "netns": peer.name})
            assert "cbr5" in peer.run("ip", "link", "show", "cbr5").stdout
            cl.json("ip.bridge.del", {"name": "cbr5", "netns": peer.name})
            assert cl.json("ip.bond.list", {"netns": peer.name}) == {}
    finally:
        for name in ("cb0", "cbr0", "cbr1"):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_ip_bond(cl: Any, zc: Any, record: Any) -> None:
    """The master client's ip.bond.{add,delete,list} arguments: {bond, interfaces, mtu}. This
    host's kernel has no bonding driver: the clear 412 is checked here, the working path in the
    image under qemu (tests/e2e/test_vm_full.py::test_0core_client_bond)."""
    assert cl.json("ip.bond.list", {}) == {}
    ip("link", "add", "cs0", "type", "veth", "peer", "name", "cs0p")
    try:
        try:
            cl.json("ip.bond.add", {"bond": "cbond0", "interfaces": ["cs0"], "mtu": 1500})
        except zc.ResultError as e:
            assert e.code == 412 and "bond" in e.message
        else:
            bonds = cl.json("ip.bond.list", {})
            assert "cbond0" in bonds and any("Slave Interface" in s for s in bonds["cbond0"])
            cl.json("ip.bond.del", {"bond": "cbond0"})
            assert "cbond0" not in cl.json("ip.bond.list", {})
        where = f"{IN_QEMU}; a kernel without the bonding driver: 412 naming it"
        record("ip.bond.add", f"`None`; a balance-rr bond with the slaves at the MTU, up ({where})")
        record("ip.bond.list", "{bond: [{\"Bonding Mode\": ..., ...}, {\"Slave Interface\": "
               "...}]} (/proc/net/bonding, as 0-core; {} without bonds)")
        record("ip.bond.delete", f"`None`; deleted ({where})")
    finally:
        for name in ("cbond0", "cs0"):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_bridge_manager(cl: Any, record: Any) -> None:
    out = cl.bridge.create("cbr9", network="dnsmasq", nat=True,
                           settings={"cidr": "10.93.0.1/24", "start": "10.93.0.10",
                                     "end": "10.93.0.20"})
    try:
        assert out["name"] == "cbr9"
        assert "10.93.0.1/24" in ip("addr", "show", "cbr9")
        record("bridge.create", "the bridge (dict); address, dnsmasq DHCP and NAT set up")
        assert "cbr9" in cl.bridge.list()
        record("bridge.list", "[names]")
        ip("link", "add", "cn0", "type", "veth", "peer", "name", "cn0p")
        cl.json("bridge.nic-add", {"name": "cbr9", "nic": "cn0"})
        assert cl.json("bridge.nic-list", {"name": "cbr9"}) == ["cn0"]
        record("bridge.nic_add", "`None`; the link is attached")
        record("bridge.nic_list", "[names]")
        cl.json("bridge.nic-remove", {"nic": "cn0"})
        assert cl.json("bridge.nic-list", {"name": "cbr9"}) == []
        record("bridge.nic_remove", "`None`; detached")
    finally:
        cl.bridge.delete("cbr9")
        subprocess.run(["ip", "link", "del", "cn0"], capture_output=True)
    assert "cbr9" not in cl.bridge.list()
    cl.bridge.create("cbr8")  # the client's defaults: no network mode, no NAT
    cl.bridge.create("cbr7", hwaddr="02:00:00:aa:bb:07", network="static",
                     settings={"cidr": "10.94.0.1/24"})
    assert "10.94.0.1/24" in ip("addr", "show", "cbr7")
    assert "02:00:00:aa:bb:07" in ip("link", "show", "cbr7")
    cl.bridge.delete("cbr8")
    cl.bridge.delete("cbr7")
    assert not {"cbr7", "cbr8"} & set(cl.bridge.list())
    record("bridge.delete", "`None`; bridge, its dnsmasq and NAT gone")


def test_nft(cl: Any, record: Any) -> None:
    assert cl.nft.open_port(8123) is None
    cl.nft.open_port(8124, interface="lo", subnet="10.0.0.0/8")
    try:
        record("nft.open_port", "`None`; accept rule in the input chain")
        rules = cl.nft.list()
        assert "tcp dport 8123 accept" in rules
        assert 'iifname "lo" ip saddr 10.0.0.0/8 tcp dport 8124 accept' in rules
        record("nft.list", "[rule strings] (`tcp dport 8123 accept`, as 0-core)")
        assert cl.nft.rule_exists(8123) is True and cl.nft.rule_exists(8125) is False
        record("nft.rule_exists", "`True`/`False`")
    finally:
        cl.nft.drop_port(8123)
        cl.nft.drop_port(8124, interface="lo", subnet="10.0.0.0/8")
    assert cl.nft.list() == []
    record("nft.drop_port", "`True` (`False` when there was no such rule)")
