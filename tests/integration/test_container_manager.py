"""core0's own client drives containers: ``c.container`` (create/list/get/find/dispatch/
nic/portforward/terminate, image import/list/inspect/delete), ``c.container.client(id)``
with the host client's API (system, bash, upload/download, filesystem, process, job, info)
sync and async, and ``core0ctl container …``. Real runc, netns, bridge, nft."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from core0_client import AsyncClient
from core0_client.errors import ResultError
from sandbox_fixtures import ContainerNode, busybox_rootfs, container_node


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    with container_node() as n:
        root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=n.dir)) / "rootfs")
        c = n.client()
        try:
            c.container.image.import_("bb", str(root))
        finally:
            c.close()
        yield n


def test_manager_and_inside_sync(cnode: ContainerNode) -> None:
    c = cnode.client()
    try:
        assert any(i["name"] == "bb" for i in c.container.image.list())
        assert c.container.image.inspect("bb")["name"] == "bb"
        cid = c.container.create("bb", name="web", hostname="web1", tags=["t1", "t2"],
                                 limits={"memory": 64 << 20})
        assert isinstance(cid, int)
        try:
            assert str(cid) in c.container.list()
            assert c.container.get("web")["container"]["id"] == cid
            assert set(c.container.find("t1")) == {str(cid)}
            assert c.container.find("nope") == {}
            inside = c.container.client(cid)
            r = inside.system("hostname").get(60)
            assert (r.state.value, r.stdout.strip(), r.container) == ("SUCCESS", "web1", cid)
            r = inside.bash("echo $((6*7)); exit 4").get(60)
            assert r.stdout.strip() == "42" and r.code == 1004
            # filesystem inside: the container's root, not the node's
            assert inside.upload("/tmp/hello", b"from the client") == 15
            assert inside.download("/tmp/hello") == b"from the client"
            r = inside.system("cat /tmp/hello").get(60)
            assert r.stdout == "from the client"
            assert "hello" in [e["name"] for e in inside.filesystem.list("/tmp")]
            assert not os.path.exists("/tmp/hello") or \
                Path("/tmp/hello").read_bytes() != b"from the client"
            # process/job scoped to the container
            sleeper = inside.system("sleep 300")
            jobs = inside.job.list()
            assert sleeper.id in [j["id"] for j in jobs]
            pids = [p["pid"] for p in inside.process.list()]
            assert pids and os.getpid() not in pids
            inside.job.kill(sleeper.id, 9)
            assert sleeper.get(60).state.value != "SUCCESS"
            # info.* answered for the container
            mem = inside.info.mem()
            assert mem["total"] == 64 << 20 and 0 < mem["used"] <= mem["total"]
            nics = {n["name"]: n for n in inside.info.nic()}
            assert set(nics) == {"lo", "eth0"}
            assert f"172.18.0.{cid + 1}/16" in [a["addr"] for a in nics["eth0"]["addrs"]]
            disks = inside.info.disk()
            assert "/" in [d["mountpoint"] for d in disks]
            root = next(d for d in disks if d["mountpoint"] == "/")
            assert root["total"] > 0
            osinfo = inside.info.os()
            assert osinfo["hostname"] == "web1" and osinfo["procs"] >= 1
            assert inside.info.cpu()
            # ip.* in the container's netns (the host client's ip manager)
            inside.ip.link.add("wb0", "bridge", up=True)
            inside.ip.addr.add("wb0", "10.96.0.1/24")
            wb0 = next(n for n in inside.info.nic() if n["name"] == "wb0")
            assert "10.96.0.1/24" in [a["addr"] for a in wb0["addrs"]]
            assert "wb0" not in [x["name"] for x in c.ip.link.list()]
            with pytest.raises(ResultError) as ei:
                inside.ip.netns.list()
            assert ei.value.code == 412
            inside.ip.link.delete("wb0")
            listener = inside.system("nc -l -p 7777")

            def listening() -> bool:
                return any(p["port"] == 7777 and p["network"].startswith("tcp")
                           and p["pid"] in inside_pids() for p in inside.info.port())

            def inside_pids() -> list[int]:
                return [p["pid"] for p in inside.process.list()]

            wait_until(listening, timeout=30)
            inside.job.kill(listener.id, 9)
            listener.get(60)
            # ports forward, nics
            c.container.portforward_add(cid, 18080, 80)
            assert "18080" in c.container.get(cid)["container"]["ports"]
            c.container.portforward_remove(cid, 18080, 80)
            assert c.container.get(cid)["container"]["ports"] == {}
            inner = c.container.dispatch(cid, "core.system", {"name": "true"})
            assert c.response_for(inner).get(60).container == cid
        finally:
            c.container.terminate(cid)
        assert str(cid) not in c.container.list()
        with pytest.raises(ResultError):
            c.container.image.delete("no-such-image")
    finally:
        c.close()


def test_inside_async(cnode: ContainerNode) -> None:
    async def run() -> None:
        ac = AsyncClient(unix_socket_path=cnode.socket, timeout=60)
        try:
            cid = await ac.container.create("bb", hostname="async1")
            try:
                inside = ac.container.client(cid)
                resp = await inside.system("hostname")
                r = await resp.get(60)
                assert (r.stdout.strip(), r.container) == ("async1", cid)
                assert await inside.upload("/x", b"a" * 700_000) == 700_000
                assert await inside.download("/x") == b"a" * 700_000
                assert (await inside.info.os())["hostname"] == "async1"
                assert await inside.filesystem.exists("/x") is True
            finally:
                await ac.container.terminate(cid)
        finally:
            await ac.close()

    asyncio.run(run())


def _ctl(cnode: ContainerNode, *words: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root}:{root / 'client'}")
    return subprocess.run([sys.executable, "-m", "core0_client.cli", "--socket", cnode.socket,
                           *words], capture_output=True, text=True, env=env, timeout=120)


def test_core0ctl_container(cnode: ContainerNode) -> None:
    r = _ctl(cnode, "container", "create", "bb", "hostname=ctl1")
    assert r.returncode == 0, r.stderr
    cid = int(r.stdout.strip())
    try:
        r = _ctl(cnode, "container", "list")
        assert r.returncode == 0 and f'"{cid}"' in r.stdout
        r = _ctl(cnode, "container", "exec", str(cid), "--", "sh", "-c", "hostname; exit 7")
        assert (r.returncode, r.stdout.strip()) == (7, "ctl1"), r.stderr
        r = _ctl(cnode, "container", "exec", str(cid), "--env=A=b", "--", "sh", "-c", "echo $A")
        assert (r.returncode, r.stdout.strip()) == (0, "b"), r.stderr
        r = _ctl(cnode, "container", "bash", str(cid), "echo", "$((2+3))")
        assert (r.returncode, r.stdout.strip()) == (0, "5"), r.stderr
        r = _ctl(cnode, "container", "exec", "x", "--", "true")
        assert r.returncode == 2
        r = _ctl(cnode, "container", "dispatch", f"container={cid}",
                 'command={"command": "core.system", "arguments": {"name": "true"}}')
        assert r.returncode == 0 and len(r.stdout.strip().strip('"')) > 8, r.stderr
    finally:
        r = _ctl(cnode, "container", "terminate", str(cid))
    assert r.returncode == 0, r.stderr
    assert f'"{cid}"' not in _ctl(cnode, "container", "list").stdout


def test_block_is_base64_inside(cnode: ContainerNode) -> None:
    """The raw filesystem manager inside: open/write/read/close by fd."""
    c = cnode.client()
    try:
        cid = c.container.create("bb")
        try:
            inside = c.container.client(cid)
            fd = inside.filesystem.open("/f", "w")
            inside.filesystem.write(fd, base64.b64encode(b"xyz").decode())
            inside.filesystem.close(fd)
            assert inside.system("cat /f").get(60).stdout == "xyz"
        finally:
            c.container.terminate(cid)
    finally:
        c.close()
