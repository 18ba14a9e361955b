"""filesystem.* dispatched into a container: confined to the container's root (reliability
T11): ``..``, absolute paths and symlinks made by the container all resolve inside it, also
while the container swaps a directory for a symlink to a host path, 1,000 times."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_fixtures import ContainerNode, busybox_rootfs


class Inside:
    """Dispatch into one container and wait for the inner result."""

    def __init__(self, cnode: ContainerNode, cid: int):
        self.c = cnode.client()
        self.cid = cid

    def raw(self, command: str, args: dict[str, Any]) -> Any:
        d = self.c.raw("corex.dispatch", {"container": self.cid, "command": {
            "command": command, "arguments": args}}).get(60)
        assert d.state.value == "SUCCESS", d.data
        return self.c.response_for(json.loads(d.data)).get(60)

    def ok(self, command: str, args: dict[str, Any]) -> Any:
        r = self.raw(command, args)
        assert r.state.value == "SUCCESS", (command, args, r.data)
        assert r.container == self.cid
        return json.loads(r.data) if r.data else None

    def read(self, path: str) -> bytes | None:
        r = self.raw("filesystem.open", {"file": path, "mode": "r"})
        if r.state.value != "SUCCESS":
            return None
        fd = json.loads(r.data)
        try:
            return base64.b64decode(self.ok("filesystem.read", {"fd": fd}))
        finally:
            self.raw("filesystem.close", {"fd": fd})

    def write(self, path: str, data: bytes) -> bool:
        r = self.raw("filesystem.open", {"file": path, "mode": "w"})
        if r.state.value != "SUCCESS":
            return False
        fd = json.loads(r.data)
        try:
            self.ok("filesystem.write", {"fd": fd, "block": base64.b64encode(data).decode()})
        finally:
            self.raw("filesystem.close", {"fd": fd})
        return True


@pytest.fixture(scope="module")
def ctr(cnode: ContainerNode) -> Iterator[Inside]:
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=cnode.dir)) / "rootfs")
    c = cnode.client()
    cid = json.loads(c.raw("corex.create", {"root": str(root), "nics": []}).get(60).data)
    inside = Inside(cnode, cid)
    yield inside
    inside.c.close()
    c.raw("corex.terminate", {"container": cid}).get(60)
    c.close()


def test_paths_resolve_inside(ctr: Inside) -> None:
    tag = uuid.uuid4().hex[:8]
    assert ctr.write("/data/hello", b"hi")
    assert ctr.ok("bash", {"script": "cat /data/hello"}) is None
    assert ctr.raw("bash", {"script": "cat /data/hello"}).streams[0] == "hi"
    assert ctr.read("/etc/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"  # the image's
    assert ctr.write(f"/etc/hostile-{tag}", b"x")
    assert not Path(f"/etc/hostile-{tag}").exists()
    assert ctr.write(f"../../../../../../tmp/hostile-{tag}", b"x")
    assert not Path(f"/tmp/hostile-{tag}").exists()
    out = ctr.raw("bash", {"script": f"ls /tmp/hostile-{tag}"}).streams[0]
    assert f"/tmp/hostile-{tag}" in out  # it landed inside
    ctr.ok("bash", {"script": "ln -s /etc /data/hostlink"})
    assert ctr.read("/data/hostlink/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"
    assert ctr.ok("filesystem.exists", {"path": "/data/hello"}) is True


@pytest.mark.slow
def test_symlink_swap_race(ctr: Inside) -> None:
    outside = Path(tempfile.mkdtemp(prefix="core0-outside-"))
    try:
        (outside / "secret").write_text("HOST")
        # inside: /data/d flips between a real dir (holding "CTR") and a symlink to the
        # host path of ``outside`` (which, resolved inside the root, does not exist)
        ctr.ok("bash", {"script": "mkdir -p /data/d; echo -n CTR > /data/d/secret"})
        swap = (f"mkdir -p /data/real; echo -n CTR > /data/real/secret; "
                f"while :; do rm -rf /data/d; ln -s {outside} /data/d; rm /data/d; "
                f"cp -a /data/real /data/d; done")
        d = ctr.c.raw("corex.dispatch", {"container": ctr.cid, "command": {
            "command": "bash", "arguments": {"script": swap}}}).get(60)
        swapper = json.loads(d.data)
        seen = {"CTR": 0, "none": 0}
        for i in range(1000):
            if i % 5 == 0:
                ctr.write("/data/d/out", b"W")
                assert not (outside / "out").exists()
            data = ctr.read("/data/d/secret")
            # b"": caught while `cp -a` copies the file in; never the host's "HOST"
            assert data in (None, b"", b"CTR"), data
            seen["CTR" if data else "none"] += 1
        assert sorted(p.name for p in outside.iterdir()) == ["secret"]
        assert (outside / "secret").read_text() == "HOST"
        assert seen["CTR"] > 0
        ctr.c.raw("job.kill", {"id": swapper}).get(30)
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_jobs_inside_are_scoped(ctr: Inside) -> None:
    d = ctr.c.raw("corex.dispatch", {"container": ctr.cid, "command": {
        "command": "bash", "arguments": {"script": "sleep 60"}}}).get(60)
    sleeper = json.loads(d.data)
    host = ctr.c.raw("bash", {"script": "sleep 60"})  # a host job: invisible inside
    try:
        ids = [j["id"] for j in ctr.ok("job.list", {})]
        assert sleeper in ids and host.id not in ids
        assert ctr.raw("job.kill", {"id": host.id}).code == 404
        assert ctr.raw("job.list", {"id": host.id}).code == 404
        assert ctr.ok("job.kill", {"id": sleeper}) is True
        res = ctr.c.response_for(sleeper).get(60)
        assert res.state.value == "KILLED" and res.container == ctr.cid
    finally:
        ctr.c.raw("job.kill", {"id": host.id}).get(30)


def test_processes_inside_are_scoped(ctr: Inside) -> None:
    import os

    procs = ctr.ok("process.list", {})
    pids = {p["pid"] for p in procs}
    names = {p["name"] for p in procs}
    assert "catatonit" in names or ".core0-init" in names  # the container's init
    assert os.getpid() not in pids and 1 not in pids  # nothing of the host
    assert ctr.raw("process.list", {"pid": os.getpid()}).code == 404
    assert ctr.raw("process.kill", {"pid": os.getpid(), "signal": 18}).code == 404
