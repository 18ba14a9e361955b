"""VXLAN segments (core0/net/segments.py) between two "nodes", each a network namespace joined
to the other by a veth underlay: guests on the same VNI reach each other across the nodes,
guests on another VNI do not; segments are made once, and removed when their last port goes.
VLAN segments need the kernel's 8021q driver, which this host lacks (``kernel_lacks``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest
from conftest import kernel_lacks, require
from net_fixtures import Netns, netns

from core0.errors import BadRequest, PreconditionFailed
from core0.net import segments
from core0.segconfig import SegmentsConfig

pytestmark = pytest.mark.root

UNDERLAY = ("10.231.7.1", "10.231.7.2")


@contextlib.contextmanager
def two_nodes() -> Iterator[tuple[Netns, Netns]]:
    require("ip")
    with netns("sega") as a, netns("segb") as b:
        a.run("ip", "link", "add", "under0", "type", "veth", "peer", "name", "under0",
              "netns", b.name)
        for ns, addr in ((a, UNDERLAY[0]), (b, UNDERLAY[1])):
            ns.run("ip", "addr", "add", f"{addr}/24", "dev", "under0")
            ns.run("ip", "link", "set", "under0", "up")
        yield a, b


def guest(node: Netns, guest_ns: Netns, bridge: str, tag: str, addr: str) -> None:
    """A guest nic: a veth whose node end is a port of ``bridge``."""
    node.run("ip", "link", "add", f"g{tag}", "type", "veth", "peer", "name", "eth0",
             "netns", guest_ns.name)
    node.run("ip", "link", "set", f"g{tag}", "master", bridge, "up")
    guest_ns.run("ip", "addr", "add", addr, "dev", "eth0")
    guest_ns.run("ip", "link", "set", "eth0", "up")


def pings(ns: Netns, addr: str) -> bool:
    return ns.run("ping", "-c", "2", "-W", "2", "-i", "0.3", addr, check=False).returncode == 0


def links(ns: Netns) -> set[str]:
    out = ns.run("ip", "-o", "link", "show").stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def test_vxlan_guests_reach_each_other_across_nodes_and_only_on_their_vni() -> None:
    cfg = dataclasses.replace(SegmentsConfig(), parent="under0")
    with two_nodes() as (a, b), netns("g1") as g1, netns("g2") as g2, netns("g3") as g3:
        # unicast flooding to the other node (deterministic on a veth; multicast below)
        br_a = segments.ensure(dataclasses.replace(cfg, vxlan_remotes=[UNDERLAY[1]]), "vxlan",
                               42, netns=a.name)
        br_b = segments.ensure(dataclasses.replace(cfg, vxlan_remotes=[UNDERLAY[0]]), "vxlan",
                               42, netns=b.name)
        assert br_a == br_b == "c0vxb42"
        # idempotent: a second ensure finds it
        assert segments.ensure(cfg, "vxlan", 42, netns=a.name) == "c0vxb42"
        assert {"c0vx42", "c0vxb42"} <= links(a)
        detail = a.run("ip", "-d", "link", "show", "c0vx42").stdout
        assert "vxlan id 42" in detail and "dstport 4789" in detail, detail
        guest(a, g1, br_a, "1", "192.168.42.1/24")
        guest(b, g2, br_b, "2", "192.168.42.2/24")
        assert pings(g1, "192.168.42.2")
        assert pings(g2, "192.168.42.1")
        # another VNI on node b: a separate L2 network
        br43 = segments.ensure(dataclasses.replace(cfg, vxlan_remotes=[UNDERLAY[0]]),
                               "vxlan", 43, netns=b.name)
        guest(b, g3, br43, "3", "192.168.42.3/24")
        assert not pings(g1, "192.168.42.3")
        # in use: nothing collected; the guests gone: both segments of b go, a's too
        assert segments.collect(netns=b.name) == []
        b.run("ip", "link", "del", "g2")
        b.run("ip", "link", "del", "g3")
        assert sorted(segments.collect(netns=b.name)) == ["c0vxb42", "c0vxb43"]
        assert not {"c0vx42", "c0vxb42", "c0vx43", "c0vxb43"} & links(b)
        assert segments.collect(netns=a.name) == []  # g1 still there
        a.run("ip", "link", "del", "g1")
        assert segments.collect(netns=a.name) == ["c0vxb42"]


def test_vxlan_multicast_group_by_default() -> None:
    cfg = dataclasses.replace(SegmentsConfig(), parent="under0")
    with two_nodes() as (a, _b):
        segments.ensure(cfg, "vxlan", 7000, netns=a.name)
        detail = a.run("ip", "-d", "link", "show", "c0vx7000").stdout
        assert "group 239.7.7.7" in detail and "dev under0" in detail, detail
        assert segments.collect(netns=a.name) == ["c0vxb7000"]


def test_bad_segments_refused_and_nothing_left() -> None:
    cfg = SegmentsConfig(parent="under0")
    with two_nodes() as (a, _b):
        before = links(a)
        for kind, seg_id in (("vxlan", 0), ("vxlan", 1 << 24), ("vlan", 4095), ("vlan", "x"),
                             ("ovs", 1), ("vxlan", "1;2")):
            with pytest.raises(BadRequest):
                segments.ensure(cfg, kind, seg_id, netns=a.name)
        with pytest.raises(PreconditionFailed):
            segments.ensure(dataclasses.replace(cfg, parent="nosuch0"), "vxlan", 5,
                            netns=a.name)
        with pytest.raises(PreconditionFailed):  # no parent, no default route
            segments.ensure(dataclasses.replace(cfg, parent=""), "vxlan", 5, netns=a.name)
        assert links(a) == before


def test_vlan_segment() -> None:
    kernel_lacks("vlan")
    cfg = SegmentsConfig(parent="under0")
    with two_nodes() as (a, _b):
        assert segments.ensure(cfg, "vlan", 100, netns=a.name) == "c0vlb100"
        assert "vlan protocol 802.1Q id 100" in a.run("ip", "-d", "link", "show",
                                                       "c0vl100").stdout
        assert segments.collect(netns=a.name) == ["c0vlb100"]
