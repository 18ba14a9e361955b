"""cgroup limits of containers, enforced by the runtime (v1 on this host): a memory limit ends
in an OOM kill that corex.get reports, pids.max holds a fork bomb."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sandbox_fixtures import ContainerNode, busybox_rootfs, node_tag


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=cnode.dir)) / "rootfs")
    c = cnode.client()
    try:
        c.raw("container.image.import", {"name": "bb", "source": str(root)}).get(60)
    finally:
        c.close()
    return "bb"


def create(cnode: ContainerNode, **args: Any) -> int:
    c = cnode.client()
    try:
        r = c.raw("corex.create", {"nics": [], **args}).get(60)
        assert r.state.value == "SUCCESS", r.data
        return int(json.loads(r.data))
    finally:
        c.close()


def inside(cnode: ContainerNode, cid: int, script: str) -> Any:
    c = cnode.client()
    try:
        d = c.raw("corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {"script": script}}}).get(60)
        assert d.state.value == "SUCCESS", d.data
        return c.response_for(json.loads(d.data)).get(120)
    finally:
        c.close()


def get(cnode: ContainerNode, cid: int) -> dict[str, Any]:
    c = cnode.client()
    try:
        return dict(c.json("corex.get", {"query": cid})["container"])
    finally:
        c.close()


def terminate(cnode: ContainerNode, cid: int) -> None:
    c = cnode.client()
    try:
        r = c.raw("corex.terminate", {"container": cid}).get(60)
        assert r.state.value == "SUCCESS", r.data
    finally:
        c.close()


def test_memory_limit_oom_reported(cnode: ContainerNode, image: str) -> None:
    cid = create(cnode, root=image, limits={"memory": 32 << 20})
    try:
        assert get(cnode, cid)["oom_kills"] == 0
        res = inside(cnode, cid, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
                     " || cat /sys/fs/cgroup/memory.max; tail /dev/zero; echo tail=$?")
        assert str(32 << 20) in res.streams[0]
        assert "tail=137" in res.streams[0]  # the hog was OOM-killed (SIGKILL)
        ctr = get(cnode, cid)
        assert ctr["oom_kills"] >= 1
        assert ctr["status"] == "running"  # the init survives: only the hog was killed
    finally:
        terminate(cnode, cid)


def test_pids_limit_holds_fork_bomb(cnode: ContainerNode, image: str) -> None:
    cid = create(cnode, root=image, limits={"pids": 16})
    try:
        # busybox sh gives up at the first fork the cgroup refuses
        res = inside(cnode, cid, "i=0; while [ $i -lt 64 ]; do sleep 60 </dev/null >/dev/null "
                     "2>&1 & i=$((i+1)); done; echo never")
        out, err = res.streams
        assert "never" not in out and "can't fork" in err, err[-600:]
        cg = Path(f"/sys/fs/cgroup/pids/core0-{node_tag(cnode)}-{cid}")
        if not cg.exists():  # cgroup v2
            cg = Path(f"/sys/fs/cgroup/core0-{node_tag(cnode)}-{cid}")
        assert (cg / "pids.max").read_text().strip() == "16"
        current = int((cg / "pids.current").read_text())
        assert 16 - 4 <= current <= 16  # the sleeps filled the cgroup up to its limit
        st = get(cnode, cid)
        assert st["status"] == "running"
    finally:
        terminate(cnode, cid)


def test_cpu_limits_in_cgroup(cnode: ContainerNode, image: str) -> None:
    cid = create(cnode, root=image, limits={"cpu_quota": 50000, "cpu_shares": 512})
    try:
        cg = Path(f"/sys/fs/cgroup/cpu/core0-{node_tag(cnode)}-{cid}")
        if cg.exists():  # cgroup v1
            assert (cg / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (cg / "cpu.cfs_period_us").read_text().strip() == "100000"
            assert (cg / "cpu.shares").read_text().strip() == "512"
        else:  # cgroup v2
            cg = Path(f"/sys/fs/cgroup/core0-{node_tag(cnode)}-{cid}")
            assert (cg / "cpu.max").read_text().split() == ["50000", "100000"]
        pids = (cg / "cgroup.procs").read_text().split()
        assert get(cnode, cid)["pid"] and str(get(cnode, cid)["pid"]) in pids
    finally:
        terminate(cnode, cid)
