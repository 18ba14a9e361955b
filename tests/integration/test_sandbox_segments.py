"""Containers on VXLAN segments (``nics: [{type: vxlan, id: VNI}]``, core0/net/segments.py):
containers on the same VNI share one L2 network, another VNI is another network, a nic
hot-plugged onto a segment works, and the segment goes with its last nic."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from sandbox_fixtures import ContainerNode, busybox_rootfs, container_node, node_tag, ok

pytestmark = pytest.mark.root

CONFIG = '[segments]\nparent = "under0"\nvxlan_remotes = ["10.231.10.2"]\n'


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    with container_node(CONFIG) as n:
        n.ns.run("ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
        n.ns.run("ip", "addr", "add", "10.231.10.1/24", "dev", "under0")
        for link in ("under0", "under1"):
            n.ns.run("ip", "link", "set", link, "up")
        root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=n.dir)) / "rootfs")
        ok(n, "container.image.import", {"name": "bb", "source": str(root)})
        yield n




def pings(cnode: ContainerNode, cid: int, addr: str) -> bool:
    """Does container ``cid`` reach ``addr``? (The host's ping in the container's network
    namespace: a default container may not open raw sockets.)"""
    ns = f"core0-{node_tag(cnode)}-{cid}"
    res = cnode.ns.run("ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "2", "-i", "0.3",
                       addr, check=False)
    return res.returncode == 0


def links(cnode: ContainerNode) -> set[str]:
    out = cnode.ns.run("ip", "-o", "link", "show").stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def vxlan(vni: int, cidr: str) -> dict[str, Any]:
    return {"type": "vxlan", "id": str(vni), "config": {"cidr": cidr}}


def test_containers_on_a_vxlan_segment(cnode: ContainerNode) -> None:
    a = ok(cnode, "corex.create", {"root": "bb", "nics": [vxlan(42, "192.168.42.10/24")]})
    b = ok(cnode, "corex.create", {"root": "bb", "nics": [vxlan(42, "192.168.42.11/24")]})
    d = ok(cnode, "corex.create", {"root": "bb", "nics": [vxlan(43, "192.168.42.12/24")]})
    c = ok(cnode, "corex.create", {"root": "bb", "nics": []})
    try:
        assert {"c0vx42", "c0vxb42", "c0vx43", "c0vxb43"} <= links(cnode)
        assert "vxlan id 42" in cnode.ns.run("ip", "-d", "link", "show", "c0vx42").stdout
        assert pings(cnode, a, "192.168.42.11")
        assert not pings(cnode, a, "192.168.42.12")  # VNI 43: another network
        # hot-plug: c gets a nic on VNI 42 and reaches a; unplugged, it does not
        nic = ok(cnode, "corex.nic-add", {"container": c, "nic": vxlan(42, "192.168.42.13/24")})
        assert pings(cnode, c, "192.168.42.10")
        ok(cnode, "corex.nic-remove", {"container": c, "index": nic["index"]})
        assert not pings(cnode, c, "192.168.42.10")
        ok(cnode, "corex.terminate", {"container": d})
        d = 0
        assert wait_until(lambda: not {"c0vx43", "c0vxb43"} & links(cnode), 10)
        assert "c0vxb42" in links(cnode)  # a and b still on it
    finally:
        for cid in (a, b, c, d):
            if cid:
                ok(cnode, "corex.terminate", {"container": cid})
    assert wait_until(lambda: not {"c0vx42", "c0vxb42"} & links(cnode), 10)


def test_bad_segment_ids_refused(cnode: ContainerNode) -> None:
    before = links(cnode)
    for nic in (vxlan(0, "192.168.1.1/24"), {"type": "vlan", "id": "4095"},
                {"type": "vxlan", "id": "x"}):
        c = cnode.client()
        try:
            r = c.raw("corex.create", {"root": "bb", "nics": [nic]}).get(60)
        finally:
            c.close()
        assert r.state.value != "SUCCESS" and r.code == 400, (nic, r.code, r.data)
    assert links(cnode) == before
