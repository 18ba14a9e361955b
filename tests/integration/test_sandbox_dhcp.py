"""DHCP nics of containers (``config: {dhcp: true}``, core0/sandbox/dhcp.py): a container on a
bridge served by core0's dnsmasq gets a leased address, the name server from the lease and a
renewing client; no server → 412 and nothing left; the client goes with the nic."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require, wait_until
from sandbox_fixtures import ContainerNode, busybox_rootfs, call, container_node, ok

pytestmark = pytest.mark.root

BR = "dhbr0"


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    require("busybox")
    with container_node() as n:
        root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=n.dir)) / "rootfs")
        call(n, "container.image.import", {"name": "bb", "source": str(root)})
        yield n






def inside(cnode: ContainerNode, cid: int, script: str) -> str:
    inner = ok(cnode, "corex.dispatch", {"container": cid, "command": {
        "command": "bash", "arguments": {"script": script}}})
    c = cnode.client()
    try:
        res = c.response_for(inner).get(60)
    finally:
        c.close()
    assert res.state.value == "SUCCESS", res.streams
    return str(res.streams[0])


def dhcp_jobs(cnode: ContainerNode) -> list[str]:
    return [j["cmd"]["id"] for j in ok(cnode, "job.list", {})
            if str(j["cmd"]["id"]).startswith("dhcp:")]


def test_container_leases_its_address(cnode: ContainerNode) -> None:
    ok(cnode, "bridge.create", {"name": BR, "network": {
        "mode": "dnsmasq", "nat": False, "cidr": "10.233.0.1/24", "start": "10.233.0.100",
        "end": "10.233.0.150"}})
    try:
        cid = ok(cnode, "corex.create", {"root": "bb", "nics": [
            {"type": "bridge", "id": BR, "config": {"dhcp": True}}]})
        try:
            addrs = inside(cnode, cid, "ip -o -4 addr show eth0")
            assert "10.233.0.1" in addrs and "/24" in addrs, addrs  # from the range
            leased = addrs.split("inet ")[1].split("/")[0]
            assert 100 <= int(leased.rsplit(".", 1)[1]) <= 150, leased
            assert "nameserver 10.233.0.1" in inside(cnode, cid, "cat /etc/resolv.conf")
            assert "default via 10.233.0.1" in inside(cnode, cid, "ip route")
            got = ok(cnode, "corex.get", {"query": cid})
            nic = got["container"]["arguments"]["nics"][0] if "container" in got else None
            assert nic is None or nic.get("config", {}).get("dhcp")
            assert len(dhcp_jobs(cnode)) == 1  # the renewing client, supervised
        finally:
            ok(cnode, "corex.terminate", {"container": cid})
        assert wait_until(lambda: dhcp_jobs(cnode) == [], 15)
    finally:
        ok(cnode, "bridge.delete", {"name": BR})


def test_no_dhcp_server_is_412_and_leaves_nothing(cnode: ContainerNode) -> None:
    cnode.ns.run("ip", "link", "add", "nodhcp0", "type", "bridge")
    cnode.ns.run("ip", "link", "set", "nodhcp0", "up")
    try:
        before = cnode.ns.run("ip", "-o", "link").stdout.count("\n")
        r = call(cnode, "corex.create", {"root": "bb", "nics": [
            {"type": "bridge", "id": "nodhcp0", "config": {"dhcp": True}}]})
        assert r.state.value != "SUCCESS" and r.code == 412, (r.code, r.data)
        assert "no DHCP lease" in r.data
        assert wait_until(lambda: cnode.ns.run("ip", "-o", "link").stdout.count("\n")
                          == before, 10)
        assert dhcp_jobs(cnode) == []
        bad = call(cnode, "corex.create", {"root": "bb", "nics": [
            {"type": "bridge", "id": "nodhcp0",
             "config": {"dhcp": True, "cidr": "10.0.0.2/24"}}]})
        assert bad.code == 400, bad.data
    finally:
        cnode.ns.run("ip", "link", "del", "nodhcp0")
