"""nft.*: open ports and the input policy, seen from a peer namespace; core0 keeps to its own
table; hostile names and addresses are refused with 400 before anything is touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from core0_client.errors import ResultError
from net_fixtures import NetNode, Netns, fetch, net_node, netns, serve

pytestmark = pytest.mark.root
__all__ = ["net_node"]

FOREIGN = """table inet c0test_foreign {
  chain input {
    type filter hook input priority 10; policy accept;
    tcp dport 4444 accept comment "not core0's"
  }
}
"""


@pytest.fixture(scope="module")
def peer(net_node: NetNode) -> Iterator[tuple[Any, Netns]]:
    """A peer namespace on p0 (198.19.0.2 → host 198.19.0.1), plus a foreign nft table."""
    c = net_node.client()
    host = net_node.ns
    subprocess_nft(host, FOREIGN)
    with netns("peer") as p:
        c.ip.link.add("p0", "veth", peer="eth0", peer_netns=p.name, up=True)
        c.ip.addr.add("p0", "198.19.0.1/24")
        p.run("ip", "addr", "add", "198.19.0.2/24", "dev", "eth0")
        p.run("ip", "link", "set", "eth0", "up")
        try:
            yield c, p
            # core0 left the foreign table alone and removed its own
            listing = host.run("nft", "list", "table", "inet", "c0test_foreign").stdout
            assert 'comment "not core0\'s"' in listing
            assert c.nft.show() == {"text": "", "rules": []}
        finally:
            c.nft.policy("accept")
            c.ip.link.delete("p0")
            host.run("nft", "delete", "table", "inet", "c0test_foreign", check=False)
            c.close()


def subprocess_nft(ns: Netns, text: str) -> None:
    import subprocess

    subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=text, text=True,
                   check=True)


def test_open_port_with_drop_policy(peer: tuple[Any, Netns], net_node: NetNode) -> None:
    c, p = peer
    srv = serve(net_node.ns, 8500, "host")
    url = "http://198.19.0.1:8500/"
    try:
        assert fetch(p, url) == "host 198.19.0.2"
        assert c.nft.policy("drop") == {"policy": "drop", "was": "accept"}
        assert fetch(p, url, timeout=1) is None
        c.nft.open_port(8500, interface="p0", subnet="198.19.0.0/24")
        assert c.nft.rule_exists(8500, interface="p0", subnet="198.19.0.9/24")  # same network
        assert not c.nft.rule_exists(8500)
        assert fetch(p, url) == "host 198.19.0.2"
        with pytest.raises(ResultError) as e:
            c.nft.open_port(8500, interface="p0", subnet="198.19.0.0/24")
        assert e.value.code == 409
        # 0-core's shape: the rule strings
        assert c.nft.list() == ['iifname "p0" ip saddr 198.19.0.0/24 tcp dport 8500 accept']
        assert c.nft.drop_port(8500, interface="p0", subnet="198.19.0.0/24") is True
        assert c.nft.drop_port(8500, interface="p0", subnet="198.19.0.0/24") is False
        assert fetch(p, url, timeout=1) is None
        # a rule for other interfaces does not open it
        c.nft.open_port(8500, interface="q*")
        assert fetch(p, url, timeout=1) is None
        c.nft.open_port(8500, interface="p*")
        assert fetch(p, url) == "host 198.19.0.2"
        rules = c.nft.show()["rules"]
        assert [r["comment"] for r in rules if r["chain"] == "input"].count("open_port") == 2
        c.nft.drop_port(8500, interface="q*")
        c.nft.drop_port(8500, interface="p*")
    finally:
        c.nft.policy("accept")
        srv.kill()
    assert fetch(p, url, timeout=1) is None  # nothing listens any more
    assert c.nft.list() == []


HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("ip.link.add", {"name": "eth0; rm -rf /", "kind": "bridge"}),
    ("ip.link.add", {"name": "-rf", "kind": "bridge"}),
    ("ip.link.add", {"name": "a" * 16, "kind": "bridge"}),
    ("ip.link.add", {"name": "../x", "kind": "bridge"}),
    ("ip.link.add", {"name": "..", "kind": "bridge"}),
    ("ip.link.add", {"name": "", "kind": "bridge"}),
    ("ip.link.add", {"name": "x\ny", "kind": "bridge"}),
    ("ip.link.add", {"name": "ok0", "kind": "veth", "peer": 'p"'}),
    ("ip.link.add", {"name": "ok0", "kind": "bridge", "hwaddr": "zz:zz:zz:zz:zz:zz"}),
    ("ip.link.add", {"name": "ok0", "kind": "bridge", "peer": "x"}),  # not a bridge field
    ("ip.link.add", {"name": "ok0", "kind": "ipvlan"}),
    ("ip.link.add", {"name": "ok0", "kind": "vxlan", "id": 1, "local": "1.2.3.4; x"}),
    ("ip.link.add", {"name": "ok0", "kind": "vxlan", "id": 1, "remote": "999.1.1.1"}),
    ("ip.link.list", {"netns": "../../proc/1/ns/net"}),
    ("ip.link.list", {"netns": "/run/netns/x"}),
    ("ip.link.add", {"name": "ok0", "kind": "veth", "peer": "p", "peer_netns": "../x"}),
    ("ip.addr.add", {"name": "lo", "ip": "10.0.0.1"}),  # no prefix
    ("ip.addr.add", {"name": "lo", "ip": "10.0.0.300/24"}),
    ("ip.addr.add", {"name": "lo", "ip": "10.0.0.1/24 dev eth0"}),
    ("ip.route.add", {"dst": "10.0.0.0/33", "dev": "lo"}),
    ("ip.route.add", {"dst": "everything", "dev": "lo"}),
    ("ip.route.add", {"dst": "10.9.0.0/24", "gw": "fd00::1"}),
    ("ip.netns.add", {"name": "../etc"}),
    ("ip.netns.add", {"name": "a/b"}),
    ("nft.open_port", {"port": 0}),
    ("nft.open_port", {"port": 70000}),
    ("nft.open_port", {"port": "22"}),
    ("nft.open_port", {"port": 22, "interface": 'eth0" accept; flush ruleset; #'}),
    ("nft.open_port", {"port": 22, "interface": "eth0 "}),
    ("nft.open_port", {"port": 22, "interface": "*"}),
    ("nft.open_port", {"port": 22, "subnet": "10.0.0.0/8 accept"}),
    ("nft.open_port", {"port": 22, "subnet": "10.0.0.0/99"}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2",
                         "forwards": {"8080; flush ruleset": 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2",
                         "forwards": {'eth0":80': 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2",
                         "forwards": {"1.2.3.4:80|icmp": 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2", "forwards": {"[::1]:80": 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2", "forwards": {"80000": 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2", "forwards": {":80": 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2", "forwards": {"80": 0}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "fd00::2", "forwards": {"80": 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2 ", "forwards": {"80": 80}}),
    ("nft.forward_add", {"owner": 'container:1" drop', "ip": "10.0.0.2", "forwards": {"80": 80}}),
    ("nft.forward_add", {"owner": "root:1", "ip": "10.0.0.2", "forwards": {"80": 80}}),
    ("nft.forward_add", {"owner": "container:1", "ip": "10.0.0.2", "forwards": {}}),
    ("nft.owner_remove", {"owner": "container:"}),
    ("nft.policy", {"policy": "reject"}),
    ("bridge.create", {"name": "default"}),
    ("bridge.create", {"name": "br;x"}),
    ("bridge.create", {"name": "brh", "network": {"mode": "static"}}),  # no cidr
    ("bridge.create", {"name": "brh", "network": {"mode": "static", "cidr": "10.9.0.0/24"}}),
    ("bridge.create", {"name": "brh", "network": {"mode": "static", "cidr": "fd00::1/64"}}),
    ("bridge.create", {"name": "brh", "network": {"mode": "dnsmasq", "cidr": "10.9.0.1/24",
                                                  "start": "10.9.1.10", "end": "10.9.0.20"}}),
    ("bridge.create", {"name": "brh", "network": {"mode": "dnsmasq", "cidr": "10.9.0.1/24",
                                                  "start": "10.9.0.30", "end": "10.9.0.20"}}),
    ("bridge.create", {"name": "brh", "network": {"mode": "dnsmasq", "cidr": "10.9.0.1/24",
                                                  "start": "10.9.0.10\ndhcp-script=/x",
                                                  "end": "10.9.0.20"}}),
    ("bridge.create", {"name": "brh", "network": {"mode": "bogus"}}),
    ("bridge.create", {"name": "brh", "network": {"nat": True}}),
    ("bridge.add_host", {"bridge": "brh", "ip": "10.9.0.5", "mac": "02:00:00:00:00:0g"}),
    ("bridge.add_host", {"bridge": "brh", "ip": "10.9.0.5\n", "mac": "02:00:00:00:00:01"}),
    ("bridge.nic-add", {"name": "br0", "nic": "eth0 master"}),
]


@pytest.mark.parametrize("command,args", HOSTILE, ids=[f"{c}-{i}" for i, (c, _) in
                                                         enumerate(HOSTILE)])
def test_hostile_values_are_refused(net_node: NetNode, command: str, args: dict[str, Any]
                                    ) -> None:
    c = net_node.client()
    try:
        before = [link["name"] for link in c.ip.link.list()]
        with pytest.raises(ResultError) as e:
            c.json(command, args)
        assert e.value.code == 400, e.value
        assert [link["name"] for link in c.ip.link.list()] == before
        assert c.nft.show()["text"] == ""
        # one listing (the admin sees the host's /run/netns, which others change meanwhile)
        assert all("/" not in n for n in c.ip.netns.list())
    finally:
        c.close()
