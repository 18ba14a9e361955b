"""ip.*: links, addresses, routes, namespaces, vxlan and macvlan, through a real node.

Most of it acts in peer namespaces through the ``netns`` argument, the way core0 will wire
containers; the node itself runs in its own host namespace (tests/net_fixtures.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import code_of, kernel_lacks
from core0_client.errors import ResultError
from net_fixtures import NetNode, Netns, net_node, netns

pytestmark = pytest.mark.root
__all__ = ["net_node"]


@pytest.fixture
def c(net_node: NetNode) -> Iterator[Any]:
    cl = net_node.client()
    before = {link["name"] for link in cl.ip.link.list()}
    yield cl
    # nothing left behind in the node's namespace
    assert {link["name"] for link in cl.ip.link.list()} == before
    cl.close()


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns("a") as a, netns("b") as b:
        yield a, b


def names(c: Any, ns: str | None = None) -> list[str]:
    return [link["name"] for link in c.ip.link.list(netns=ns)]


def test_link_lifecycle(c: Any, pair: tuple[Netns, Netns]) -> None:
    a, _ = pair
    ns = a.name
    c.ip.link.add("ve0", "veth", peer="ve1", netns=ns, mtu=1400, hwaddr="02:00:00:00:aa:01")
    link = c.ip.link.get("ve0", netns=ns)
    assert (link["type"], link["mtu"], link["hwaddr"], link["up"]) == (
        "veth", 1400, "02:00:00:00:aa:01", False)
    assert code_of(c.ip.link.add, "ve0", "veth", peer="ve2", netns=ns) == 409
    c.ip.link.up("ve0", netns=ns)
    assert c.ip.link.get("ve0", netns=ns)["up"] is True
    c.ip.link.down("ve0", netns=ns)
    c.ip.link.mtu("ve0", 1300, netns=ns)
    c.ip.link.name("ve0", "vx9", netns=ns)
    assert "vx9" in names(c, ns) and "ve0" not in names(c, ns)
    c.ip.link.add("brx", "bridge", netns=ns, up=True)
    c.ip.link.set("vx9", netns=ns, master="brx", up=True, mtu=1280)
    got = c.ip.link.get("vx9", netns=ns)
    assert (got["master"], got["up"], got["mtu"]) == ("brx", True, 1280)
    c.ip.link.set("vx9", netns=ns, nomaster=True)
    assert c.ip.link.get("vx9", netns=ns)["master"] == ""
    # move a link into another namespace
    c.ip.link.set("ve1", netns=ns, move_to=pair[1].name)
    assert "ve1" in names(c, pair[1].name)
    c.ip.link.delete("vx9", netns=ns)
    c.ip.link.delete("brx", netns=ns)
    assert names(c, ns) == ["lo"]
    assert names(c, pair[1].name) == ["lo"]  # the peer went with its veth
    assert code_of(c.ip.link.delete, "vx9", netns=ns) == 404
    assert code_of(c.ip.link.up, "nope", netns=ns) == 404
    assert code_of(c.ip.link.list, netns="no-such-ns") == 404
    assert code_of(c.ip.link.add, "v", "veth", peer="p", peer_netns="no-such-ns") == 404


def test_add_many_is_all_or_nothing(c: Any, pair: tuple[Netns, Netns]) -> None:
    ns = pair[0].name
    links = [{"name": f"m{i}", "kind": "veth", "peer": f"m{i}p"} for i in range(20)]
    assert c.ip.link.add_many(links, netns=ns) == {"created": [f"m{i}" for i in range(20)]}
    assert len(names(c, ns)) == 41
    # the third one exists already: the two before it are removed again
    batch = [{"name": "n0", "kind": "bridge"}, {"name": "n1", "kind": "bridge"},
             {"name": "m3", "kind": "bridge"}]
    with pytest.raises(ResultError) as e:
        c.ip.link.add_many(batch, netns=ns)
    assert e.value.code == 409 and "links[2]" in str(e.value)
    assert "n0" not in names(c, ns)
    res = c.ip.link.del_many([f"m{i}" for i in range(20)] + ["zz"], netns=ns)
    assert res == {"deleted": [f"m{i}" for i in range(20)], "missing": ["zz"]}
    assert names(c, ns) == ["lo"]


def test_addresses_and_routes(c: Any, pair: tuple[Netns, Netns]) -> None:
    ns = pair[0].name
    c.ip.link.add("r0", "veth", peer="r1", netns=ns, up=True)
    c.ip.link.up("r1", netns=ns)
    c.ip.addr.add("r0", "10.240.0.1/24", netns=ns)
    c.ip.addr.add("r0", "fd00:240::1/64", netns=ns)
    assert code_of(c.ip.addr.add, "r0", "10.240.0.1/24", netns=ns) == 409
    assert set(c.ip.addr.list("r0", netns=ns)) >= {"10.240.0.1/24", "fd00:240::1/64"}
    rows = c.ip.addr.list(netns=ns)
    assert {"name": "r0", "addr": "10.240.0.1/24", "family": "inet"} in rows

    c.ip.route.add("10.241.0.0/16", gw="10.240.0.254", netns=ns, metric=50)
    c.ip.route.add(gw="10.240.0.254", netns=ns)  # default
    c.ip.route.add("10.242.0.0/24", dev="r0", netns=ns)
    routes = c.ip.route.list(netns=ns)
    assert {"dst": "10.241.0.0/16", "gw": "10.240.0.254", "dev": "r0", "metric": 50} in [
        {k: r[k] for k in ("dst", "gw", "dev", "metric")} for r in routes]
    assert "default" in [r["dst"] for r in routes]
    assert [r["dst"] for r in c.ip.route.list(dev="r0", netns=ns)].count("10.242.0.0/24") == 1
    assert code_of(c.ip.route.add, "10.243.0.0/24", gw="192.0.2.1", netns=ns) == 400
    assert code_of(c.ip.route.add, "10.244.0.0/24", netns=ns) == 400  # neither gw nor dev
    c.ip.route.delete("10.241.0.0/16", gw="10.240.0.254", netns=ns, metric=50)
    c.ip.route.delete(netns=ns)  # the default route, by dst alone
    assert code_of(c.ip.route.delete, "10.241.0.0/16", dev="r0", netns=ns) == 404
    c.ip.addr.delete("r0", "10.240.0.1/24", netns=ns)
    assert code_of(c.ip.addr.delete, "r0", "10.240.0.1/24", netns=ns) == 404
    assert "10.240.0.1/24" not in c.ip.addr.list("r0", netns=ns)
    c.ip.link.delete("r0", netns=ns)


def test_netns_commands(c: Any, net_node: NetNode) -> None:
    name = f"{pair_prefix()}-own"
    c.ip.netns.add(name)
    try:
        assert name in c.ip.netns.list()
        assert code_of(c.ip.netns.add, name) == 409
        lo = c.ip.link.get("lo", netns=name)
        assert lo["up"] is True
        c.ip.link.add("e0", "bridge", netns=name)
        assert "e0" in names(c, name)
    finally:
        c.ip.netns.delete(name)
    assert name not in c.ip.netns.list()
    assert code_of(c.ip.netns.delete, name) == 404
    # no worker thread stayed in the namespace it made: links land in the node's own
    for i in range(12):
        c.ip.link.add(f"chk{i}", "bridge")
    seen = net_node.ns.run("ip", "-o", "link", "show", "type", "bridge").stdout
    assert all(f"chk{i}:" in seen for i in range(12)), seen
    assert c.ip.link.del_many([f"chk{i}" for i in range(12)])["missing"] == []


def pair_prefix() -> str:
    from net_fixtures import TAG

    return TAG


def _underlay(c: Any, a: Netns, b: Netns) -> None:
    """a veth between a and b, 192.0.2.1 and .2"""
    c.ip.link.add("u0", "veth", peer="u0", peer_netns=b.name, netns=a.name, up=True)
    c.ip.link.up("u0", netns=b.name)
    c.ip.addr.add("u0", "192.0.2.1/24", netns=a.name)
    c.ip.addr.add("u0", "192.0.2.2/24", netns=b.name)


def test_vxlan_between_namespaces(c: Any, pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    _underlay(c, a, b)
    for ns, local, remote, addr in ((a, "192.0.2.1", "192.0.2.2", "10.250.0.1/24"),
                                   (b, "192.0.2.2", "192.0.2.1", "10.250.0.2/24")):
        c.ip.link.add("vx42", "vxlan", netns=ns.name, id=42, local=local, remote=remote,
                      parent="u0", port=4789, up=True)
        c.ip.addr.add("vx42", addr, netns=ns.name)
    assert c.ip.link.get("vx42", netns=a.name)["type"] == "vxlan"
    r = a.run("ping", "-c", "2", "-W", "2", "10.250.0.2", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert code_of(c.ip.link.add, "vx1", "vxlan", netns=a.name) == 400  # no id
    assert code_of(c.ip.link.add, "vx1", "vxlan", netns=a.name, id=1, group="10.0.0.1") == 400


def test_macvlan(c: Any, pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    _underlay(c, a, b)
    c.ip.link.add("mv0", "macvlan", netns=a.name, parent="u0", mode="bridge", up=True)
    c.ip.addr.add("mv0", "192.0.2.11/24", netns=a.name)
    assert c.ip.link.get("mv0", netns=a.name)["type"] == "macvlan"
    r = b.run("ping", "-c", "2", "-W", "2", "192.0.2.11", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert code_of(c.ip.link.add, "mv1", "macvlan", netns=a.name) == 400  # no parent
    assert code_of(c.ip.link.add, "mv1", "macvlan", netns=a.name, parent="u0",
                   mode="nonsense") == 400


def _probe(c: Any, ns: str, kind: str, **kw: Any) -> None:
    """Create a ``kind`` link or skip when this kernel truly lacks it (412)."""
    try:
        c.ip.link.add(f"t{kind}", kind, netns=ns, **kw)
    except ResultError as e:
        if e.code == 412:
            kernel_lacks(f"kernel lacks {kind} links: {e.message}")
        raise


def test_dummy_link(c: Any, pair: tuple[Netns, Netns]) -> None:
    ns = pair[0].name
    _probe(c, ns, "dummy")
    c.ip.link.up("tdummy", netns=ns)
    c.ip.addr.add("tdummy", "10.251.0.1/24", netns=ns)
    assert c.ip.link.get("tdummy", netns=ns)["type"] == "dummy"
    c.ip.link.delete("tdummy", netns=ns)


def test_vlan_link(c: Any, pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    _underlay(c, a, b)
    _probe(c, a.name, "vlan", parent="u0", id=100, up=True)
    c.ip.link.add("tvlan", "vlan", netns=b.name, parent="u0", id=100, up=True)
    c.ip.addr.add("tvlan", "10.252.0.1/24", netns=a.name)
    c.ip.addr.add("tvlan", "10.252.0.2/24", netns=b.name)
    assert c.ip.link.get("tvlan", netns=a.name)["type"] == "vlan"
    r = a.run("ping", "-c", "2", "-W", "2", "10.252.0.2", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert code_of(c.ip.link.add, "v5000", "vlan", netns=a.name, parent="u0", id=5000) == 400


def test_bond_link(c: Any, pair: tuple[Netns, Netns]) -> None:
    ns = pair[0].name
    _probe(c, ns, "bond", mode="active-backup")
    c.ip.link.add("s0", "veth", peer="s0p", netns=ns)
    c.ip.link.set("s0", netns=ns, master="tbond")
    assert c.ip.link.get("s0", netns=ns)["master"] == "tbond"
    assert c.ip.link.get("tbond", netns=ns)["type"] == "bond"
    c.ip.link.delete("tbond", netns=ns)
    c.ip.link.delete("s0", netns=ns)


def test_missing_kinds_answer_412_with_reason(c: Any, pair: tuple[Netns, Netns]) -> None:
    """Whatever this kernel lacks is a 412 naming the kind (ipvlan is not offered: 400)."""
    ns = pair[0].name
    for kind in ("dummy", "bond"):
        try:
            c.ip.link.add("k0", kind, netns=ns)
        except ResultError as e:
            assert e.code == 412 and kind in e.message
        else:
            c.ip.link.delete("k0", netns=ns)
    assert code_of(c.ip.link.add, "k0", "ipvlan", netns=ns) == 400
