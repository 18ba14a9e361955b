"""A ``kvm.attach_disk`` killed while libvirt works leaves the guest as it was, or the disk
plugged and checked.

The node holds the attach in libvirt's thread (CORE0_TEST_VM_HOLD, tests/kvm_hostile_env.py)
right after the guest's pause (VM ``cut``) or right before libvirt plugs the disk (VM
``cut2``); the job is killed there. Before, the kill was answered at once while libvirt went
on: killed in the pause, the guest stayed paused; killed before the plug, the disk went in
without the check that qemu opened only the files core0 resolved, so an image path swapped
for a symlink at that moment handed a host file to the guest. Now the pause is undone, and
the plug runs to its end with its check (core0/virt/hotplug.py); a guest that keeps a disk
that failed the check is destroyed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_until
from kvm_hostile_env import Env, _img, _lv, hostile_node
from virt_fixtures import qemu_files

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with hostile_node() as e:
        yield e


def _state(env: Env, name: str) -> tuple[int, str]:
    """(libvirt's state of domain ``name``, its live XML); (-1, "") when it is gone."""
    import libvirt

    with _lv(env) as conn:
        try:
            dom = conn.lookupByName(name)
            return dom.state()[0], dom.XMLDesc(0)
        except libvirt.libvirtError:
            return -1, ""


def _killed_in_hold(env: Env, args: dict[str, Any],
                    act: Callable[[], None] | None = None) -> Any:
    """kvm.attach_disk ``args`` by the operator, killed while the node holds it (``act``
    done in the hold too); its result."""
    hold = env.base / "hold"
    job = env.op.raw("kvm.attach_disk", args)
    try:
        assert wait_until(lambda: (hold / "held").exists(), 60)
        (hold / "held").unlink()
        if act is not None:
            act()
        env.op.json("job.kill", {"id": job.id})  # libvirt's thread is held meanwhile
        time.sleep(0.5)
        (hold / "go").touch()
        return job.get(60)
    finally:
        with contextlib.suppress(FileNotFoundError):
            (hold / "go").unlink()


def _vm(env: Env, name: str) -> str:
    _img("-f", "raw", str(env.root / f"images/{name}.raw"), "1M")
    return str(env.op.json("kvm.create", {"name": name, "memory": 32, "media": [
        {"url": f"/images/{name}.raw", "format": "raw"}]}))


def test_attach_disk_killed_in_the_pause(env: Env) -> None:
    """KILLED, the guest running again, no new disk; the same attach then works."""
    import libvirt

    uuid = _vm(env, "cut")
    _img("-f", "raw", str(env.root / "images/cut-b.raw"), "1M")
    hold = env.base / "hold"
    try:
        args = {"uuid": uuid, "media": {"url": "/images/cut-b.raw", "format": "raw"}}
        res = _killed_in_hold(env, args)
        assert res.state.value == "KILLED", res
        assert wait_until(lambda: _state(env, "cut")[0] == libvirt.VIR_DOMAIN_RUNNING, 10), \
            "the guest was left paused"
        assert "cut-b.raw" not in _state(env, "cut")[1]
        (hold / "go").touch()  # the same attach, not killed: the hold passes at once
        try:
            env.op.sync("kvm.attach_disk", args)
        finally:
            (hold / "go").unlink()
            with contextlib.suppress(FileNotFoundError):
                (hold / "held").unlink()
        state, xml = _state(env, "cut")
        assert state == libvirt.VIR_DOMAIN_RUNNING and "cut-b.raw" in xml
    finally:
        with contextlib.suppress(Exception):
            env.admin.sync("kvm.destroy", {"uuid": uuid})


def test_attach_disk_killed_at_the_plug(env: Env) -> None:
    """A kill just before libvirt plugs the disk is too late: the disk goes in, checked, the
    guest running (SUCCESS). With the image path swapped for a symlink to a host file in that
    moment, the check still runs: 409, and the VM, whose firmware-only guest keeps the disk,
    is destroyed — no qemu holds the host file. (Before: KILLED, the host file plugged in.)"""
    import libvirt

    uuid = _vm(env, "cut2")
    img = env.root / "images"
    _img("-f", "raw", str(img / "cut2-b.raw"), "1M")
    _img("-f", "raw", str(img / "cut2-c.raw"), "1M")
    try:
        res = _killed_in_hold(env, {"uuid": uuid, "media": {"url": "/images/cut2-b.raw",
                                                            "format": "raw"}})
        assert res.state.value == "SUCCESS", res
        state, xml = _state(env, "cut2")
        assert state == libvirt.VIR_DOMAIN_RUNNING and "cut2-b.raw" in xml

        def swap() -> None:
            os.symlink(env.secret, img / ".l")
            os.replace(img / ".l", img / "cut2-c.raw")

        res = _killed_in_hold(env, {"uuid": uuid, "media": {"url": "/images/cut2-c.raw",
                                                            "format": "raw"}}, swap)
        assert (res.state.value, res.code) == ("ERROR", 409), res
        assert "the VM was destroyed" in res.data, res.data
        assert wait_until(lambda: _state(env, "cut2")[0] == -1
                          or str(env.secret) not in qemu_files(uuid), 10)
        assert str(env.secret) not in qemu_files(uuid)
    finally:
        with contextlib.suppress(Exception):
            env.admin.sync("kvm.destroy", {"uuid": uuid})
