"""0-core's client, cgroup manager (its master client's arguments), on this machine's
cgroups: v2 where the controller is enabled there, else v1 (hybrid hosts: cpuset and memory
live in v1). Groups are made under ``core0/`` and removed again."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import unavailable

pytest_plugins = ["storage_fixtures", "compat_fixtures"]

pytestmark = pytest.mark.root


@pytest.fixture
def sleeper() -> Iterator[int]:
    p = subprocess.Popen(["sleep", "60"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    """Remove the ``core0`` parent groups this test made (rmdir: only when empty)."""
    roots = [f"/sys/fs/cgroup/{s}/core0" for s in ("cpuset", "memory")] + [
        "/sys/fs/cgroup/core0", "/sys/fs/cgroup/unified/core0"]
    existed = {r for r in roots if os.path.isdir(r)}
    yield
    for r in roots:
        if r not in existed and os.path.isdir(r):
            with contextlib.suppress(OSError):
                os.rmdir(r)


def _cgroup_of(pid: int, controller: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.strip().split(":", 2)
            if controller in ctrls.split(",") or (ctrls == "" and controller == "unified"):
                return path
    return ""


def _where(pid: int, sub: str) -> str:
    path = _cgroup_of(pid, sub)
    return path or _cgroup_of(pid, "unified")


def test_cgroup_manager(cl: Any, zc: Any, record: Any, sleeper: int) -> None:
    name = f"compat{os.getpid()}"
    before = cl.json("cgroup.list", {})
    if not before:
        unavailable("this machine has neither a cpuset nor a memory cgroup controller")
    subs = sorted(before)
    try:
        for sub in subs:
            assert cl.json("cgroup.ensure", {"subsystem": sub, "name": name}) is None
            cl.json("cgroup.ensure", {"subsystem": sub, "name": name})  # again: no error
        listed = cl.json("cgroup.list", {})
        assert all(name in listed[s] for s in subs)
        record("cgroup.list", "{cpuset: [names], memory: [names]}")
        record("cgroup.ensure", "`None`; the group exists afterwards (idempotent)")

        sub = subs[0]
        args = {"subsystem": sub, "name": name, "pid": sleeper}
        assert cl.json("cgroup.task-add", args) is None
        assert _where(sleeper, sub).endswith(f"/core0/{name}")
        assert cl.json("cgroup.tasks", {"subsystem": sub, "name": name}) == [sleeper]
        record("cgroup.task_add", "`None`; the process is in the group")
        record("cgroup.tasks", "[pids]")
        cl.json("cgroup.task-remove", args)
        assert cl.json("cgroup.tasks", {"subsystem": sub, "name": name}) == []
        with pytest.raises(zc.ResultError) as e:
            cl.json("cgroup.task-remove", args)
        assert e.value.code == 400
        record("cgroup.task_remove", "`None`; the process moves to the hierarchy's root")

        if "cpuset" in subs:
            spec = cl.json("cgroup.cpuset.spec", {"name": name, "cpus": None, "mems": None})
            assert set(spec) == {"cpus", "mems"} and spec["cpus"]
            got = cl.json("cgroup.cpuset.spec", {"name": name, "cpus": "0", "mems": None})
            assert got["cpus"] == "0"
            record("cgroup.cpuset", "{cpus, mems}; given values set first")
        if "memory" in subs:
            spec = cl.json("cgroup.memory.spec", {"name": name, "mem": 0, "swap": 0})
            assert spec == {"mem": 0, "swap": 0}  # 0 = no limit
            got = cl.json("cgroup.memory.spec", {"name": name, "mem": 64 << 20, "swap": 0})
            assert got["mem"] == 64 << 20
            record("cgroup.memory", "{mem, swap} in bytes (0 = no limit); a non-zero mem sets "
                   "the limits first")
        for s in subs:
            assert cl.json("cgroup.reset", {"subsystem": s, "name": name}) is None
        if "memory" in subs:
            assert cl.json("cgroup.memory.spec", {"name": name, "mem": 0, "swap": 0})["mem"] == 0
        record("cgroup.reset", "`None`; limits lifted (cpuset: the parent's cpus/mems)")
        with pytest.raises(zc.ResultError) as e:
            cl.json("cgroup.tasks", {"subsystem": sub, "name": "no-such-group"})
        assert e.value.code == 404
        for bad in ("tasks", "../x", "a/b"):  # a control file's name, paths
            with pytest.raises(zc.ResultError) as e:
                cl.json("cgroup.ensure", {"subsystem": sub, "name": bad})
            assert e.value.code == 400, bad
        cl.json("cgroup.task-add", args)
    finally:
        for s in subs:
            cl.json("cgroup.remove", {"subsystem": s, "name": name})
    deadline = time.monotonic() + 5
    while name in cl.json("cgroup.list", {}).get(subs[0], []):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not _where(sleeper, subs[0]).endswith(f"/core0/{name}")
    record("cgroup.remove", "`None`; its processes move to the root first; absent: no error")
