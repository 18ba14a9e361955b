"""0-core's ``/.startup.toml`` in a container's root: its ``[startup.<name>]`` services run
as inner jobs of the container when it starts (corex.create, corex.create-sync, a restart by
its keeper), in ``after`` order, ``protected`` ones restarted; adopted across a dispatcher
kill -9 (never started twice); stopped with the container; run with the creating queue's
role (a command above it is that service's error, the others run); a malformed file or a
symlink is the container's ``startup.error``, never followed. Real node, runc, busybox roots;
0-core's own client for the 0-core-shaped flow."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import unavailable, wait_until
from sandbox_fixtures import (
    ContainerNode,
    busybox_rootfs,
    call,
    container_node,
    in_netns,
    ok,
)

#: two services in order, a protected one, one not served inside, a builtin
SERVICES = """
[startup.first]
name = "core.system"
running_delay = -1
[startup.first.args]
name = "sh"
args = ["-c", "sleep 0.3; echo first >> /data/order"]

[startup.second]
name = "core.system"
after = ["first"]
[startup.second.args]
name = "sh"
args = ["-c", "echo second >> /data/order; exec sleep 100000"]

[startup.again]
name = "bash"
protected = true
[startup.again.args]
script = "echo run >> /data/again; exit 3"

[startup.notinside]
name = "disk.list"

[startup.mem]
name = "info.mem"
running_delay = -1
"""

#: a service that ends when the test says so, failing
ENDS = """
[startup.ends]
name = "core.system"
[startup.ends.args]
name = "sh"
args = ["-c", "echo up > /data/up; while [ ! -e /data/end ]; do sleep 0.02; done; exit 3"]
"""

#: 0-core's docker-convert shape
ENTRY = """
[startup.entry]
name = "core.system"
[startup.entry.args]
name = "sh"
args = ["-c", "echo hello > /data/hello; echo boot >> /data/boots; exec sleep 100000"]
env = {GREETING = "hi"}
dir = "/"
"""

ROLES = """
[startup.app]
name = "core.system"
[startup.app.args]
name = "sh"
args = ["-c", "touch /data/app-ran"]

[startup.mem]
name = "info.mem"
running_delay = -1

[startup.afterapp]
name = "info.cpu"
after = ["app"]
"""


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    cfg = '[main]\ninclude = []\n[bus]\nqueues = {default = "admin", ops = "operator"}\n'
    with container_node(cfg) as n:
        yield n


def _image(node: ContainerNode, name: str, startup: str | None = None,
           link_to: Path | None = None) -> str:
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="st-", dir=node.dir)) / "rootfs")
    if startup is not None:
        (root / ".startup.toml").write_text(startup)
    if link_to is not None:
        (root / ".startup.toml").symlink_to(link_to)
    ok(node, "container.image.import", {"name": name, "source": str(root)})
    return name


@pytest.fixture(scope="module")
def images(cnode: ContainerNode) -> dict[str, str]:
    host = cnode.dir / "host-startup.toml"  # a valid file of the host, named by a symlink
    host.write_text(ENTRY.replace("/data/hello", "/data/pwned"))
    return {"services": _image(cnode, "st-services", SERVICES),
            "entry": _image(cnode, "st-entry", ENTRY),
            "ends": _image(cnode, "st-ends", ENDS),
            "roles": _image(cnode, "st-roles", ROLES),
            "bad": _image(cnode, "st-bad", "[startup.x\nname = 'core.system'\n"),
            "link": _image(cnode, "st-link", link_to=host)}


def rootfile(node: ContainerNode, cid: int, path: str) -> list[str]:
    """Lines of a file in the container's root clone, read on the node's side."""
    p = node.state_dir / "sandbox" / "containers" / str(cid) / "rootfs" / path.lstrip("/")
    try:
        return p.read_text().splitlines()
    except OSError:
        return []


def startup_of(node: ContainerNode, cid: int) -> dict[str, Any]:
    entry = ok(node, "corex.get", {"query": cid})["container"]["startup"]
    assert entry is not None
    return dict(entry)


def services(node: ContainerNode, cid: int) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in startup_of(node, cid)["services"]}


def job_ids(node: ContainerNode) -> list[str]:
    return [j["id"] for j in ok(node, "job.list", {})]


def test_order_protected_refused_kill9_and_terminate(cnode: ContainerNode,
                                                     images: dict[str, str]) -> None:
    cid = ok(cnode, "corex.create", {"root": images["services"], "nics": []})
    prefix = f"startup:{cid}:"
    try:
        assert wait_until(lambda: rootfile(cnode, cid, "/data/order") == ["first", "second"],
                          10), cnode.log_text()[-3000:]
        # protected: restarted after it exits (backoff 1 s, then 2 s)
        assert wait_until(lambda: len(rootfile(cnode, cid, "/data/again")) >= 2, 10)
        assert wait_until(lambda: services(cnode, cid)["second"]["pid"] > 0, 5)
        st = services(cnode, cid)
        assert st["first"]["status"] == "done" and st["mem"]["status"] == "done"
        assert st["second"]["status"] in ("starting", "running") and st["second"]["pid"] > 0
        assert st["notinside"]["status"] == "error"
        assert "cannot run inside a container" in st["notinside"]["message"]
        assert st["second"]["job"] == prefix + "second"
        ids = job_ids(cnode)
        assert prefix + "second" in ids and prefix + "again" in ids
        assert prefix + "notinside" not in ids
        pid = st["second"]["pid"]
        runs = len(rootfile(cnode, cid, "/data/again"))

        cnode.restart_dispatcher()
        # adopted, re-attached: the same process, nothing started twice, still supervised
        assert wait_until(lambda: services(cnode, cid)["second"]["status"] == "running", 10)
        assert services(cnode, cid)["second"]["pid"] == pid
        os.kill(pid, 0)
        assert wait_until(lambda: len(rootfile(cnode, cid, "/data/again")) > runs, 10)
        assert rootfile(cnode, cid, "/data/order") == ["first", "second"]
        assert services(cnode, cid)["first"]["starts"] == 1
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    # its startup jobs (and the job that ran them) went with it
    left = [j for j in job_ids(cnode) if j.startswith(prefix)
            or (j.startswith("core0.startup.") and j.endswith(f".{cid}"))]
    assert left == [], left
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10)


#: the client unchanged but for ledis's LKEYEXISTS/LTTL (test_container_client.py)
ZEROOS = """
import json, sys, time
from zeroos.core0.client import Client, client as zc
def _flag(self): return "{}:flag".format(self._queue)
zc.Response.exists = property(lambda self: bool(self._client._redis.exists(_flag(self))))
zc.Response.running = property(lambda self: bool(self._client._redis.exists(_flag(self)))
                               and self._client._redis.ttl(_flag(self)) == -1)
cl = Client("127.0.0.1", int(sys.argv[1]), ssl=False, timeout=60)
cid = cl.container.create(sys.argv[2], nics=[]).get(60)
cc = cl.container.client(cid)
jobs = []
for _ in range(100):
    jobs = [j for j in cc.job.list() if j["cmd"]["id"].startswith("startup:")]
    if jobs and jobs[0]["state"] == "running":
        break
    time.sleep(0.1)
hello = cc.bash("while [ ! -s /data/hello ]; do sleep 0.05; done; cat /data/hello").get(60)
cl.container.terminate(cid)
print(json.dumps({"cid": cid, "jobs": jobs, "hello": [hello.state, hello.stdout]}))
"""


def test_0core_client_flow(cnode: ContainerNode, images: dict[str, str]) -> None:
    """0-core's client: create from a docker-convert-shaped root, the entry service runs,
    its inner job is in the container client's job.list."""
    try:
        import zeroos.core0.client  # noqa: F401
    except ImportError:
        unavailable("0-core-client is not installed (scripts/install-deps.sh installs it)")
    res = in_netns(cnode, ZEROOS, str(cnode.port), images["entry"], timeout=120)
    assert res.returncode == 0, res.stderr + cnode.log_text()[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    cid = out["cid"]
    assert [j["cmd"]["id"] for j in out["jobs"]] == [f"startup:{cid}:entry"], out
    assert out["jobs"][0]["state"] == "running" and out["jobs"][0]["command"] == "core.system"
    assert out["hello"] == ["SUCCESS", "hello\n"]


def test_malformed_and_symlinked_files_are_errors(cnode: ContainerNode,
                                                  images: dict[str, str]) -> None:
    cids = [ok(cnode, "corex.create", {"root": images[k], "nics": []})
            for k in ("bad", "link")]
    try:
        bad, link = (startup_of(cnode, c) for c in cids)
        assert "/.startup.toml: not valid TOML" in bad["error"], bad
        assert "symbolic link: not followed" in link["error"], link
        assert bad["services"] == [] and link["services"] == []
        for cid in cids:  # the containers run on, dispatch works
            entry = ok(cnode, "corex.get", {"query": cid})["container"]
            assert entry["status"] == "running"
            assert not [j for j in job_ids(cnode) if j.startswith(f"startup:{cid}:")]
        time.sleep(0.3)
        assert rootfile(cnode, cids[1], "/data/pwned") == []
    finally:
        for cid in cids:
            ok(cnode, "corex.terminate", {"container": cid})


def _on_queue(node: ContainerNode, queue: str, command: str, args: dict[str, Any]) -> Any:
    r = redis.Redis(unix_socket_path=node.socket)
    try:
        jid = f"t-{uuid.uuid4().hex}"
        r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command,
                                             "arguments": args}))
        raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 60)
    finally:
        r.close()
    assert raw is not None
    res = json.loads(raw)
    assert res["state"] == "SUCCESS", res
    return json.loads(res["data"])


def test_operator_container_runs_what_its_role_may(cnode: ContainerNode,
                                                   images: dict[str, str]) -> None:
    cid = _on_queue(cnode, "ops", "corex.create", {"root": images["roles"], "nics": []})
    try:
        assert wait_until(lambda: services(cnode, cid)["afterapp"]["status"] == "failed", 10)
        st = services(cnode, cid)
        assert st["app"]["status"] == "error"
        assert "core.system is not permitted for the role of the queue that created the " \
               "container (operator)" in st["app"]["message"], st["app"]
        assert wait_until(lambda: services(cnode, cid)["mem"]["status"] == "done", 10)
        assert "dependency app error" in st["afterapp"]["message"]
        assert rootfile(cnode, cid, "/data/app-ran") == []
        assert not (cnode.state_dir / "sandbox" / "containers" / str(cid) / "rootfs" / "data"
                    / "app-ran").exists()
    finally:
        _on_queue(cnode, "ops", "corex.terminate", {"container": cid})


def test_restart_and_create_sync_run_them(cnode: ContainerNode,
                                          images: dict[str, str]) -> None:
    """A keeper's restart of the init starts them again (the container restarted); a
    corex.create-sync's container runs them once its init runs, and stops them with it."""
    cid = ok(cnode, "corex.create", {"root": images["entry"], "nics": [],
                                     "restart": "always"})
    try:
        assert wait_until(lambda: rootfile(cnode, cid, "/data/boots") == ["boot"], 10)
        first = ok(cnode, "corex.get", {"query": cid})["container"]["pid"]
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: rootfile(cnode, cid, "/data/boots") == ["boot", "boot"],
                          20), cnode.log_text()[-3000:]
        assert wait_until(lambda: services(cnode, cid)["entry"]["starts"] == 1, 10)
        assert ok(cnode, "corex.get", {"query": cid})["container"]["pid"] != first
    finally:
        ok(cnode, "corex.terminate", {"container": cid})

    c = cnode.client()
    try:
        job = c.raw("corex.create-sync", {"root": images["entry"], "nics": []}).id
    finally:
        c.close()

    def synced() -> int:
        for k, e in ok(cnode, "corex.list", {}).items():
            if e["container"]["service"] == job:
                return int(k)
        return 0

    assert wait_until(synced, 10)
    sid = synced()
    assert wait_until(lambda: rootfile(cnode, sid, "/data/boots") == ["boot"], 10)
    assert f"startup:{sid}:entry" in job_ids(cnode)
    ok(cnode, "job.kill", {"id": job})
    assert wait_until(lambda: not synced(), 20)
    assert wait_until(lambda: not [j for j in job_ids(cnode) if j.startswith(
        f"startup:{sid}:")], 10)
    assert call(cnode, "corex.get", {"query": sid}).state.value == "ERROR"


def test_a_service_that_ended_with_no_dispatcher_has_its_outcome(cnode: ContainerNode,
                                                                 images: dict[str, str]) -> None:
    """A service's process that ends (exit 3) while no dispatcher runs: the next dispatcher
    adopts its job, whose status the supervisor kept, and the startup runner, attached to it
    again before it ends, sets the service failed with its code; it is not run again."""
    cid = ok(cnode, "corex.create", {"root": images["ends"], "nics": []})
    try:
        assert wait_until(lambda: rootfile(cnode, cid, "/data/up") == ["up"], 10)
        assert wait_until(lambda: services(cnode, cid)["ends"]["status"] == "running", 10)
        root = cnode.state_dir / "sandbox" / "containers" / str(cid) / "rootfs"
        cnode.restart_dispatcher(meanwhile=(root / "data" / "end").touch)
        assert wait_until(lambda: services(cnode, cid)["ends"]["status"] != "running", 20)
        st = services(cnode, cid)["ends"]
        assert st["status"] == "failed" and "1003" in st["message"], (st, cnode.log_text()[-3000:])
        assert st["starts"] == 1
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
