"""VMs' taps on ``kvm0`` cannot spoof (docs/kvm.md "Port guards"; core0/virt/guards.py,
core0/net/portguard.py).

- The rules themselves, on frames: the table core0 builds is loaded into a scratch network
  namespace whose bridge has a guarded port (a VM's default nic: lease address and 0.0.0.0)
  and an unguarded ``c0t…`` port; frames written into them pass or not exactly as designed
  (DHCP with the port's chaddr from 0.0.0.0 or its address; another chaddr, a fragment, a
  server's reply, other addresses and MACs, IPv6: dropped; the unguarded port: nothing).
- A guest that spoofs: a tiny guest (the kvm tests' kernel and busybox, another ``/init``)
  takes its DHCP lease, pings the gateway, then sends an ARP request in another address's
  name, a ping from another address and frames from another MAC. Every forged frame is seen
  leaving the guest (a packet socket on its tap) and none passes the bridge (none on
  ``kvm0``, no neighbour entry, no FDB entry on the node); its own traffic does.
- The guards follow the VMs: create (guarded before the guest runs, the tap named after the
  MAC), kvm.add_nic/remove_nic onto kvm0, destroy, a tap name a new VM takes over, a
  dispatcher kill -9 with guards made stale, missing and wrong meanwhile, refused nics
  (400/409).

Run under ``flock /tmp/core0-vm.lock``, like the other kvm tests.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import code_of, wait_until
from kvm_env import Env, guest_root, migration_peer, start_node
from net_fixtures import in_netns, netns
from virt_fixtures import GUEST_PRELUDE, libvirtd, wait_text

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]
T = TypeVar("T")
GW = "172.19.0.1"
ETH_P_ALL = 0x0003
_libc = ctypes.CDLL(None, use_errno=True)
#: the addresses and the MAC the spoofing guest takes (no VM has them)
FAKE_ARP, FAKE_SRC, FAKE_MAC = "172.19.0.250", "172.19.0.251", "02:00:00:c0:ff:ee"
SPOOF_INIT = GUEST_PRELUDE + f"""ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /bin/dhcp-mine -t 20 -T 1 -n -q >/dev/null 2>&1
IP=$(cat /tmp/ip)
ping -c 1 -W 3 {GW} >/dev/null && echo GUEST-PING-OK $IP
ip neigh show {GW} dev eth0 > /tmp/gw
read a b GWMAC c < /tmp/gw
ip addr add {FAKE_ARP}/32 dev eth0
ip addr add {FAKE_SRC}/32 dev eth0
arping -c 1 -w 1 -I eth0 -s {FAKE_ARP} {GW}
ping -c 1 -W 1 -I {FAKE_SRC} {GW}
ip link set eth0 address {FAKE_MAC}
arp -s {GW} $GWMAC
arping -c 1 -w 1 -I eth0 -s $IP {GW}
ping -c 1 -W 1 {GW}
echo GUEST-SPOOFED
while true; do sleep 3600; done
"""
DHCP_MINE = """#!/bin/busybox sh
case "$1" in bound|renew)
  ifconfig $interface $ip netmask $subnet up
  echo $ip > /tmp/ip
  echo "GUEST-IP $ip" > /dev/console;;
esac
"""


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """tests/kvm_env.py's node and libvirtd, with ``domain_type = "qemu"``: no KVM probe
    (up to 15 s where /dev/kvm exists but cannot run a guest)."""
    base, root = guest_root("core0-kvmpg-")
    try:
        with netns("host") as ns, libvirtd(ns.name) as lv:
            cfg = base / "core0.toml"
            cfg.write_text(f'[main]\nfilesystem_root = "{root}"\n'
                           f'[virt]\nuri = "{lv.uri}"\ndir = "{base / "virt"}"\n'
                           'domain_type = "qemu"\n')
            node = start_node(ns, base, cfg)
            try:
                yield Env(ns, lv, node, root, base / "virt", cfg)
            finally:
                node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def packet(ns: str, link: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((link, 0))
        s.settimeout(0.5)
        return s
    return in_netns(f"/run/netns/{ns}", make)


class Capture:
    """Every frame a link receives (not those it sends), in a thread, from now on."""

    def __init__(self, ns: str, link: str):
        self.sock, self.frames, self.stop = packet(ns, link), list[bytes](), False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                f, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] != socket.PACKET_OUTGOING:
                self.frames.append(f)

    def close(self) -> list[bytes]:
        self.stop = True
        self.t.join(2)
        self.sock.close()
        return self.frames


def mac_b(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ipv4(src: str, dst: str, proto: int, payload: bytes, frag: int = 0) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    s = sum(struct.unpack("!10H", h))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return h[:10] + struct.pack("!H", ~s & 0xFFFF) + h[12:] + payload


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def bootp(chaddr: str, tag: bytes) -> bytes:
    """A DHCP client message: op 1, htype 1, hlen 6, chaddr, the magic cookie, ``tag``."""
    return (bytes([1, 1, 6, 0]) + b"\0" * 24 + mac_b(chaddr) + b"\0" * 202
            + bytes([99, 130, 83, 99]) + tag)


def eth(src: str, etype: int, payload: bytes, dst: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    return mac_b(dst) + mac_b(src) + struct.pack("!H", etype) + payload.ljust(46, b"\0")


def arp(sha: str, spa: str, tpa: str, tag: bytes = b"") -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_b(sha),
                       socket.inet_aton(spa), b"\0" * 6, socket.inet_aton(tpa)) + tag


def table(env: Env) -> dict[str, tuple[str, frozenset[str]]] | None:
    """The kernel's guards: port → (MAC, addresses), checked against the chaddr set; None
    without the table."""
    r = env.ns.run("nft", "-j", "list", "table", "bridge", "core0", check=False)
    if r.returncode:
        return None
    ports: set[str] = set()
    addrs: dict[str, set[tuple[str, str]]] = {}
    macs: dict[str, str] = {}
    for item in json.loads(r.stdout)["nftables"]:
        s = item.get("set") or {}
        for e in s.get("elem", []):
            if s["name"] == "ports":
                ports.add(e)
            elif s["name"] == "addrs":
                addrs.setdefault(e["concat"][0], set()).add((e["concat"][1], e["concat"][2]))
            elif s["name"] == "macs":
                n = f"{e['concat'][1]:012x}"
                macs[e["concat"][0]] = ":".join(n[i:i + 2] for i in range(0, 12, 2))
    out = {}
    for p in ports:
        assert {m for m, _ in addrs.get(p, set())} <= {macs[p]}, (p, addrs, macs)
        out[p] = (macs[p], frozenset(ip for _, ip in addrs.get(p, set())))
    assert set(addrs) <= ports and set(macs) == ports
    return out


def filed(env: Env) -> dict[str, tuple[str, str, frozenset[str]]]:
    """guards.json: port → (owner, MAC, addresses)."""
    p = env.node.state_dir / "net" / "guards.json"
    return {k: (g["owner"], g["mac"], frozenset(g["ips"]))
            for k, g in json.loads(p.read_text()).items()}


def vm_guards(env: Env) -> dict[str, tuple[str, str, frozenset[str]]]:
    """The VMs' guards, in the file, once the kernel's table says the same (a change runs
    nft, then writes the file: the two may differ for a moment)."""
    got: dict[str, tuple[str, str, frozenset[str]]] = {}

    def agree() -> bool:
        got.clear()
        got.update({k: g for k, g in filed(env).items() if g[0].startswith("vm:")})
        t = table(env) or {}
        return ({k: t.get(k) for k in got} == {k: (m, ips) for k, (_, m, ips) in got.items()}
                and {k: g for k, g in filed(env).items() if g[0].startswith("vm:")} == got)

    assert wait_until(agree, 5), (got, table(env))
    return got


def counter(env: Env, chain: str, comment: str) -> int:
    r = env.ns.run("nft", "-j", "list", "chain", "bridge", "core0", chain)
    for item in json.loads(r.stdout)["nftables"]:
        rule = item.get("rule") or {}
        if rule.get("comment") == comment:
            return next(int(x["counter"]["packets"]) for x in rule["expr"] if "counter" in x)
    raise AssertionError(f"no rule {comment!r} in {chain}")


def idle(name: str) -> dict[str, Any]:
    """A VM that boots nothing (a blank disk: its firmware idles), with a default nic."""
    return {"name": name, "cpu": 1, "memory": 64, "nics": [{"type": "default"}],
            "media": [{"url": "/images/base.qcow2", "overlay": True}]}


def tap(mac: str) -> str:
    return "c0t" + mac.replace(":", "")


def relisted(env: Env, names: set[str]) -> None:
    """Wait until a (new) dispatcher answers kvm.list with VMs ``names``."""
    def answers() -> bool:
        try:
            c = env.core0()
            try:
                return {i["name"] for i in c.json("kvm.list")} == names
            finally:
                c.close()
        except Exception:
            return False

    assert wait_until(answers, 60), env.node.log_text()[-3000:]


def dispatcher(env: Env) -> int:
    import psutil

    [pid] = [p.pid for p in psutil.Process(env.node.pid).children(recursive=True)
             if "dispatcher" in " ".join(p.cmdline())]
    return pid


# ---------------------------------------------------------------- the rules, on frames


M, OTHER = "00:28:06:82:00:02", "02:99:99:99:99:99"
FRAMES: list[tuple[str, bool, bytes]] = [  # (what, passes, frame); each holds a unique tag
    ("DHCP from 0.0.0.0", True, eth(M, 0x800, ipv4(
        "0.0.0.0", "255.255.255.255", 17, udp(68, 67, bootp(M, b"T01"))))),
    ("DHCP from its address", True, eth(M, 0x800, ipv4(
        "172.19.0.2", GW, 17, udp(68, 67, bootp(M, b"T02"))))),
    ("DHCP naming another chaddr", False, eth(M, 0x800, ipv4(
        "0.0.0.0", "255.255.255.255", 17, udp(68, 67, bootp(OTHER, b"T03"))))),
    ("DHCP naming another chaddr, from its address", False, eth(M, 0x800, ipv4(
        "172.19.0.2", GW, 17, udp(68, 67, bootp(OTHER, b"T04"))))),
    ("DHCP in a first fragment too short to show chaddr", False, eth(M, 0x800, ipv4(
        "172.19.0.2", GW, 17, udp(68, 67, b"T05" + bootp(M, b""))[:24], frag=0x2000))),
    ("DHCP too short", False, eth(M, 0x800, ipv4("0.0.0.0", GW, 17, udp(68, 67, b"T06")))),
    ("a DHCP server's offer", False, eth(M, 0x800, ipv4(
        "172.19.0.2", "255.255.255.255", 17, udp(67, 68, bootp(M, b"T07"))))),
    ("IPv4 from its address", True, eth(M, 0x800, ipv4("172.19.0.2", GW, 17,
                                                        udp(1, 2, b"T08")))),
    ("IPv4 from 0.0.0.0 (not DHCP)", False, eth(M, 0x800, ipv4("0.0.0.0", GW, 17,
                                                               udp(1, 2, b"T09")))),
    ("IPv4 from another address", False, eth(M, 0x800, ipv4("172.19.0.3", GW, 17,
                                                            udp(1, 2, b"T10")))),
    ("IPv4 from another MAC", False, eth(OTHER, 0x800, ipv4("172.19.0.2", GW, 17,
                                                            udp(1, 2, b"T11")))),
    ("IPv4 from the gateway's address", False, eth(M, 0x800, ipv4(GW, "172.19.0.3", 17,
                                                                  udp(1, 2, b"T12")))),
    ("ARP from its address", True, eth(M, 0x806, arp(M, "172.19.0.2", GW, b"T13"))),
    ("ARP probe (sender 0.0.0.0)", True, eth(M, 0x806, arp(M, "0.0.0.0", "172.19.0.2",
                                                           b"T14"))),
    ("ARP in the gateway's name", False, eth(M, 0x806, arp(M, GW, "172.19.0.9", b"T15"))),
    ("ARP with another sender MAC", False, eth(M, 0x806, arp(OTHER, "172.19.0.2", GW,
                                                             b"T16"))),
    ("IPv6", False, eth(M, 0x86DD, b"T17")),
]


def _tag(frame: bytes) -> bytes:
    return next(t for i in range(1, 18) if (t := b"T%02d" % i) in frame)


def test_guard_rules_on_frames() -> None:
    """portguard's table on a scratch bridge: a guarded VM port (its lease address and
    0.0.0.0, as core0/virt/guards.py makes it) and an unguarded c0t… port (closed)."""
    from core0.net import portguard

    g = portguard.Guard.make(tap(M), "vm:x", M, ["172.19.0.2", "0.0.0.0"])
    with netns("pg") as ns:
        for port, peer in ((tap(M), "g0"), (tap("02:00:00:00:00:aa"), "g1")):
            ns.run("ip", "link", "add", port, "type", "veth", "peer", "name", peer)
        ns.run("ip", "link", "add", "br0", "type", "bridge")
        for link in (tap(M), tap("02:00:00:00:00:aa")):
            ns.run("ip", "link", "set", link, "master", "br0")
        for link in ("br0", "g0", "g1", tap(M), tap("02:00:00:00:00:aa")):
            ns.run("ip", "link", "set", link, "up")
        subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], check=True,
                       input=portguard.build([g], closed=True).encode())
        for peer, allowed in (("g0", True), ("g1", False)):
            cap = Capture(ns.name, "br0")  # what reaches the node (broadcasts, the gateway)
            out = packet(ns.name, peer)
            for _, _, f in FRAMES:
                out.send(f)
            out.send(eth(M, 0x800, ipv4("172.19.0.2", GW, 17, udp(1, 2, b"FENCE"))))
            if allowed:  # the fence passed, so did every frame before it that may
                assert wait_until(lambda c=cap: any(b"FENCE" in f for f in c.frames), 5)
            else:
                wait_until(lambda: False, 0.5)
            got = b"|".join(cap.close())
            out.close()
            for what, passes, f in FRAMES:
                assert (_tag(f) in got) is (passes and allowed), (peer, what)


# ---------------------------------------------------------------- a guest that spoofs


def _spoof_initrd(env: Env) -> str:
    """The test guest's initramfs with another /init appended (a second cpio archive)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "initramfs-builder"))
    import imagelib  # type: ignore[import-not-found]

    out = env.root / "images" / "spoof.cpio"
    if not out.exists():
        shutil.copyfile(env.root / "images" / "initrd.cpio", out)
        with out.open("ab") as f:
            w = imagelib.CpioWriter(f)
            w.add(imagelib.Entry("init", stat.S_IFREG | 0o755, SPOOF_INIT.encode()))
            w.add(imagelib.Entry("bin/dhcp-mine", stat.S_IFREG | 0o755, DHCP_MINE.encode()))
            w.finish()
    return "/images/spoof.cpio"


def test_a_guest_cannot_spoof(env: Env) -> None:
    c = env.core0()
    uuid = c.json("kvm.create", env.guest_args("spoofer", initrd=_spoof_initrd(env)))
    vm = c.json("kvm.get", {"uuid": uuid})
    ip, mac = vm["default_ip"], vm["params"]["nics"][0]["hwaddr"]
    port = tap(mac)
    assert vm["ifctargets"] == [port]
    # guarded before the guest ran: its MAC, its lease address and 0.0.0.0 (DHCP)
    assert vm_guards(env) == {port: (f"vm:{uuid}", mac, frozenset({ip, "0.0.0.0"}))}
    on_tap, on_bridge = Capture(env.ns.name, port), Capture(env.ns.name, "kvm0")
    console = Path(vm["console"])
    try:
        assert wait_text(console, "GUEST-SPOOFED", 180), console.read_text()[-2000:]
    finally:
        left, passed = on_tap.close(), on_bridge.close()
    text = console.read_text(errors="replace")
    # its own traffic passes: DHCP gave it its lease, the gateway answers its ping
    assert f"GUEST-IP {ip}" in text and f"GUEST-PING-OK {ip}" in text, text[-2000:]

    def forged(f: bytes) -> bool:
        return (f[6:12] == mac_b(FAKE_MAC)
                or (f[12:14] == b"\x08\x06" and f[28:32] == socket.inet_aton(FAKE_ARP))
                or (f[12:14] == b"\x08\x00" and f[26:30] == socket.inet_aton(FAKE_SRC)))

    kinds = {(f[12:14], f[6:12] == mac_b(FAKE_MAC)) for f in left if forged(f)}
    assert {(b"\x08\x06", False), (b"\x08\x00", False), (b"\x08\x06", True),
            (b"\x08\x00", True)} <= kinds, kinds  # each forgery left the guest...
    assert not [f for f in passed if forged(f)]  # ...and none passed the bridge
    assert any(f[6:12] == mac_b(mac) and f[26:30] == socket.inet_aton(ip) for f in passed)
    # no trace on the node: no neighbour for the forged addresses, none with the forged MAC,
    # no FDB entry for it; its address's neighbour is its MAC
    neigh = env.ns.run("ip", "neigh", "show", "dev", "kvm0").stdout
    assert FAKE_ARP not in neigh and FAKE_SRC not in neigh and FAKE_MAC not in neigh, neigh
    assert f"{ip} lladdr {mac}" in neigh, neigh
    assert FAKE_MAC not in env.ns.run("bridge", "fdb", "show", "br", "kvm0").stdout
    assert counter(env, "guard", "spoofed") >= 4

    # a nic hot-plugged onto kvm0 (the guest is up: it lets the nic go again): named after its
    # MAC, guarded with its MAC and no address (no lease of core0's: it sends nothing); its
    # guard goes with it
    extra = "52:54:00:12:34:56"
    c.sync("kvm.add_nic", {"uuid": uuid, "type": "bridge", "id": "kvm0", "hwaddr": extra})
    assert wait_until(lambda: tap(extra) in vm_guards(env), 10)
    assert vm_guards(env)[tap(extra)] == (f"vm:{uuid}", extra, frozenset())
    assert c.json("kvm.get", {"uuid": uuid})["ifctargets"] == [port, tap(extra)]
    c.sync("kvm.remove_nic", {"uuid": uuid, "type": "bridge", "hwaddr": extra})
    assert wait_until(lambda: tap(extra) not in vm_guards(env), 30)
    assert list(vm_guards(env)) == [port]
    c.sync("kvm.destroy", {"uuid": uuid})
    assert vm_guards(env) == {}  # gone with the VM (destroy waits for its cleanup)
    assert table(env) == {}  # the table stays (kvm0 exists): unguarded c0t… ports are closed


# ---------------------------------------------------------------- the guards follow the VMs


def test_guards_follow_the_vms(env: Env) -> None:
    import libvirt

    c = env.core0()
    a = c.json("kvm.create", idle("pa"))
    b = c.json("kvm.create", idle("pb"))
    va, vb = (c.json("kvm.get", {"uuid": u}) for u in (a, b))
    ma, mb = (v["params"]["nics"][0]["hwaddr"] for v in (va, vb))
    want = {tap(ma): (f"vm:{a}", ma, frozenset({va["default_ip"], "0.0.0.0"})),
            tap(mb): (f"vm:{b}", mb, frozenset({vb["default_ip"], "0.0.0.0"}))}
    assert vm_guards(env) == want

    # a hot-plugged nic onto kvm0 (as in the spoofing guest's test)
    extra = "52:54:00:12:34:57"
    c.sync("kvm.add_nic", {"uuid": b, "type": "bridge", "id": "kvm0", "hwaddr": extra})
    assert wait_until(lambda: tap(extra) in vm_guards(env), 10)
    assert vm_guards(env) == {**want, tap(extra): (f"vm:{b}", extra, frozenset())}
    assert c.json("kvm.get", {"uuid": b})["ifctargets"] == [tap(mb), tap(extra)]
    # refused: that MAC on another VM (409), a default-nic MAC on kvm0, the containers'
    # NAT bridge (400)
    assert code_of(c.sync, "kvm.add_nic", {"uuid": a, "type": "bridge", "id": "kvm0",
                                           "hwaddr": extra}) == 409
    assert code_of(c.sync, "kvm.add_nic", {"uuid": a, "type": "bridge", "id": "kvm0",
                                           "hwaddr": "00:28:06:82:01:01"}) == 400
    assert code_of(c.sync, "kvm.add_nic", {"uuid": a, "type": "bridge", "id": "core0"}) == 400
    assert code_of(c.json, "kvm.create", {**idle("px"), "nics": [
        {"type": "default", "hwaddr": extra}]}) == 409
    assert {i["name"] for i in c.json("kvm.list")} == {"pa", "pb"}

    # a closed port: a c0t… link on kvm0 that is no VM's tap sends nothing
    env.ns.run("ip", "link", "add", "c0t0000000000aa", "type", "veth", "peer", "name", "gx")
    env.ns.run("ip", "link", "set", "c0t0000000000aa", "master", "kvm0", "up")
    env.ns.run("ip", "link", "set", "gx", "up")
    before = counter(env, "prerouting", "unguarded")
    out = packet(env.ns.name, "gx")
    out.send(eth("02:00:00:00:00:aa", 0x806, arp("02:00:00:00:00:aa", GW, GW)))
    out.close()
    assert wait_until(lambda: counter(env, "prerouting", "unguarded") > before, 5)
    env.ns.run("ip", "link", "del", "c0t0000000000aa")

    # the dispatcher dies; meanwhile B stops behind its back (its two taps go), A's guard goes
    # missing from the file, a guard of a VM that is gone is planted
    os.kill(dispatcher(env), signal.SIGKILL)
    conn = libvirt.open(env.lv.uri)
    try:
        conn.lookupByUUIDString(b).destroy()
    finally:
        conn.close()
    p = env.node.state_dir / "net" / "guards.json"
    gone = "00000000-0000-4000-8000-000000000000"
    planted = {k: g for k, g in json.loads(p.read_text()).items() if k != tap(ma)}
    planted["c0t0000000000bb"] = {"port": "c0t0000000000bb", "owner": f"vm:{gone}",
                                  "mac": "02:00:00:00:00:bb", "ips": ["172.19.0.77"]}
    p.write_text(json.dumps(planted))
    relisted(env, {"pa"})
    # the first kvm.* command reconciled: exactly A's guard, in the file and the kernel
    assert vm_guards(env) == {tap(ma): want[tap(ma)]}
    assert set(table(env) or {}) == {tap(ma)}
    # again, with only the kernel's table gone (the file right): made whole again
    os.kill(dispatcher(env), signal.SIGKILL)
    env.ns.run("nft", "delete", "table", "bridge", "core0")
    relisted(env, {"pa"})
    assert vm_guards(env) == {tap(ma): want[tap(ma)]}

    # A goes; a new VM takes A's number, so A's MAC and tap name: the guard is the new VM's
    c = env.core0()
    c.sync("kvm.destroy", {"uuid": a})
    assert vm_guards(env) == {}
    n = c.json("kvm.create", idle("pn"))
    vn = c.json("kvm.get", {"uuid": n})
    assert vn["params"]["nics"][0]["hwaddr"] == ma and vn["ifctargets"] == [tap(ma)]
    assert vm_guards(env) == {tap(ma): (f"vm:{n}", ma, frozenset({vn["default_ip"],
                                                                   "0.0.0.0"}))}
    c.sync("kvm.destroy", {"uuid": n})
    assert vm_guards(env) == {} and table(env) == {}


# ---------------------------------------------------------------- migration


def test_guards_follow_a_migration(env: Env) -> None:
    """A VM live-migrates to a second node (its own libvirtd, in a second network namespace;
    the files on "shared storage": this host): its guard leaves the source with it and is
    made on the destination when it arrives (its tap there is closed until then), with the
    address the destination leased it; it goes when the VM stops there."""
    from core0_client import Client

    c = env.core0()
    uuid = c.json("kvm.create", idle("mover"))
    vm = c.json("kvm.get", {"uuid": uuid})
    mac, ip = vm["params"]["nics"][0]["hwaddr"], vm["default_ip"]
    assert vm_guards(env) == {tap(mac): (f"vm:{uuid}", mac, frozenset({ip, "0.0.0.0"}))}
    base_b = Path(tempfile.mkdtemp(prefix="core0-kvmpgb-", dir="/tmp"))
    try:
        with migration_peer(env, base_b) as dest:
            b = Client(unix_socket_path=dest.node.socket, timeout=120)
            try:
                b.kvm.prepare_migration_target(uuid, nics=vm["params"]["nics"])
                assert table(dest) == {}  # kvm0 made there: its c0t… ports closed
                c.kvm.migrate(uuid, "qemu+tcp://10.250.0.2/system")
                assert vm_guards(env) == {}
                assert wait_until(lambda: vm_guards(dest) != {}, 10)
                assert vm_guards(dest) == {
                    tap(mac): (f"vm:{uuid}", mac, frozenset({ip, "0.0.0.0"}))}
                assert b.kvm.get(uuid=uuid)["ifctargets"] == [tap(mac)]
                b.kvm.destroy(uuid)
                assert vm_guards(dest) == {} and table(dest) == {}
            finally:
                b.close()
    finally:
        shutil.rmtree(base_b, ignore_errors=True)
        shutil.rmtree(env.vdir / uuid, ignore_errors=True)
