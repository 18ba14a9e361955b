"""Passthrough nics (0-core's ``passthrough``): a link of the node moved into the container's
netns, named ``eth<index>`` there with its config address; back on the node under its own
name after nic-remove and after terminate. The link is one end of a veth pair made by the test
in the node's netns; the other end stays on the node and reaches the container through it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import wait_until
from sandbox_fixtures import ContainerNode, import_busybox, inside, ok


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    import_busybox(cnode)
    return "bb"


@pytest.fixture
def pair(cnode: ContainerNode) -> Iterator[str]:
    """A veth pair on the node: ``ptx0`` to pass through, ``ptx1`` (10.77.0.1/24) stays."""
    cnode.ns.run("ip", "link", "add", "ptx0", "type", "veth", "peer", "name", "ptx1")
    cnode.ns.run("ip", "addr", "add", "10.77.0.1/24", "dev", "ptx1")
    cnode.ns.run("ip", "link", "set", "ptx1", "up")
    try:
        yield "ptx0"
    finally:
        cnode.ns.run("ip", "link", "del", "ptx1", check=False)


def node_links(cnode: ContainerNode) -> list[str]:
    out = cnode.ns.run("ip", "-o", "link").stdout.splitlines()
    return sorted(ln.split(":")[1].split("@")[0].strip() for ln in out)


def test_passthrough_at_create_and_back_after_terminate(cnode: ContainerNode, image: str,
                                                        pair: str) -> None:
    before = node_links(cnode)
    cid = ok(cnode, "corex.create", {"root": image, "nics": [
        {"type": "passthrough", "id": pair, "config": {"cidr": "10.77.0.2/24"}}]})
    try:
        assert pair not in node_links(cnode)
        res = inside(cnode, cid, "ip -o -4 addr show eth0")
        assert res.state.value == "SUCCESS", res.streams
        assert "10.77.0.2/24" in res.streams[0]
        cnode.ns.run("ping", "-c", "1", "-W", "2", "10.77.0.2")
        nic = ok(cnode, "corex.get", {"query": cid})["container"]["nics"][0]
        assert (nic["type"], nic["inner"], nic["state"]) == ("passthrough", "eth0",
                                                             "configured")
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    assert wait_until(lambda: node_links(cnode) == before, 10), (node_links(cnode), before)
    # back under its own name, with no address of the container's
    assert "10.77.0.2" not in cnode.ns.run("ip", "-o", "addr", "show", pair).stdout


def test_passthrough_hot_add_and_remove(cnode: ContainerNode, image: str, pair: str) -> None:
    before = node_links(cnode)
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    try:
        nic = ok(cnode, "corex.nic-add", {"container": cid, "nic": {
            "type": "passthrough", "id": pair, "name": "uplink",
            "config": {"cidr": "10.77.0.3/24"}}})
        assert nic["inner"] == "uplink"
        assert pair not in node_links(cnode)
        res = inside(cnode, cid, "ip -o -4 addr show uplink")
        assert "10.77.0.3/24" in res.streams[0], res.streams
        cnode.ns.run("ping", "-c", "1", "-W", "2", "10.77.0.3")
        ok(cnode, "corex.nic-remove", {"container": cid, "index": 0})
        assert node_links(cnode) == before
        res = inside(cnode, cid, "ip -o link")
        assert "uplink" not in res.streams[0]
        # an unknown link: 404, nothing moved
        c = cnode.client()
        try:
            r = c.raw("corex.nic-add", {"container": cid, "nic": {
                "type": "passthrough", "id": "nosuch0"}}).get(60)
        finally:
            c.close()
        assert r.code == 404, r.data
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    assert wait_until(lambda: node_links(cnode) == before, 10), (node_links(cnode), before)
