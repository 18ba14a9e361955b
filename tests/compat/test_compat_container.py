"""0-core's client, container manager (``corex.*``) and the per-container client
(``ContainerClient``, through ``corex.dispatch``), on the suite's node: real runc, a busybox
root, the node's NAT bridge, nft forwards. Every container made here is terminated again."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from compat_fixtures import Zos
from conftest import require
from sandbox_fixtures import ContainerNode, busybox_rootfs, cleanup_containers

pytest_plugins = ["storage_fixtures", "compat_fixtures"]

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def rootfs(zos: Zos) -> Iterator[Path]:
    """A busybox root (a host path: core0 imports it once, 0-core's ``root_url``)."""
    require("runc")
    d = Path(tempfile.mkdtemp(prefix="rootfs-", dir=zos.base))
    yield busybox_rootfs(d / "rootfs")
    cleanup_containers(ContainerNode(zos.ns, zos.pid, zos.base, zos.port))


def _wait(cond: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return bool(cond())


@pytest.fixture
def cid(cl: Any, rootfs: Path, record: Any) -> Iterator[int]:
    """A container made by 0-core's ``create`` with its defaults (one ``default`` nic)."""
    got = cl.container.create(str(rootfs), hostname="compat", tags=["compat", "ct"],
                              env={"GREETING": "hi"}, port={18080: 8080}).get(120)
    assert isinstance(got, int) and got >= 1
    record("container.create", "`JSONResponse`; `.get()`: the container's integer id "
           "(root: a stored image or a host path; default nic, port forwards, env, "
           "hostname, tags honoured)")
    yield got
    with contextlib.suppress(Exception):
        cl.container.terminate(got)


def test_container_manager(cl: Any, zc: Any, record: Any, cid: int) -> None:
    listed = cl.container.list()
    entry = listed[str(cid)]
    c = entry["container"]
    assert c["arguments"]["hostname"] == "compat" and c["arguments"]["tags"] == ["compat", "ct"]
    assert c["pid"] > 0 and c["root"].endswith("rootfs")
    assert {"cpu", "rss", "vms", "swap"} <= set(entry)
    record("container.list", "{id: {cpu, rss, vms, swap, container: {arguments, root, pid, "
           "nics, ...}}} (+ core0's status, ports, oom_kills)")
    assert set(cl.container.find("compat")) == {str(cid)}
    assert set(cl.container.find("compat", "ct")) == {str(cid)}
    assert cl.container.find("compat", "nope") == {}
    record("container.find", "{id: as in list} of the containers having all the tags")
    one = cl.json("corex.get", {"query": cid})
    assert one["container"]["pid"] == c["pid"]
    record("container.get", "one container as in list (by id; core0's `{query}`)")

    # port forwards: the create's, then one added and removed
    fwds = cl.json("nft.forward_list", {})
    assert any(f["src"].startswith("18080") and f["port"] == 8080 for f in fwds)
    cl.json("corex.portforward-add", {"container": cid, "host_port": "18081",
                                      "container_port": 8081})
    assert any(f["src"].startswith("18081") for f in cl.json("nft.forward_list", {}))
    record("container.portforward_add", "`None`; an nft forward to the default nic")
    cl.json("corex.portforward-remove", {"container": cid, "host_port": "18081",
                                         "container_port": 8081})
    assert not any(f["src"].startswith("18081") for f in cl.json("nft.forward_list", {}))
    record("container.portforward_remove", "`None`; the forward is gone")

    # a second nic on a bridge of the node's, hot-plugged and unplugged
    cl.bridge.create("ctb0")
    try:
        nic = cl.container.nic_add(cid, {"type": "bridge", "id": "ctb0", "name": "eth1",
                                         "config": {"cidr": "10.77.0.2/24"}})
        assert nic["index"] == 1
        cc = cl.container.client(cid)
        r = cc.bash("ip -o -4 addr show eth1").get(60)
        assert "10.77.0.2/24" in r.stdout, r
        record("container.nic_add", "{index, type, id, name, hwaddr, config} (the nic, "
               "configured inside)")
        cl.container.nic_remove(cid, 1)
        assert cc.bash("ip link show eth1").get(60).state == "ERROR"
        nics = cl.container.list()[str(cid)]["container"]["arguments"]["nics"]
        assert nics[1]["state"] == "destroyed"
        record("container.nic_remove", "`None`; the nic is gone, listed with state "
               "`destroyed` (as 0-core)")
        with pytest.raises(zc.ResultError) as e:
            cl.container.nic_add(cid, {"type": "zerotier", "id": "1d71939404587f3c"})
        assert e.value.code == 412
    finally:
        cl.bridge.delete("ctb0")

    # restic backups (0-core's JSONResponse: .get() is the snapshot id, then the new id)
    repo = Path(tempfile.mkdtemp(prefix="compat-restic-")) / "repo"
    url = f"file://{repo}?password=compat-{uuid.uuid4().hex}"
    try:
        cc = cl.container.client(cid)
        assert cc.bash("mkdir -p /srv && echo backed-up > /srv/f").get(60).state == "SUCCESS"
        snap = cl.container.backup(cid, url).get(300)
        assert isinstance(snap, str) and len(snap) >= 8
        record("container.backup", "the snapshot id (`.get()`); the repository is "
               "initialised when new (restic)")
    except BaseException:
        shutil.rmtree(repo.parent, ignore_errors=True)
        raise
    # threefoldtech/0-core master's container.layer(container, flist): json corex.flist-layer
    with pytest.raises(zc.ResultError) as e:
        cl.json("corex.flist-layer", {"container": cid,
                                      "flist": "https://hub.grid.tf/tf-official-apps/x.flist"})
    assert e.value.code == 501 and "flists" in e.value.message, e.value
    assert "container.image" in e.value.message
    record("container.layer", "`ResultError` 501: core0 does not mount flists (0-fs); roots "
           "are OCI images (`container.image.*`) (docs/compat.md)", works=False)

    cl.container.terminate(cid)
    try:  # (the same port forward: restored once the original is gone)
        new = cl.container.restore(f"{url}#{snap}", tags=["restored"]).get(300)
        try:
            assert cl.container.client(new).bash("cat /srv/f").get(60).stdout == "backed-up\n"
            got = cl.container.list()[str(new)]["container"]
            assert (got["tags"], got["hostname"]) == (["restored"], "compat")
        finally:
            cl.container.terminate(new)
        record("container.restore", "the new container's id (`.get()`): the backed-up root "
               "and create arguments (port forwards, env, hostname), the given tags")
    finally:
        shutil.rmtree(repo.parent, ignore_errors=True)
    assert str(cid) not in cl.container.list()
    assert not any(f["src"].startswith("18080") for f in cl.json("nft.forward_list", {}))
    with pytest.raises(RuntimeError):
        cl.container.terminate(cid)
    record("container.terminate", "`None`; stopped and everything made for it removed; "
           "`RuntimeError('failed to terminate container: …')` when unknown")


def test_container_client(cl: Any, zc: Any, zos: Zos, record: Any, cid: int) -> None:
    cc = cl.container.client(cid)
    assert cc.container == cid
    record("container.client", "a `ContainerClient` bound to the id (the methods below)")
    r = cc.system("sh -c 'echo $GREETING; hostname'").get(60)
    assert (r.state, r.code, r.stdout) == ("SUCCESS", 0, "hi\ncompat\n")
    assert r.payload.get("container") == cid
    r = cc.system("cat", stdin="in", env={"X": "y"}, dir="/tmp").get(60)
    assert r.stdout == "in"
    record("container.client.system", "`Response`; `.get()` as the node's system, run "
           "inside (result's `container` = the id)")
    r = cc.bash("echo a; echo b >&2; exit 2").get(60)
    assert (r.state, r.code, r.stdout, r.stderr) == ("ERROR", 1002, "a\n", "b\n")
    record("container.client.bash", "`Response`; `.get()` as system")
    resp = cc.raw("core.system", {"name": "true", "args": []})
    assert resp.get(60).state == "SUCCESS" and resp.exists
    record("container.client.raw", "`Response` of the inner job (corex.dispatch, then "
           "`response_for`)")
    assert cc.sync("core.system", {"name": "true", "args": []}).state == "SUCCESS"
    with pytest.raises(zc.ResultError) as e:
        cc.sync("core.system", {"name": "false", "args": []})
    assert e.value.code == 1001
    record("container.client.sync", "`Return`; `ResultError` unless SUCCESS")
    assert cc.json("filesystem.exists", {"path": "/bin/sh"}) is True
    record("container.client.json", "the decoded `data`")
    assert cc.ping().startswith("PONG")
    record("container.client.ping", '`"PONG <version>"`')

    job = cc.bash("sleep 0.5; echo one; sleep 0.3; echo two", stream=True)
    got: list[str] = []
    cc.subscribe(job.id).stream(lambda level, text, flags: got.append(text))
    assert "one" in got and "two" in got
    record("container.client.subscribe", "`Response` whose `.stream(cb)` relays an inner "
           "job's output")

    # info inside: the node's facts (a container sees the same /proc)
    assert cc.info.cpu() and cc.info.mem()["total"] > 0 and cc.info.os()["hostname"]
    assert "branch" in cc.info.version() and isinstance(cc.info.disk(), list)
    nics = cc.info.nic()
    assert isinstance(nics, list) and any(n["name"] == "lo" for n in nics), nics
    assert isinstance(cc.info.port(), list)
    record("container.client.info", "cpu, mem, os, version, disk, nic, port: answered for the "
           "container (its cpus and memory cgroup, its root's mounts, its netns's nics and "
           "listening ports)")

    sleeper = cc.system("sleep 30")
    assert _wait(lambda: any(j["id"] == sleeper.id for j in cc.job.list()))
    assert [j["id"] for j in cc.job.list(sleeper.id)] == [sleeper.id]
    assert cc.job.kill(sleeper.id) is True
    assert sleeper.get(60).state in ("KILLED", "ERROR")
    record("container.client.job", "list, kill: the container's own jobs only")

    sleeper = cc.system("sleep 30")
    assert _wait(lambda: any("sleep" in p["cmdline"] for p in cc.process.list()))
    procs = cc.process.list()
    pid = next(p["pid"] for p in procs if "sleep" in p["cmdline"])
    assert all(p["pid"] > 0 for p in procs)
    cc.process.kill(pid)
    assert sleeper.get(60).state in ("KILLED", "ERROR")
    record("container.client.process", "list, kill: the processes of the container's cgroup "
           "(host pids)")

    fs = cc.filesystem
    fs.mkdir("/compat/d")
    assert fs.exists("/compat/d")
    fs.upload("/compat/f", io.BytesIO(b"x" * 10000))
    out = io.BytesIO()
    fs.download("/compat/f", out)
    assert out.getvalue() == b"x" * 10000
    local = Path(tempfile.mkdtemp(dir=zos.base))
    (local / "up").write_bytes(b"file-data")
    fs.upload_file("/compat/d/up", str(local / "up"))
    fs.download_file("/compat/d/up", str(local / "down"))
    assert (local / "down").read_bytes() == b"file-data"
    fs.move("/compat/f", "/compat/g")
    fs.chmod("/compat/g", 0o600)
    fs.chown("/compat/g", "root", "root")
    assert {e["name"] for e in fs.list("/compat")} == {"d", "g"}
    fd = fs.open("/compat/g", "r")
    assert fs.read(fd) == b"x" * 10000 and fs.read(fd) == b""
    fs.close(fd)
    assert cc.bash("stat -c %a /compat/g").get(60).stdout == "600\n"
    fs.remove("/compat")
    assert not fs.exists("/compat")
    assert not Path("/compat").exists()  # the container's root, never the node's
    record("container.client.filesystem", "every method (open, exists, list, mkdir, remove, "
           "move, chmod, chown, read, write, close, upload, download, upload_file, "
           "download_file) confined to the container's root")

    ip = cc.ip
    inside = {x["name"] for x in ip.link.list()}
    assert {"lo", "eth0"} <= inside, inside
    assert ip.bridge.add("cbr9") is None
    ip.link.up("cbr9")
    ip.addr.add("cbr9", "10.93.0.1/24")
    assert "10.93.0.1/24" in ip.addr.list("cbr9")
    ip.route.add("cbr9", "10.94.0.0/24", "10.93.0.2")
    assert any(r["dst"] == "10.94.0.0/24" for r in ip.route.list())
    # the container's namespace, not the node's
    nic = {n["name"]: n for n in cc.info.nic()}
    assert "10.93.0.1/24" in [a["addr"] for a in nic["cbr9"]["addrs"]], nic["cbr9"]
    assert "cbr9" not in {x["name"] for x in cl.ip.link.list()}
    assert "10.94.0.0/24" not in [r["dst"] for r in cl.ip.route.list()]
    ip.route.delete("cbr9", "10.94.0.0/24", "10.93.0.2")
    ip.addr.delete("cbr9", "10.93.0.1/24")
    ip.link.down("cbr9")
    ip.bridge.delete("cbr9")
    assert {x["name"] for x in ip.link.list()} == inside
    record("container.client.ip", "link, addr, route, bridge (and bond): the node's `ip.*` "
           "run in the container's network namespace only")
    for call in (cc.zerotier.info, cc.zerotier.list):
        with pytest.raises(zc.ResultError) as e:
            call()
        assert e.value.code == 501 and "ZeroTier" in e.value.message, e.value
    record("container.client.zerotier", "`ResultError` 501: core0 does not run ZeroTier "
           "(docs/compat.md)", works=False)
