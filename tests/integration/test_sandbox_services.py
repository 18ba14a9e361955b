"""Boot services as containers: ``[startup.<id>] container = {root, command, …}`` runs as
``container.run`` (the runtime's foreground run of a fresh clone), supervised like any
service: ready by its output, restarted when its process dies, restarted by ``core.reload``
when its spec changes, adopted across a dispatcher kill -9, and torn down (netns, clone,
runtime state) when it stops. And 0-core's form, ``name = "corex.create-sync"``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from conftest import wait_until
from sandbox_fixtures import ContainerNode, busybox_rootfs, container_node, node_tag

SERVICE = """
[startup.web]
protected = true
running_match = "^ready"

[startup.web.container]
root = "{root}"
command = ["sh", "-c", "echo ready; exec sleep 100000"]
hostname = "{hostname}"
tags = ["svc"]
"""


def ok(node: ContainerNode, command: str, args: dict[str, Any]) -> Any:
    c = node.client()
    try:
        r = c.raw(command, args).get(120)
    finally:
        c.close()
    assert r.state.value == "SUCCESS", (command, r.data, node.log_text()[-3000:])
    return json.loads(r.data)


def service_container(node: ContainerNode, job: str = "svc:web") -> dict[str, Any] | None:
    """The running container of job ``job`` (service web's by default; one at most)."""
    running = [e["container"] for e in ok(node, "corex.list", {}).values()
               if e["container"]["service"] == job]
    assert len(running) <= 1, running
    if running and running[0]["status"] == "running":
        return running[0]
    return None


def hostname_of(node: ContainerNode, cid: int) -> str:
    c = node.client()
    try:
        return str(c.container.client(cid).system("hostname").get(60).stdout.strip())
    finally:
        c.close()


def leftovers(node: ContainerNode) -> list[str]:
    tag = node_tag(node)
    ns = [n for n in os.listdir("/run/netns") if tag in n]
    rt = subprocess.run(["runc", "--root", str(node.state_dir / "sandbox" / "runc"), "list",
                         "-q"], capture_output=True, text=True).stdout.split()
    dirs = os.listdir(node.state_dir / "sandbox" / "containers")
    return ns + rt + dirs


def test_boot_service_as_container() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="core0-svcct-"))
    root = busybox_rootfs(tmp / "rootfs")
    try:
        with container_node(SERVICE.format(root=root, hostname="svc1")) as node:
            def up(not_pid: int = 0) -> bool:
                st = ok(node, "service.get", {"id": "web"})
                ct = service_container(node)
                return st["status"] == "running" and ct is not None and ct["pid"] != not_pid

            assert wait_until(up, 60, 0.2), node.log_text()[-3000:]
            ct = service_container(node)
            assert ct is not None and ct["tags"] == ["svc"]
            assert hostname_of(node, ct["id"]) == "svc1"

            # its process dies: the service restarts it (a fresh container, the old one gone)
            os.kill(ct["pid"], signal.SIGKILL)
            assert wait_until(lambda: up(ct["pid"]), 60, 0.2), node.log_text()[-3000:]
            ct2 = service_container(node)
            assert ct2 is not None
            assert ok(node, "service.get", {"id": "web"})["starts"] >= 2

            # drift: a changed container spec restarts it on reload
            (node.dir / "core0.toml").write_text(SERVICE.format(root=root, hostname="svc2"))
            out = ok(node, "core.reload", {})
            assert "web" in json.dumps(out)
            assert wait_until(lambda: up(ct2["pid"]), 60, 0.2), node.log_text()[-3000:]
            ct3 = service_container(node)
            assert ct3 is not None and hostname_of(node, ct3["id"]) == "svc2"

            # a dispatcher kill -9: the run is adopted (same container, same pid) and its
            # teardown hook put back
            old = node.dispatcher_pid()
            os.kill(old, signal.SIGKILL)

            def back() -> bool:
                try:
                    return node.dispatcher_pid() != old and service_container(node) is not None
                except Exception:
                    return False

            assert wait_until(back, 60, 0.2), node.log_text()[-3000:]
            ct4 = service_container(node)
            assert ct4 is not None and (ct4["id"], ct4["pid"]) == (ct3["id"], ct3["pid"])

            # stopped: everything made for it goes
            ok(node, "service.stop", {"id": "web"})
            assert wait_until(lambda: leftovers(node) == [], 30, 0.2), leftovers(node)
            assert ok(node, "corex.list", {}) == {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CREATE_SYNC = """
[startup.ovs]
name = "corex.create-sync"
tags = ["ovs"]
protected = true

[startup.ovs.args]
root = "{root}"
name = "ovs"
hostname = "ovs1"
"""


def test_0core_create_sync_service() -> None:
    """0-core's way to start a container at boot (its docs' "Starting containers on boot"):
    a protected service of ``corex.create-sync`` with ``corex.create``'s arguments. The
    container runs for as long as the service's job; commands reach it by dispatch; when it
    is terminated the service makes a new one; stopped, nothing is left. Called directly, the
    job holds the container until job.kill; ``persistent`` is refused."""
    tmp = Path(tempfile.mkdtemp(prefix="core0-sync-"))
    root = busybox_rootfs(tmp / "rootfs")
    try:
        with container_node(CREATE_SYNC.format(root=root)) as node:
            def up(not_pid: int = 0) -> bool:
                st = ok(node, "service.get", {"id": "ovs"})
                ct = service_container(node, "svc:ovs")
                return st["status"] == "running" and ct is not None and ct["pid"] != not_pid

            assert wait_until(up, 60, 0.2), node.log_text()[-3000:]
            ct = service_container(node, "svc:ovs")
            assert ct is not None and ct["tags"] == ["ovs"] and ct["name"] == "ovs"
            assert hostname_of(node, ct["id"]) == "ovs1"

            ok(node, "corex.terminate", {"container": ct["id"]})
            assert wait_until(lambda: up(ct["pid"]), 60, 0.2), node.log_text()[-3000:]
            assert ok(node, "service.get", {"id": "ovs"})["starts"] >= 2

            ok(node, "service.stop", {"id": "ovs"})
            assert wait_until(lambda: leftovers(node) == [], 30, 0.2), leftovers(node)

            c = node.client()
            try:
                resp = c.raw("corex.create-sync", {"root": str(root), "nics": []})
                assert wait_until(lambda: service_container(node, resp.id) is not None, 60,
                                  0.2), node.log_text()[-3000:]
                held = service_container(node, resp.id)
                assert held is not None and hostname_of(node, held["id"])
                ok(node, "job.kill", {"id": resp.id})
                res = resp.get(60)
                assert res.state.value == "KILLED", res
                assert wait_until(lambda: leftovers(node) == [], 30, 0.2), leftovers(node)
                bad = c.raw("corex.create-sync", {"root": str(root), "persistent": True,
                                                  "name": "p"}).get(30)
                assert (bad.state.value, bad.code) == ("ERROR", 400), bad
            finally:
                c.close()
            assert ok(node, "corex.list", {}) == {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
