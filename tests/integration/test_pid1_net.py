"""The boot network of core0 init, in network namespaces: a static address with its route,
DHCP from a real DHCP server (busybox udhcpd) through the image's udhcpc script, and the
bounded wait when no address comes."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import require, require_root, wait_until
from pid1 import ROOT, start_pid1

pytestmark = pytest.mark.root

SCRIPT = ROOT / "initramfs-builder/rootfs/usr/share/udhcpc/default.script"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netpair(tmp_path: Path):
    """Two network namespaces joined by a veth: the node's (nic "v0") and a peer's ("v1")."""
    require_root()
    require("ip", "unshare")
    tag = uuid.uuid4().hex[:6]
    node_ns, peer_ns = f"c0n-{tag}", f"c0p-{tag}"
    ip("netns", "add", node_ns)
    ip("netns", "add", peer_ns)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ip("-n", node_ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", node_ns, "link", "set", "v1", "netns", peer_ns)
        ip("-n", peer_ns, "addr", "add", "10.231.7.1/24", "dev", "v1")
        ip("-n", peer_ns, "link", "set", "v1", "up")
        ip("-n", peer_ns, "link", "set", "lo", "up")
        yield node_ns, peer_ns, procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        for ns in (node_ns, peer_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _net_state(node) -> dict:  # type: ignore[no-untyped-def]
    try:
        return json.loads((node.state_dir / "net.json").read_text())
    except (OSError, ValueError):
        return {}


def test_static_address_route_and_dns(netpair, tmp_path: Path) -> None:
    node_ns, _peer, _procs = netpair
    resolv = tmp_path / "resolv.conf"
    node = start_pid1(tmp_path / "n", netns=node_ns, net=f"""
enabled = true
interfaces = ["v0"]
static = {{ v0 = "10.231.7.2/24" }}
gateway = "10.231.7.1"
dns = ["10.231.7.53"]
resolv_conf = "{resolv}"
wait = 10
""")
    try:
        assert wait_until(lambda: _net_state(node).get("state") == "up", 10), node.log_text()
        st = _net_state(node)
        assert {"nic": "v0", "address": "10.231.7.2/24"} in st["addresses"]
        assert "10.231.7.2/24" in ip("-n", node_ns, "-o", "addr", "show", "v0")
        assert "default via 10.231.7.1 dev v0" in ip("-n", node_ns, "route")
        assert resolv.read_text() == "nameserver 10.231.7.53\n"
        # the peer reaches the node's address
        ping = subprocess.run(["ip", "netns", "exec", _peer, "ping", "-c1", "-W2",
                               "10.231.7.2"], capture_output=True)
        assert ping.returncode == 0 or shutil.which("ping") is None
    finally:
        node.kill()


def test_dhcp_lease_through_udhcpc(netpair, tmp_path: Path) -> None:
    require("udhcpc", "busybox")
    node_ns, peer_ns, procs = netpair
    leases = tmp_path / "udhcpd.leases"
    leases.touch()
    conf = tmp_path / "udhcpd.conf"
    conf.write_text(f"""start 10.231.7.100
end 10.231.7.110
interface v1
lease_file {leases}
pidfile {tmp_path / "udhcpd.pid"}
opt router 10.231.7.1
opt dns 10.231.7.1
opt subnet 255.255.255.0
opt lease 600
""")
    procs.append(subprocess.Popen(["ip", "netns", "exec", peer_ns, "busybox", "udhcpd", "-f",
                                   str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    resolv = tmp_path / "resolv.conf"
    node = start_pid1(tmp_path / "n", netns=node_ns, net=f"""
enabled = true
interfaces = ["v0"]
dhcp_script = "{SCRIPT}"
resolv_conf = "{resolv}"
wait = 20
""")
    try:
        assert wait_until(lambda: _net_state(node).get("state") == "up", 20), node.log_text()
        addr = _net_state(node)["addresses"][0]
        assert addr["nic"] == "v0" and addr["address"].startswith("10.231.7.1")
        assert "default via 10.231.7.1 dev v0" in ip("-n", node_ns, "route")
        assert "nameserver 10.231.7.1" in resolv.read_text()
        assert "udhcpc:v0 started" in node.log_text()
        # the DHCP client is a supervised service, stopped with the node
    finally:
        node.kill()


def test_no_address_phase_times_out(netpair, tmp_path: Path) -> None:
    require("udhcpc")
    node_ns, _peer, _procs = netpair
    node = start_pid1(tmp_path / "n", netns=node_ns, net=f"""
enabled = true
interfaces = ["v0"]
dhcp_script = "{SCRIPT}"
resolv_conf = "{tmp_path / 'resolv.conf'}"
wait = 2
""")
    try:
        assert _net_state(node).get("state") in ("waiting", "timeout")
        assert wait_until(lambda: _net_state(node).get("state") == "timeout", 10)
        assert "no address after 2s" in node.log_text()
        # the node keeps answering without a network
        c = node.client()
        try:
            assert c.ping().startswith("PONG")
        finally:
            c.close()
    finally:
        node.kill()
