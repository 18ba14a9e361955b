"""Container life: dispatcher kill -9 with 5 containers running (they keep running, same ids and
pids, dispatch still works), port forwards and nic hot-plug, and nothing left behind after
terminate (mounts, cgroups, links, netns, nft rules, files)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from sandbox_fixtures import (
    ContainerNode,
    busybox_rootfs,
    call,
    container_node,
    dispatcher_or_zero,
    inside,
    node_tag,
    ok,
    pingable,
    warm_busybox,
)


def snapshot(cnode: ContainerNode) -> dict[str, Any]:
    """What containers could leak, counted on the node's side."""
    tag = node_tag(cnode)
    ns = ["ip", "netns", "exec", cnode.ns.name]
    links = subprocess.run([*ns, "ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    rules = subprocess.run([*ns, "nft", "-a", "list", "ruleset"], capture_output=True,
                           text=True, check=True).stdout
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split()[4] for ln in f]
    base = cnode.state_dir / "sandbox"
    return {
        "mounts": sorted(m for m in mounts if m.startswith(str(cnode.dir)) or tag in m),
        "cgroups": sorted(glob.glob(f"/sys/fs/cgroup/*/core0-{tag}-*")),
        "links": sorted(ln.split(":")[1].split("@")[0].strip() for ln in links),
        "netns": sorted(n for n in os.listdir("/run/netns") if tag in n),
        "nft_rules": sum(1 for ln in rules.splitlines() if "# handle" in ln
                         and ("dnat" in ln or "owner=" in ln)),
        "files": sorted(os.listdir(base / "containers")),
        "runtime": subprocess.run(["runc", "--root", str(base / "runc"), "list", "-q"],
                                  capture_output=True, text=True).stdout.split(),
    }


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    return warm_busybox(cnode)


def test_kill9_dispatcher_adopts_and_terminate_leaves_nothing(cnode: ContainerNode,
                                                              image: str) -> None:
    before = snapshot(cnode)
    ids = [ok(cnode, "corex.create", {"root": image, "name": f"c{i}", "tags": ["life"],
                                      "port": {str(18000 + i): 80}})
           for i in range(5)]
    assert sorted(ids) == sorted(set(ids))
    listed = ok(cnode, "corex.list", {})
    pids = {cid: listed[str(cid)]["container"]["pid"] for cid in ids}
    assert all(p > 0 for p in pids.values())
    during = snapshot(cnode)
    assert len(during["cgroups"]) > len(before["cgroups"])
    assert during["nft_rules"] >= before["nft_rules"] + 5
    cnode.restart_dispatcher()
    listed = ok(cnode, "corex.list", {})
    assert {int(k) for k in listed} == set(ids)
    for cid in ids:
        assert listed[str(cid)]["container"]["pid"] == pids[cid]
        assert listed[str(cid)]["container"]["status"] == "running"
        os.kill(pids[cid], 0)  # alive
    found = ok(cnode, "corex.find", {"tags": ["life"]})
    assert {int(k) for k in found} == set(ids)
    assert ok(cnode, "corex.get", {"query": "c3"})["container"]["id"] == ids[3]
    res = inside(cnode, ids[0], "echo still-here; grep -E 'CapEff|NoNewPrivs|Seccomp:' "
                 "/proc/self/status")
    assert res.state.value == "SUCCESS" and "still-here" in res.streams[0]
    assert res.container == ids[0]
    # the sandbox of a command dispatched by the new dispatcher is the same (T10 after T3)
    assert "00000000800405fb" in res.streams[0] and "NoNewPrivs:\t1" in res.streams[0]
    assert "Seccomp:\t2" in res.streams[0]
    for cid in ids:
        ok(cnode, "corex.terminate", {"container": cid})
    for cid in ids:
        assert wait_until(lambda c=cid: not os.path.exists(f"/proc/{pids[c]}"), 10)
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)


def test_forward_and_nic_hotplug(cnode: ContainerNode, image: str) -> None:
    before = snapshot(cnode)
    cid = ok(cnode, "corex.create", {"root": image})
    try:
        ok(cnode, "corex.portforward-add", {"container": cid, "host_port": 18080,
                                            "container_port": 80})
        fwd = ok(cnode, "nft.forward_list", {"owner": f"container:{cid}"})
        assert [f["port"] for f in fwd] == [80] and fwd[0]["ip"] == f"172.18.0.{cid + 1}"
        ok(cnode, "corex.portforward-remove", {"container": cid, "host_port": 18080,
                                               "container_port": 80})
        assert ok(cnode, "nft.forward_list", {"owner": f"container:{cid}"}) == []
        ok(cnode, "bridge.create", {"name": "hp0", "network": {"cidr": "10.99.0.1/24"}})
        try:
            nic = ok(cnode, "corex.nic-add", {"container": cid, "nic": {
                "type": "bridge", "id": "hp0", "config": {"cidr": "10.99.0.5/24"}}})
            assert nic["index"] == 1
            res = inside(cnode, cid, "ip -o -4 addr show eth1")
            assert "10.99.0.5/24" in res.streams[0]
            # the node reaches it over the bridge (no NET_RAW inside for ping the other way)
            assert cnode.ns.run("ping", "-c1", "-W2", "10.99.0.5", check=False).returncode == 0
            ok(cnode, "corex.nic-remove", {"container": cid, "index": 1})
            got = ok(cnode, "corex.get", {"query": cid})["container"]["nics"]
            assert got[1]["state"] == "destroyed"
            res = inside(cnode, cid, "ip link show eth1 2>&1 || echo gone")
            assert "gone" in res.streams[0]
        finally:
            ok(cnode, "bridge.delete", {"name": "hp0"})
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    time.sleep(0.1)
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)


def test_failed_create_leaves_nothing(cnode: ContainerNode, image: str) -> None:
    before = snapshot(cnode)
    c = cnode.client()
    try:
        # fails after the root clone, the netns and the first nic were made
        r = c.raw("corex.create", {"root": image, "nics": [
            {"type": "default"}, {"type": "bridge", "id": "nope0"}]}).get(60)
        assert r.state.value == "ERROR" and r.code == 404, r.data
        assert c.raw("corex.create", {"root": "no-such-image"}).get(60).code == 404
        assert c.raw("corex.terminate", {"container": 999}).get(60).code == 404
        assert c.raw("corex.get", {"query": "nobody"}).get(60).code == 404
        r = c.raw("corex.dispatch", {"container": 999, "command": {
            "command": "bash", "arguments": {"script": "true"}}}).get(60)
        assert r.code == 404
        cid = ok(cnode, "corex.create", {"root": image, "nics": []})
        r = c.raw("corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {"script": "true"}, "recurring_period": 5}}).get(60)
        assert r.code == 400
        r = c.raw("corex.dispatch", {"container": cid, "command": {
            "command": "info.dmi", "arguments": {}}}).get(60)
        assert r.code == 412  # not answered for containers
        ok(cnode, "corex.terminate", {"container": cid})
    finally:
        c.close()
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)


def test_macvlan_nic(cnode: ContainerNode, image: str) -> None:
    before = snapshot(cnode)
    # a veth end as the parent link (this kernel may have no dummy driver)
    cnode.ns.run("ip", "link", "add", "mvpar0", "type", "veth", "peer", "name", "mvpar1")
    cnode.ns.run("ip", "link", "set", "mvpar0", "up")
    try:
        cid = ok(cnode, "corex.create", {"root": image, "nics": [
            {"type": "macvlan", "id": "mvpar0", "config": {"cidr": "10.98.0.5/24"}}]})
        try:
            res = inside(cnode, cid, "ip -o -4 addr show eth0")
            assert "10.98.0.5/24" in res.streams[0]
            nic = ok(cnode, "corex.nic-add", {"container": cid, "nic": {
                "type": "macvlan", "id": "mvpar0", "config": {"cidr": "10.98.0.6/24"}}})
            assert nic["index"] == 1
            assert "10.98.0.6/24" in inside(cnode, cid, "ip -o -4 addr").streams[0]
            ok(cnode, "corex.nic-remove", {"container": cid, "index": 1})
            assert "10.98.0.6" not in inside(cnode, cid, "ip -o -4 addr").streams[0]
        finally:
            ok(cnode, "corex.terminate", {"container": cid})
    finally:
        cnode.ns.run("ip", "link", "del", "mvpar0")
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)


def test_host_network(cnode: ContainerNode, image: str) -> None:
    before = snapshot(cnode)
    cnode.ns.run("ip", "link", "add", "hn0", "type", "veth", "peer", "name", "hn1")
    try:
        cid = ok(cnode, "corex.create", {"root": image, "host_network": True,
                                         "port": None, "nics": []})
        try:
            links = inside(cnode, cid, "ls /sys/class/net").streams[0].split()
            assert {"hn0", "hn1", "lo"} <= set(links)  # the node's own links
        finally:
            ok(cnode, "corex.terminate", {"container": cid})
    finally:
        cnode.ns.run("ip", "link", "del", "hn0")
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)


def test_restart_policy(cnode: ContainerNode, image: str) -> None:
    before = snapshot(cnode)
    cid = ok(cnode, "corex.create", {"root": image, "nics": [], "restart": "always"})
    try:
        first = ok(cnode, "corex.get", {"query": cid})["container"]["pid"]
        assert first > 0
        os.kill(first, signal.SIGKILL)

        def restarted() -> bool:
            c = ok(cnode, "corex.get", {"query": cid})["container"]
            return c["status"] == "running" and c["pid"] not in (0, first)

        assert wait_until(restarted, 30, 0.2), cnode.log_text()[-2000:]
        res = inside(cnode, cid, "echo again")
        assert res.streams[0] == "again\n"
        # a dispatcher restart adopts the keeper: the container is still kept
        old = cnode.dispatcher_pid()
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: pingable(cnode) and dispatcher_or_zero(cnode) not in (0, old),
                          30, 0.2)
        second = ok(cnode, "corex.get", {"query": cid})["container"]["pid"]
        os.kill(second, signal.SIGKILL)
        assert wait_until(lambda: ok(cnode, "corex.get", {"query": cid})["container"]["pid"]
                          not in (0, second), 30, 0.2)
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    assert wait_until(lambda: snapshot(cnode) == before, 10), (snapshot(cnode), before)
    assert not any("keeper" in j.get("id", "") for j in ok(cnode, "job.list", {}))


def test_adopted_inner_job_result_names_its_container(cnode: ContainerNode, image: str) -> None:
    """An inner job running across a dispatcher kill -9: the new dispatcher adopts it and
    its result still carries ``container`` (persisted with the job's step log)."""
    cid = ok(cnode, "corex.create", {"root": image})
    try:
        inner = ok(cnode, "corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {
                "script": "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo went"}}})
        # the inner job's first step is on disk before the inner id reaches the caller
        assert (cnode.state_dir / "jobs" / f"j-{inner}.log").exists()
        cnode.restart_dispatcher()
        # job.list inside the container sees the adopted inner job
        listed = ok(cnode, "corex.dispatch", {"container": cid, "command": {
            "command": "job.list", "arguments": {}}})
        c = cnode.client()
        try:
            ids = [j["id"] for j in json.loads(c.response_for(listed).get(60).data)]
        finally:
            c.close()
        assert inner in ids, cnode.log_text()[-5000:]
        went = inside(cnode, cid, "touch /tmp/go")
        assert went.state.value == "SUCCESS", (went, cnode.log_text()[-5000:])
        c = cnode.client()
        try:
            res = c.response_for(inner).get(60)
        finally:
            c.close()
        assert res.state.value == "SUCCESS" and "went" in res.streams[0]
        assert res.container == cid
    finally:
        ok(cnode, "corex.terminate", {"container": cid})


def test_inner_builtin_job_cut_short_runs_inside_again(cnode: ContainerNode,
                                                       image: str) -> None:
    """A builtin inner job (``core.subscribe`` inside: it follows an inner job's output until
    that ends) running while the dispatcher is killed -9, then while it is stopped: each next
    dispatcher runs it again, inside its container, and it answers once, naming its
    container. Before, a builtin inner job was in no ``processing`` list and not on disk: cut
    short, it kept its pickup flag and never had a result."""
    import redis

    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    try:
        inner = ok(cnode, "corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {
                "script": "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo went"}}})
        sub = ok(cnode, "corex.dispatch", {"container": cid, "command": {
            "command": "core.subscribe", "arguments": {"id": inner}}})
        r = redis.Redis(unix_socket_path=str(cnode.socket))
        processing = b"".join(r.lrange("core:default:processing", 0, -1))
        assert f'"id": "{sub}"'.encode() in processing or f'"id":"{sub}"'.encode() in processing
        for sig in (signal.SIGKILL, signal.SIGTERM):
            cnode.restart_dispatcher(sig)
            assert r.exists(f"result:{sub}:flag") and not r.exists(f"result:{sub}")
        assert inside(cnode, cid, "touch /tmp/go").state.value == "SUCCESS"
        c = cnode.client()
        try:
            res = c.response_for(sub).get(60)
            assert c.response_for(inner).get(60).state.value == "SUCCESS"
        finally:
            c.close()
        assert res.state.value == "SUCCESS", (res, cnode.log_text()[-3000:])
        assert res.container == cid and res.command == "core.subscribe"
        data = json.loads(res.data)
        assert (data["id"], data["relayed"]) == (inner, 1), data  # "went"
        assert r.llen(f"result:{sub}") == 1
        assert wait_until(lambda: sub.encode() not in b"".join(
            r.lrange("core:default:processing", 0, -1)), 10)
        # the stored form pushed by a client is no command at all
        r.rpush("core:default", json.dumps(
            {"id": "forged-inside", "command": f"container.inside:{cid}:info.os",
             "arguments": {}}))
        assert wait_until(lambda: r.exists("result:forged-inside"), 30)
        forged = json.loads(r.lindex("result:forged-inside", 0))
        assert forged["state"] == "UNKNOWN_CMD", forged
        r.close()
    finally:
        ok(cnode, "corex.terminate", {"container": cid})


def test_inner_job_never_spawned_runs_inside_after_a_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher dies after writing an inner job's ``spawning`` step and before the
    spawn (a fault hook, once): the next dispatcher starts the job again — inside its
    container, as the runtime's exec; before, adoption called the registry's handler, which
    ran the container's command on the host. The ``corex.dispatch`` cut short with it runs
    again and answers the same inner id (made from its own): the command runs once, not
    once per dispatch run."""
    monkeypatch.setenv("CORE0_TEST_CRASH_BEFORE_SPAWN", "runc,crun")
    mark = f"core0-where-{os.getpid()}-{time.monotonic_ns()}"
    with container_node() as node:
        root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=node.dir)) / "rootfs")
        ok(node, "container.image.import", {"name": "bb", "source": str(root)})
        cid = ok(node, "corex.create", {"root": "bb", "nics": []})
        old = node.dispatcher_pid()
        inner = ok(node, "corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {"script": f"echo ran >> /tmp/{mark}; echo done"}}})
        c = node.client()
        try:
            res = c.response_for(inner).get(90)
        finally:
            c.close()
        assert (node.state_dir / "jobs" / "test-crashed-before-spawn").exists()
        assert node.dispatcher_pid() != old, "the dispatcher should have died once"
        assert res.state.value == "SUCCESS" and res.stdout == "done\n", (res, node.log_text())
        assert res.container == cid
        assert not Path(f"/tmp/{mark}").exists(), "the container's command ran on the host"
        assert inside(node, cid, f"cat /tmp/{mark}").stdout == "ran\n"
        ok(node, "corex.terminate", {"container": cid})


def test_a_create_cut_short_by_a_dead_dispatcher_is_undone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher dies (a fault hook, once) in a ``corex.create`` whose root, netns,
    nic, port guard and forward are made: the command is answered 503 (interrupted) and the
    next dispatcher terminates the half-made container — nothing of it is left. Before, it
    stayed (listed, with its netns, veth, guard and forward) until someone terminated it."""
    monkeypatch.setenv("CORE0_TEST_CRASH_IN_CREATE", "1")
    with container_node() as node:
        root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=node.dir)) / "rootfs")
        ok(node, "container.image.import", {"name": "bb", "source": str(root)})
        tag = node_tag(node)
        old = dispatcher_or_zero(node)
        res = call(node, "corex.create", {"root": "bb", "nics": [{"type": "default"}],
                                          "port": {"18080": 80}}, 120)
        assert (res.state.value, res.code) == ("ERROR", 503), res.data
        assert (node.state_dir / "test-crashed-in-create").exists()
        assert dispatcher_or_zero(node) not in (0, old)

        def gone() -> bool:
            snap = snapshot(node)
            return (snap["netns"] == [] and snap["nft_rules"] == 0 and snap["files"] == []
                    and snap["runtime"] == [] and snap["cgroups"] == []
                    and snap["mounts"] == []
                    and not any(ln.startswith("vc" + tag[:4]) for ln in snap["links"]))

        assert wait_until(gone, 60), snapshot(node)
        assert ok(node, "corex.list", {}) == {}
        guards = node.state_dir / "net" / "guards.json"
        assert json.loads(guards.read_text() if guards.exists() else "{}") == {}
        cid = ok(node, "corex.create", {"root": "bb", "nics": [{"type": "default"}]})
        ok(node, "corex.terminate", {"container": cid})


def test_the_nft_table_agrees_with_the_state_after_a_restart() -> None:
    """A rule in core0's table that its saved state lacks (what a dispatcher killed between
    an ``nft -f`` and the record of it leaves: a forward no command could remove) is gone
    after the next dispatcher's start, and the forwards the state has are still in force."""
    with container_node() as node:
        ok(node, "nft.forward_add", {"owner": "user:kept", "ip": "172.18.9.9",
                                     "forwards": {"18998": 80}})

        def rules() -> str:
            return subprocess.run(["ip", "netns", "exec", node.ns.name, "nft", "list", "table",
                                   "inet", "core0"], capture_output=True, text=True,
                                  check=True).stdout

        subprocess.run(["ip", "netns", "exec", node.ns.name, "nft", "add", "rule", "inet",
                        "core0", "prerouting", "tcp", "dport", "18999", "dnat", "ip", "to",
                        "172.18.9.10:80", "comment", '"owner=container:9"'], check=True)
        assert "18999" in rules() and "18998" in rules()
        old = dispatcher_or_zero(node)
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: dispatcher_or_zero(node) not in (0, old), 60)
        assert wait_until(lambda: "18999" not in rules(), 30), rules()
        assert "18998" in rules()
        assert [f["owner"] for f in ok(node, "nft.forward_list", {})] == ["user:kept"]
