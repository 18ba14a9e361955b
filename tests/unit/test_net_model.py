"""The nft model and ruleset builder, the dnsmasq config, the link and bridge argument checks.

The rulesets and the dnsmasq config are also checked by the real tools (``nft -c`` inside a
throwaway network namespace made by ``unshare -n``, ``dnsmasq --test``) when available.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require, require_root

from core0.errors import BadRequest
from core0.net import nft, validate
from core0.net.dnsmasq import config as dnsmasq_config
from core0.net.netlink import LinkSpec
from core0.net.state import Bridge, NetState
from core0.schema import parse


@pytest.mark.parametrize("text,kind,match,port,protos,key", [
    ("8080", "any", "", 8080, ("tcp",), "8080|tcp"),
    ("8080|udp", "any", "", 8080, ("udp",), "8080|udp"),
    ("8080|udp+tcp", "any", "", 8080, ("tcp", "udp"), "8080|tcp+udp"),
    ("10.0.0.1:80", "ip", "10.0.0.1", 80, ("tcp",), "10.0.0.1:80|tcp"),
    ("10.0.0.7/8:80|tcp", "cidr", "10.0.0.0/8", 80, ("tcp",), "10.0.0.0/8:80|tcp"),
    ("eth0:22", "nic", "eth0", 22, ("tcp",), "eth0:22|tcp"),
    ("zt*:22|tcp+udp", "nic", "zt*", 22, ("tcp", "udp"), "zt*:22|tcp+udp"),
])
def test_parse_source(text: str, kind: str, match: str, port: int, protos: tuple[str, ...],
                      key: str) -> None:
    s = nft.parse_source(text)
    assert (s.kind, s.match, s.port, s.protos, s.key) == (kind, match, port, protos, key)
    assert nft.parse_source(s.key) == s


@pytest.mark.parametrize("text", [
    "", "0", "65536", "80|icmp", "80|", ":80", "eth0:", "eth0:8o", 'eth0":80', "eth 0:80",
    "[::1]:80", "fd00::1:80", "fd00::/64:80", "1.2.3.4.5:80", "10.0.0.0/40:80", "*:80",
    "-x:80", "a" * 16 + ":80", "8080; flush ruleset", "8080\n", "x" * 100,
])
def test_parse_source_refuses(text: str) -> None:
    with pytest.raises(BadRequest):
        nft.parse_source(text)


def test_forward_rules_text() -> None:
    f = nft.Forward.make("container:3", "eth0:8080|tcp+udp", "10.1.0.2", 80)
    assert f.rules("prerouting") == [
        'meta nfproto ipv4 iifname "eth0" fib daddr type local tcp dport 8080 '
        'dnat ip to 10.1.0.2:80 comment "owner=container:3"',
        'meta nfproto ipv4 iifname "eth0" fib daddr type local udp dport 8080 '
        'dnat ip to 10.1.0.2:80 comment "owner=container:3"',
    ]
    assert f.rules("output") == []  # nic-bound: not for host-originated traffic
    g = nft.Forward.make("vm:a", "8080", "10.1.0.3", 80)
    assert g.rules("output") == [
        "meta nfproto ipv4 ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 "
        'dnat ip to 10.1.0.3:80 comment "owner=vm:a"']
    assert g.slots() == {("", "tcp", 8080)}
    for owner in ("container:", "root:1", 'vm:a"', "user:a b"):
        with pytest.raises(BadRequest):
            nft.Forward.make(owner, "80", "10.0.0.1", 80)
    for ip in ("fd00::1", "10.0.0.1/24", "x"):
        with pytest.raises(BadRequest):
            nft.Forward.make("vm:a", "80", ip, 80)


def test_open_port_rule() -> None:
    assert nft.OpenPort.make(22, None, None).rule() == "tcp dport 22 accept"
    assert nft.OpenPort.make(22, "eth*", "fd00::5/64").rule() == \
        'iifname "eth*" ip6 saddr fd00::/64 tcp dport 22 accept'
    for bad in ({"interface": 'a"'}, {"interface": "*"}, {"subnet": "x"}, {"port": 0}):
        kw = {"port": 22, "interface": None, "subnet": None, **bad}
        with pytest.raises(BadRequest):
            nft.OpenPort.make(kw["port"], kw["interface"], kw["subnet"])  # type: ignore[arg-type]


def _model() -> str:
    return nft.build(
        "drop",
        [nft.OpenPort.make(22, "eth0", "10.0.0.0/8"), nft.OpenPort.make(80, None, None)],
        [nft.Forward.make("container:1", "8080|tcp+udp", "10.20.0.2", 80),
         nft.Forward.make("vm:x", "zt*:2222", "10.20.0.3", 22),
         nft.Forward.make("user:u", "192.168.1.0/24:81", "10.20.0.3", 81)],
        [nft.BridgeRules("br0", "10.20.0.0/24", True, True),
         nft.BridgeRules("br1", "", False, False)],
        [6379])


def test_build_is_one_replacing_transaction() -> None:
    text = _model()
    assert text.startswith("table inet core0 {}\ndelete table inet core0\ntable inet core0 {")
    assert "policy drop;" in text
    assert 'iifname "br0" udp dport { 53, 67 } accept comment "bridge=br0"' in text
    assert 'tcp dport 6379 accept comment "core0 api"' in text
    assert 'ip saddr 10.20.0.0/24 oifname != "br0" masquerade comment "bridge=br0"' in text
    assert text.count('comment "owner=container:1"') == 4
    assert 'ip saddr 10.20.0.0/24 oifname "br0" ct status dnat masquerade' in text
    assert "br1" not in text
    # nothing to say: the table is only deleted
    assert nft.build("accept", [], [], [nft.BridgeRules("b", "", False, False)], [6379]) == \
        "table inet core0 {}\ndelete table inet core0\n"


def test_build_passes_nft_check() -> None:
    """nft itself accepts the generated ruleset (checked in a throwaway netns, nothing kept)."""
    require("nft", "unshare")
    require_root()  # nft -c needs CAP_NET_ADMIN
    r = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=_model(), text=True,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_state_round_trip() -> None:
    st = NetState(policy="drop", open_ports=[nft.OpenPort.make(22, "eth0", None)],
                  forwards=[nft.Forward.make("vm:x", "80", "10.0.0.2", 8080)],
                  bridges={"br0": Bridge("br0", mode="dnsmasq", nat=True, cidr="10.0.0.1/24",
                                         start="10.0.0.10", end="10.0.0.20",
                                         hosts={"02:00:00:00:00:01": "10.0.0.5"})})
    assert NetState.from_json(st.to_json()) == st
    assert st.copy() == st and st.copy() is not st


def test_dnsmasq_config(tmp_path: Path) -> None:
    br = Bridge("br0", mode="dnsmasq", nat=True, cidr="10.0.0.1/24", start="10.0.0.10",
                end="10.0.0.20", hosts={"02:00:00:00:00:01": "10.0.0.5"})
    text = dnsmasq_config(br, tmp_path)
    assert "interface=br0\n" in text and "listen-address=10.0.0.1\n" in text
    assert "dhcp-range=10.0.0.10,10.0.0.20,255.255.255.0,1h\n" in text
    assert "dhcp-host=02:00:00:00:00:01,10.0.0.5\n" in text
    static = dnsmasq_config(Bridge("br1", mode="static", cidr="10.1.0.1/24"), tmp_path)
    assert "dhcp" not in static.replace("dhcp-leasefile", "")
    if shutil.which("dnsmasq"):
        conf = tmp_path / "dnsmasq.conf"
        conf.write_text(text)
        r = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def test_link_spec_checks() -> None:
    ok = [
        {"name": "v0", "kind": "veth", "peer": "v1"},
        {"name": "v0", "kind": "veth", "peer": "v0", "peer_netns": "ns1"},
        {"name": "x0", "kind": "vxlan", "id": 5, "local": "10.0.0.1", "remote": "10.0.0.2"},
        {"name": "x0", "kind": "vxlan", "id": 5, "group": "239.1.1.1", "parent": "eth0"},
        {"name": "m0", "kind": "macvlan", "parent": "eth0", "mode": "vepa"},
        {"name": "eth0.100", "kind": "vlan", "parent": "eth0", "id": 100},
        {"name": "b0", "kind": "bond", "mode": "802.3ad"},
        {"name": "d0", "kind": "dummy", "mtu": 9000, "hwaddr": "02:00:00:00:00:01"},
    ]
    for d in ok:
        parse(LinkSpec, d)
    bad = [
        {"name": "v0", "kind": "veth"},
        {"name": "v0", "kind": "veth", "peer": "v0"},
        {"name": "b0", "kind": "bridge", "peer": "x"},
        {"name": "x0", "kind": "vxlan"},
        {"name": "x0", "kind": "vxlan", "id": 5, "remote": "10.0.0.2", "group": "239.1.1.1"},
        {"name": "x0", "kind": "vxlan", "id": 5, "group": "10.0.0.2"},
        {"name": "x0", "kind": "vxlan", "id": 5, "local": "10.0.0.1", "remote": "fd00::2"},
        {"name": "m0", "kind": "macvlan"},
        {"name": "m0", "kind": "macvlan", "parent": "eth0", "mode": "x"},
        {"name": "v", "kind": "vlan", "parent": "eth0", "id": 4095},
        {"name": "b0", "kind": "bond", "mode": "fast"},
        {"name": "d0", "kind": "dummy", "mtu": 10},
        {"name": "d0", "kind": "wireguard"},
        {"name": "d0 x", "kind": "dummy"},
    ]
    for d in bad:
        with pytest.raises(BadRequest):
            parse(LinkSpec, d)


@pytest.mark.parametrize("value,ok", [
    ("eth0", True), ("br-lan.10", True), ("a" * 15, True), ("a" * 16, False), ("-x", False),
    (".x", False), ("..", False), ("", False), ("a b", False), ("a/b", False), ("a:b", False),
    ("a*", False),
])
def test_ifname(value: str, ok: bool) -> None:
    if ok:
        assert validate.ifname(value) == value
    else:
        with pytest.raises(BadRequest):
            validate.ifname(value)


def test_bridge_plan() -> None:
    from core0.commands.bridge import CreateArgs, _plan

    br = _plan(parse(CreateArgs, {"name": "br0", "network": {
        "mode": "dnsmasq", "nat": True, "settings": {"cidr": "10.0.0.1/24", "start": "10.0.0.10",
                                                     "end": "10.0.0.20"}}}))
    assert (br.mode, br.nat, br.cidr, br.start, br.end) == (
        "dnsmasq", True, "10.0.0.1/24", "10.0.0.10", "10.0.0.20")
    assert _plan(parse(CreateArgs, {"name": "br0", "network": {"mode": ""}})).mode == "none"
    for net in ({"mode": "static", "cidr": "10.0.0.1/24", "settings": {"cidr": "10.0.0.1/24"}},
                {"mode": "none", "start": "10.0.0.1"},
                {"mode": "static", "cidr": "10.0.0.255/24"},
                {"mode": "dnsmasq", "cidr": "10.0.0.1/24", "start": "10.0.0.10"}):
        with pytest.raises(BadRequest):
            _plan(parse(CreateArgs, {"name": "br0", "network": net}))
