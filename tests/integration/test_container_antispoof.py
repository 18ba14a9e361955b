"""Containers on core0's NAT bridge cannot spoof (docs/networking.md, "Port guards").

Two containers A and B under runc on the default NAT bridge. From A's network namespace
(sockets made by a thread of this process that entered it, ``ip`` run with ``nsenter``), A
changes its MAC, takes B's address as a secondary one, and sends forged IPv4 and ARP frames on
a raw socket: none of it passes the bridge (a promiscuous packet socket on ``core0`` sees
nothing of it while one on A's host-side veth sees every frame leave A), B's traffic still goes
to B, the node's ARP entry for B stays B's MAC, and A's and B's own traffic to each other and to
the gateway keeps working. Absence is checked without sleeps: each forged frame is followed by
a legitimate one on the same path (a fence) and the fence must be the first thing that arrives.
The guards follow the nics (nic-add, nic-remove, a dispatcher kill -9, terminate).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from conftest import wait_until
from net_fixtures import in_netns
from sandbox_fixtures import ContainerNode, call, dispatcher_or_zero, import_busybox, ok, pingable

T = TypeVar("T")
GW = "172.18.0.1"
PORT = 47011
CLONE_NEWNET = 0x40000000
ETH_P_ALL, ETH_P_IP, ETH_P_ARP = 0x0003, 0x0800, 0x0806
_libc = ctypes.CDLL(None, use_errno=True)


def udp(path: str, addr: str = "0.0.0.0", port: int = PORT) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        s.settimeout(5)
        return s
    return in_netns(path, make)


def packet(path: str, link: str, promisc: bool = False) -> socket.socket:
    """A raw packet socket on ``link`` of netns ``path`` (every frame; promiscuous: also those
    the bridge forwards elsewhere)."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((link, 0))
        if promisc:  # PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC
            s.setsockopt(263, 1, struct.pack("iHH8s", socket.if_nametoindex(link), 1, 0, b""))
        s.settimeout(5)
        return s
    return in_netns(path, make)


def mac_b(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def eth(dst: str, src: str, etype: int, payload: bytes) -> bytes:
    return mac_b(dst) + mac_b(src) + struct.pack("!H", etype) + payload.ljust(46, b"\0")


def ipv4_udp(src: str, dst: str, data: bytes) -> bytes:
    u = struct.pack("!HHHH", PORT + 1, PORT, 8 + len(data), 0) + data
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 0, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    s = sum(struct.unpack("!10H", h))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return h[:10] + struct.pack("!H", ~s & 0xFFFF) + h[12:] + u


def arp(op: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op, mac_b(sha),
                       socket.inet_aton(spa), mac_b(tha), socket.inet_aton(tpa))


def frames_until(s: socket.socket, fence: bytes) -> list[bytes]:
    """The frames ``s`` receives up to the first one that holds ``fence`` (excluded)."""
    seen = []
    while True:
        f = s.recv(65536)
        if fence in f:
            return seen
        seen.append(f)


@pytest.fixture(autouse=True)
def one_cpu() -> Iterator[None]:
    """The test's thread on one CPU: what it sends on a veth is queued on that CPU's backlog,
    in order, so a fence sent last is processed last."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {os.sched_getaffinity(0).pop()})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def first_datagram(s: socket.socket) -> bytes:
    return s.recvfrom(2048)[0]


def guards(cnode: ContainerNode) -> dict[str, set[tuple[str, str]]] | None:
    """The kernel's guard sets (port → {(mac, ip)}), None without the table."""
    r = cnode.ns.run("nft", "-j", "list", "table", "bridge", "core0", check=False)
    if r.returncode:
        return None
    out: dict[str, set[tuple[str, str]]] = {}
    for item in json.loads(r.stdout)["nftables"]:
        s = item.get("set")
        if s and s["name"] == "ports":
            for p in s.get("elem", []):
                out.setdefault(p, set())
        elif s and s["name"] == "addrs":
            for e in s.get("elem", []):
                port, mac, ip = e["concat"]
                out.setdefault(port, set()).add((mac, ip))
    return out


def dropped(cnode: ContainerNode) -> int:
    r = cnode.ns.run("nft", "-j", "list", "chain", "bridge", "core0", "guard")
    for item in json.loads(r.stdout)["nftables"]:
        for x in (item.get("rule") or {}).get("expr", []):
            if "counter" in x:
                return int(x["counter"]["packets"])
    raise AssertionError("no counter")


def nsenter(pid: int, *argv: str) -> None:
    subprocess.run(["nsenter", "-n", "-t", str(pid), *argv], check=True, capture_output=True)


def neigh_mac(pre: list[str], ip: str, dev: str) -> str:
    """The MAC of ``ip`` in the neighbour table (``pre``: how to enter the netns)."""
    out = subprocess.run([*pre, "ip", "-j", "neigh", "show", ip, "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    found = json.loads(out or "[]")
    return str(found[0].get("lladdr", "")) if found else ""


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    return import_busybox(cnode)


def _nic0(cnode: ContainerNode, cid: int) -> dict[str, Any]:
    c = ok(cnode, "corex.get", {"query": cid})["container"]
    return {**c["nics"][0], "pid": c["pid"]}


def test_no_spoofing_on_the_nat_bridge(cnode: ContainerNode, image: str) -> None:
    a_id = ok(cnode, "corex.create", {"root": image})
    b_id = ok(cnode, "corex.create", {"root": image})
    try:
        a, b = _nic0(cnode, a_id), _nic0(cnode, b_id)
        a_ip, b_ip = a["ip"].split("/")[0], b["ip"].split("/")[0]
        # core0 chose each MAC (random, locally administered) and recorded it; the guards
        # name exactly the port, that MAC and that address
        assert a["hwaddr"] != b["hwaddr"] and int(a["hwaddr"][:2], 16) & 3 == 2
        assert guards(cnode) == {a["host_link"]: {(a["hwaddr"], a_ip)},
                                 b["host_link"]: {(b["hwaddr"], b_ip)}}
        node_ns = f"/run/netns/{cnode.ns.name}"
        a_ns, b_ns = f"/proc/{a['pid']}/ns/net", f"/proc/{b['pid']}/ns/net"
        gw_mac = json.loads(cnode.ns.run("ip", "-j", "link", "show", "core0").stdout)[0][
            "address"]
        on_node = ["ip", "netns", "exec", cnode.ns.name]
        host, sb, sa = udp(node_ns, GW), udp(b_ns), udp(a_ns)
        sa2, sb2 = udp(a_ns, "0.0.0.0", PORT + 2), udp(b_ns, "0.0.0.0", PORT + 2)
        try:
            # (c) normal traffic: A ↔ gateway, A ↔ B, B → gateway
            sa.sendto(b"a-gw", (GW, PORT))
            assert host.recvfrom(64) == (b"a-gw", (a_ip, PORT))
            sa.sendto(b"a-b", (b_ip, PORT))
            assert sb.recvfrom(64) == (b"a-b", (a_ip, PORT))
            sb.sendto(b"b-a", (a_ip, PORT))
            assert sa.recvfrom(64) == (b"b-a", (b_ip, PORT))
            sb.sendto(b"b-gw", (GW, PORT))
            assert host.recvfrom(64) == (b"b-gw", (b_ip, PORT))
            host.sendto(b"gw-a", (a_ip, PORT))
            assert sa.recvfrom(64) == (b"gw-a", (GW, PORT))
            assert neigh_mac(on_node, b_ip, "core0") == b["hwaddr"]
            base = dropped(cnode)

            # (a) another MAC: A reaches neither the gateway nor B; back to its own, it does
            nsenter(a["pid"], "ip", "link", "set", "eth0", "address", "02:de:ad:be:ef:01")
            sa.sendto(b"new-mac", (GW, PORT))
            sa.sendto(b"new-mac", (b_ip, PORT))
            nsenter(a["pid"], "ip", "link", "set", "eth0", "address", a["hwaddr"])
            sa.sendto(b"fence-1", (GW, PORT))
            sa.sendto(b"fence-1", (b_ip, PORT))
            assert first_datagram(host) == b"fence-1"
            assert first_datagram(sb) == b"fence-1"
            assert dropped(cnode) >= base + 2

            # (b) B's address on A as well: what A sends from it goes nowhere, A's ARP answers
            # for it are dropped, so the node (asking again) still reaches B, not A
            nsenter(a["pid"], "ip", "addr", "add", f"{b_ip}/32", "dev", "eth0")
            try:
                forged = udp(a_ns, b_ip, PORT + 3)
                forged.sendto(b"from-b-ip", (GW, PORT))
                forged.close()
                sa.sendto(b"fence-2", (GW, PORT))
                assert first_datagram(host) == b"fence-2"
                # the node asks again who has B's address: A answers too (dropped)
                cnode.ns.run("ip", "neigh", "flush", "to", b_ip, "dev", "core0")
                host.sendto(b"for-b", (b_ip, PORT + 2))
                assert first_datagram(sb2) == b"for-b"
                host.sendto(b"fence-3", (a_ip, PORT + 2))
                assert first_datagram(sa2) == b"fence-3"  # (A listens there too)
                assert neigh_mac(on_node, b_ip, "core0") == b["hwaddr"]
            finally:
                nsenter(a["pid"], "ip", "addr", "del", f"{b_ip}/32", "dev", "eth0")

            # (b) forged frames on a raw socket in A: seen leaving A (its host-side veth),
            # never past the bridge (core0, promiscuous), nor by B or the node
            raw = packet(a_ns, "eth0")
            out_of_a = packet(node_ns, a["host_link"])
            bridge = packet(node_ns, "core0", promisc=True)
            am, bm = a["hwaddr"], b["hwaddr"]
            bad = [
                # B's MAC as source (with B's address): to the gateway, broadcast
                eth("ff:ff:ff:ff:ff:ff", bm, ETH_P_IP, ipv4_udp(b_ip, GW, b"forged-1")),
                # A's MAC, the gateway's address as source: to B
                eth(bm, am, ETH_P_IP, ipv4_udp(GW, b_ip, b"forged-2")),
                # A's MAC, B's address as source: to the gateway
                eth(gw_mac, am, ETH_P_IP, ipv4_udp(b_ip, GW, b"forged-3")),
                # ARP replies: "the gateway is at A" to B, "B is at A" to the node
                eth(bm, am, ETH_P_ARP, arp(2, am, GW, bm, b_ip) + b"forged-4"),
                eth(gw_mac, am, ETH_P_ARP, arp(2, am, b_ip, gw_mac, GW) + b"forged-5"),
                # an ARP whose sender MAC is not its source MAC
                eth("ff:ff:ff:ff:ff:ff", am, ETH_P_ARP,
                    arp(1, bm, a_ip, "00:00:00:00:00:00", GW) + b"forged-6"),
                # IPv6 (the NAT network has none)
                eth("33:33:00:00:00:01", am, 0x86DD, b"forged-7"),
            ]
            base = dropped(cnode)
            for f in bad:
                raw.send(f)
            fence = b"fence-4"
            raw.send(eth(gw_mac, am, ETH_P_IP, ipv4_udp(a_ip, GW, fence)))
            raw.send(eth("ff:ff:ff:ff:ff:ff", am, ETH_P_ARP,
                         arp(1, am, a_ip, "00:00:00:00:00:00", GW) + b"ok-arp"))
            raw.send(eth(bm, am, ETH_P_IP, ipv4_udp(a_ip, b_ip, fence)))
            left = frames_until(out_of_a, fence)
            assert all(any(f"forged-{i}".encode() in x for x in left) for i in range(1, 8))
            passed = frames_until(bridge, fence)
            assert not [x for x in passed if b"forged" in x], passed
            assert first_datagram(host) == fence and first_datagram(sb) == fence
            frames_until(bridge, b"ok-arp")  # (A's own ARP passes)
            assert dropped(cnode) >= base + len(bad)
            assert neigh_mac(on_node, b_ip, "core0") == b["hwaddr"]
            assert neigh_mac(["nsenter", "-n", "-t", str(b["pid"])], GW, "eth0") == gw_mac
            for s in (raw, out_of_a, bridge):
                s.close()
        finally:
            for s in (host, sb, sa, sa2, sb2):
                s.close()
    finally:
        ok(cnode, "corex.terminate", {"container": a_id})
        ok(cnode, "corex.terminate", {"container": b_id})
    # the last guard gone, the table goes
    assert guards(cnode) is None
    assert json.loads((cnode.state_dir / "net" / "guards.json").read_text()) == {}


def test_guards_follow_the_nics(cnode: ContainerNode, image: str) -> None:
    """nic-add into core0 guards the new port with the nic's own MAC and address, nic-remove
    drops it; a dispatcher kill -9 leaves the guards as they are and the next one removes them;
    a second port with a guarded MAC (409), a macvlan on core0 and DHCP on core0 (400) are
    refused with nothing left; terminate leaves no guard."""
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    try:
        assert guards(cnode) is None
        ok(cnode, "corex.nic-add", {"container": cid, "nic": {"type": "default"}})
        nic = ok(cnode, "corex.nic-add", {"container": cid, "nic": {
            "type": "bridge", "id": "core0", "hwaddr": "02:00:00:00:77:02",
            "config": {"cidr": "10.77.0.2/24"}}})
        nics = ok(cnode, "corex.get", {"query": cid})["container"]["nics"]
        want = {nics[0]["host_link"]: {(nics[0]["hwaddr"], nics[0]["ip"].split("/")[0])},
                nic["host_link"]: {("02:00:00:00:77:02", "10.77.0.2")}}
        assert guards(cnode) == want

        for bad, code in (
                ({"type": "default", "hwaddr": "02:00:00:00:77:02"}, 409),
                ({"type": "macvlan", "id": "core0", "config": {"cidr": "10.78.0.2/24"}}, 400),
                ({"type": "bridge", "id": "core0", "config": {"dhcp": True}}, 400)):
            r = call(cnode, "corex.create", {"root": image, "nics": [bad]})
            assert r.code == code, (bad, r.data)
        assert guards(cnode) == want

        old = cnode.dispatcher_pid()
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: pingable(cnode) and dispatcher_or_zero(cnode) not in (0, old),
                          60, 0.1), cnode.log_text()[-3000:]
        assert guards(cnode) == want
        ok(cnode, "corex.nic-remove", {"container": cid, "index": 1})
        del want[nic["host_link"]]
        assert guards(cnode) == want
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    assert guards(cnode) is None
