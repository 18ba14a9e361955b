"""core0's own client drives VMs: ``c.kvm`` (sync and asyncio) and ``core0ctl kvm …``, against a
real libvirtd + qemu (TCG) and a busybox guest (see tests/kvm_env.py). Run under
``flock /tmp/core0-vm.lock``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest
from conftest import code_of, wait_until
from kvm_env import Env, assert_clean, env, events_of, seen
from virt_fixtures import MARKER, wait_text

__all__ = ["env"]  # the fixture
pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_sync_client_kvm_manager(env: Env) -> None:
    c = env.core0()
    ev = c.kvm.events()
    assert wait_until(lambda: any(e["event"] == "subscribed" for e in events_of(env, ev.id)),
                      30)
    a = env.guest_args("cvm", tags=["client"])
    uuid = c.kvm.create(a.pop("name"), **a)
    assert uuidlib.UUID(uuid)
    [item] = c.kvm.list()
    assert item["uuid"] == uuid and item["name"] == "cvm" and item["tags"] == ["client"]
    assert c.kvm.get(name="cvm")["uuid"] == uuid
    console = Path(c.kvm.get(uuid=uuid)["console"])
    assert wait_text(console, MARKER, 120), console.read_text(errors="replace")[-2000:]
    info = c.kvm.info(uuid)
    assert len(info["vcpu"]) == 1 and info["block"][0]["name"] == "vda"
    c.kvm.pause(uuid)
    assert c.kvm.get(uuid=uuid)["state"] == "paused"
    c.kvm.resume(uuid)
    assert c.kvm.get(uuid=uuid)["state"] == "running"
    c.kvm.create_image("/images/cl.raw", "4M", format="raw")
    c.kvm.attach_disk(uuid, {"url": "/images/cl.raw"})
    assert wait_text(console, "GUEST-DISK vdb", 60), console.read_text()[-1500:]
    c.kvm.portforward_add(uuid, 9191, 8080)
    assert c.nft.forward_list()[0]["owner"] == f"vm:{uuid}"
    c.kvm.portforward_remove(uuid, 9191, 8080)
    c.kvm.destroy(uuid)
    assert c.kvm.list() == []
    assert wait_until(lambda: seen(env, ev.id, uuid, "stopped"), 10)
    assert_clean(env, uuid)
    assert code_of(c.sync, "kvm.destroy", {"uuid": uuid}) == 404
    c.job.kill(ev.id)
    (env.root / "images/cl.raw").unlink()


def test_async_client_kvm_manager(env: Env) -> None:
    from core0_client import AsyncClient

    async def main() -> str:
        async with AsyncClient(unix_socket_path=env.node.socket, timeout=120) as c:
            a = env.guest_args("avm", nics=[])
            uuid = await c.kvm.create(a.pop("name"), **a)
            assert [i["uuid"] for i in await c.kvm.list()] == [uuid]
            got = await c.kvm.get(name="avm")
            assert got["state"] == "running"
            assert await asyncio.to_thread(wait_text, Path(got["console"]), MARKER, 120)
            await c.kvm.reset(uuid)
            await c.kvm.destroy(uuid)
            assert await c.kvm.list() == []
            return str(uuid)

    uuid = asyncio.run(main())
    assert wait_until(lambda: not (env.vdir / uuid).exists(), 30)


def _ctl(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    pp = os.pathsep.join([str(ROOT / "client"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "core0_client.cli", "--socket",
                           env.node.socket, "--timeout", "120", *args],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": pp})


def test_core0ctl_kvm(env: Env) -> None:
    r = _ctl(env, "kvm", "create", "ctlvm", "--disk", "/images/base.qcow2:overlay",
             "--kernel", "/images/vmlinuz", "--initrd", "/images/initrd.cpio",
             "--cmdline", "console=ttyS0 panic=-1", "--memory", "256", "--nic", "default",
             "--forward", "9292:8080", "--vm-tag", "ctl", "cpu=1")
    assert r.returncode == 0, r.stderr
    uuid = r.stdout.strip().strip('"')
    assert uuidlib.UUID(uuid)
    c = env.core0()
    vm = c.kvm.get(uuid=uuid)
    assert vm["params"]["cmdline"] == "console=ttyS0 panic=-1" and vm["tags"] == ["ctl"]
    assert vm["params"]["media"] == [{"url": "/images/base.qcow2", "overlay": True}]
    assert c.nft.forward_list()[0]["src"].startswith("9292")

    r = _ctl(env, "kvm", "list")
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()
    assert head.split() == ["UUID", "NAME", "STATE", "IP", "VNC", "TAGS"]
    assert row.split() == [uuid, "ctlvm", "running", vm["default_ip"], "-", "ctl"]
    r = _ctl(env, "kvm", "get", "ctlvm")
    assert r.returncode == 0 and f'"uuid": "{uuid}"' in r.stdout, r.stderr

    # a bad argument is the node's 400: exit status 2; an unknown VM: 404, status 1
    assert _ctl(env, "kvm", "create", "bad", "--disk", "/../etc/shadow").returncode == 2
    assert _ctl(env, "kvm", "pause", "nosuchvm").returncode == 1

    r = _ctl(env, "kvm", "destroy", "ctlvm")
    assert r.returncode == 0, r.stderr
    r = _ctl(env, "kvm", "list", "--json")
    assert r.returncode == 0 and json.loads(json.loads(r.stdout)["data"]) == [], r.stdout
    assert_clean(env, uuid)
