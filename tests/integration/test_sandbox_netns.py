"""A container created without nics runs in the anonymous netns its runtime makes (only ``lo``,
up; no /run/netns entry); a nic added later names that netns (``/run/netns/<name>``), and
every later path works on it: nic-remove, a second nic, a dispatcher kill -9, a keeper's
restart of the init (which joins the named netns again), terminate leaving nothing. ``ip.*``
dispatched into a container acts in its netns and in no other."""

from __future__ import annotations

import glob
import json
import os
import signal
from typing import Any

import pytest
from conftest import wait_until
from sandbox_fixtures import (
    ContainerNode,
    call,
    dispatcher_or_zero,
    inside,
    node_tag,
    ok,
    pingable,
    warm_busybox,
)


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    return warm_busybox(cnode)


def snapshot(cnode: ContainerNode) -> dict[str, Any]:
    tag = node_tag(cnode)
    links = cnode.ns.run("ip", "-o", "link").stdout.splitlines()
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split()[4] for ln in f]
    return {
        "mounts": sorted(m for m in mounts if m.startswith(str(cnode.dir)) or tag in m),
        "cgroups": sorted(glob.glob(f"/sys/fs/cgroup/*/core0-{tag}-*")),
        "links": sorted(ln.split(":")[1].split("@")[0].strip() for ln in links),
        "netns": sorted(n for n in os.listdir("/run/netns") if tag in n),
        "files": sorted(os.listdir(cnode.state_dir / "sandbox" / "containers")),
    }


def _links(cnode: ContainerNode, cid: int) -> list[str]:
    res = inside(cnode, cid, "ip -o link | cut -d: -f2,3")
    assert res.state.value == "SUCCESS", res.data
    return [ln.strip() for ln in res.streams[0].splitlines()]


def _pid(cnode: ContainerNode, cid: int) -> int:
    return int(ok(cnode, "corex.get", {"query": cid})["container"]["pid"])


def test_no_nic_then_hot_nic(cnode: ContainerNode, image: str) -> None:
    before = snapshot(cnode)
    tag = node_tag(cnode)
    cid = ok(cnode, "corex.create", {"root": image, "nics": [], "restart": "always"})
    name = f"core0-{tag}-{cid}"
    try:
        # the runtime's own netns: only lo, up; nothing named, nothing mounted
        links = _links(cnode, cid)
        assert len(links) == 1 and links[0].startswith("lo:") and ",UP," in links[0], links
        assert name not in os.listdir("/run/netns")
        nics = ok(cnode, "corex.dispatch", {"container": cid, "command": {
            "command": "info.nic", "arguments": {}}})
        c = cnode.client()
        try:
            res = c.response_for(nics).get(60)
        finally:
            c.close()
        assert res.state.value == "SUCCESS", res.data
        assert [n["name"] for n in json.loads(res.data)] == ["lo"]

        # a nic names the init's netns and is configured in it
        nic = ok(cnode, "corex.nic-add", {"container": cid, "nic": {"type": "default"}})
        assert nic["index"] == 0
        assert name in os.listdir("/run/netns")
        init_ns = os.stat(f"/proc/{_pid(cnode, cid)}/ns/net")
        named = os.stat(f"/run/netns/{name}")
        assert (init_ns.st_dev, init_ns.st_ino) == (named.st_dev, named.st_ino)
        addr = f"172.18.{(cid + 1) >> 8}.{(cid + 1) & 255}"
        res = inside(cnode, cid, "ip -o -4 addr show eth0; ip route")
        assert res.state.value == "SUCCESS", (res.data, res.streams)
        assert f"{addr}/16" in res.streams[0] and "default via 172.18.0.1" in res.streams[0]
        cnode.ns.run("ping", "-c", "1", "-W", "2", addr)  # reachable from the node

        # a dispatcher kill -9: the next one removes and adds nics in the same netns
        old = cnode.dispatcher_pid()
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: pingable(cnode) and dispatcher_or_zero(cnode) not in (0, old),
                          60, 0.2), cnode.log_text()[-3000:]
        ok(cnode, "corex.nic-remove", {"container": cid, "index": 0})
        assert [ln for ln in _links(cnode, cid) if ln.startswith("eth0")] == []
        ok(cnode, "corex.nic-add", {"container": cid, "nic": {"type": "default"}})
        assert any(ln.startswith("eth1") for ln in _links(cnode, cid))

        # the keeper restarts a killed init in the same (named) netns: its nic is still there
        first = _pid(cnode, cid)
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: _pid(cnode, cid) not in (0, first), 30, 0.2), \
            cnode.log_text()[-2000:]
        again = os.stat(f"/proc/{_pid(cnode, cid)}/ns/net")
        assert (again.st_dev, again.st_ino) == (named.st_dev, named.st_ino)
        assert any(ln.startswith("eth1") for ln in _links(cnode, cid))
        cnode.ns.run("ping", "-c", "1", "-W", "2", addr)
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)


def test_container_run_without_nic(cnode: ContainerNode, image: str) -> None:
    """``container.run`` with no nic: only lo inside, nothing named or left behind."""
    before = snapshot(cnode)
    c = cnode.client()
    try:
        res = c.raw("container.run", {"root": image, "nics": [],
                                      "command": ["/bin/sh", "-c", "ip -o link"]}).get(60)
    finally:
        c.close()
    assert res.state.value == "SUCCESS", (res.data, res.streams)
    lines = res.streams[0].splitlines()
    assert len(lines) == 1 and "lo:" in lines[0], lines
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)


def _ip(cnode: ContainerNode, cid: int, command: str, args: dict[str, Any]) -> Any:
    """The result of ``command`` dispatched into container ``cid`` (the outer call may
    refuse it: then that result)."""
    outer = call(cnode, "corex.dispatch", {"container": cid, "command": {
        "command": command, "arguments": args}})
    if outer.state.value != "SUCCESS":
        return outer
    c = cnode.client()
    try:
        return c.response_for(json.loads(outer.data)).get(60)
    finally:
        c.close()


def test_ip_inside_acts_in_the_containers_netns_only(cnode: ContainerNode, image: str) -> None:
    """0-core's per-container ``ip`` (``corex.dispatch`` of ``ip.*``): in a container made
    without nics too (its anonymous netns gets its name); what is made is seen from inside
    and not on the node; a namespace named in the arguments is refused (400, nested
    ``links[i].peer_netns`` too), ``ip.netns.*`` is not served inside (412); nothing is left
    after terminate."""
    before = snapshot(cnode)
    tag = node_tag(cnode)
    other = ok(cnode, "corex.create", {"root": image})
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    node_links = snapshot(cnode)["links"]
    try:
        res = _ip(cnode, cid, "ip.link.list", {})
        assert [x["name"] for x in json.loads(res.data)] == ["lo"], res.data
        res = _ip(cnode, cid, "ip.link.add", {"name": "ib0", "kind": "bridge", "up": True})
        assert res.state.value == "SUCCESS", res.data
        assert f"core0-{tag}-{cid}" in os.listdir("/run/netns")  # named now
        res = _ip(cnode, cid, "ip.addr.add", {"name": "ib0", "ip": "10.95.0.1/24"})
        assert res.state.value == "SUCCESS", res.data
        assert any(ln.startswith("ib0") for ln in _links(cnode, cid))
        assert "10.95.0.1/24" in inside(cnode, cid, "ip -o -4 addr").streams[0]
        assert snapshot(cnode)["links"] == node_links  # nothing on the node
        # another container's namespace, or any named one, is not reachable from inside
        ons = f"core0-{tag}-{other}"
        for cmd, a, where in (
                ("ip.link.list", {"netns": ons}, "netns"),
                ("ip.link.add", {"name": "ix0", "kind": "veth", "peer": "ix1",
                                 "peer_netns": ons}, "peer_netns"),
                ("ip.link.set", {"name": "ib0", "move_to": ons}, "move_to"),
                ("ip.link.add_many", {"links": [{"name": "ix0", "kind": "veth",
                                                 "peer": "ix1", "peer_netns": ons}]},
                 "links[0].peer_netns")):
            res = _ip(cnode, cid, cmd, a)
            assert (res.state.value, res.code) == ("ERROR", 400), (cmd, res.data)
            assert f"command.arguments.{where}" in res.data, res.data
        res = _ip(cnode, cid, "ip.netns.list", {})
        assert res.code == 412 and "cannot run inside a container" in res.data, res.data
        res = _ip(cnode, other, "ip.link.list", {})
        assert "ib0" not in [x["name"] for x in json.loads(res.data)]
        res = _ip(cnode, cid, "ip.link.del", {"name": "ib0"})
        assert res.state.value == "SUCCESS", res.data
        assert not any(ln.startswith("ib0") for ln in _links(cnode, cid))
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
        ok(cnode, "corex.terminate", {"container": other})
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)
