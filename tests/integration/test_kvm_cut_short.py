"""kvm commands killed while libvirt (or qemu-img) works: the node is left as it was, or
with the step done whole, its records saying so.

The node holds the command in libvirt's thread (CORE0_TEST_VM_HOLD, tests/kvm_hostile_env.py)
and the job is killed there (or the dispatcher killed -9).

- ``kvm.attach_disk`` right after the guest's pause (VM ``cut``) or right before libvirt plugs
  the disk (VM ``cut2``). Before, the kill was answered at once while libvirt went on: killed
  in the pause, the guest stayed paused; killed before the plug, the disk went in without the
  check that qemu opened only the files core0 resolved, so an image path swapped for a
  symlink at that moment handed a host file to the guest. Now the pause is undone, and the
  plug runs to its end with its check (core0/virt/hotplug.py); a guest that keeps a disk that
  failed the check is destroyed.
- ``kvm.destroy``, ``pause``, ``limit_disk_io`` (and ``reboot``, ``reset``, ``resume``: the
  same door, core0/virt/access.py ``VM.act``) right after libvirt's call: too late, the job
  answers with libvirt's outcome (before: KILLED, the change made after it; a declared VM
  destroyed kept its declaration, so it came back at the next start).
- ``kvm.detach_disk``, ``kvm.remove_nic`` right after libvirt's request: the job answers
  once the device left (and the segment whose last port the nic was is gone).
- ``kvm.shutdown`` right after the guest was asked: KILLED, the declaration removed.
- the dispatcher killed -9 in a destroy and in a ``kvm.create-image``: the VM stays gone, no
  file under the image's name.
- ``kvm.prepare_migration_target`` once its record is written: nothing left, the retry works.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import code_of, wait_until
from kvm_hostile_env import Env, _img, _lv, hostile_node
from virt_fixtures import MARKER, guest_files, qemu_files, wait_text

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
                    act: Callable[[], None] | None = None,
                    command: str = "kvm.attach_disk") -> Any:
    """``command`` (kvm.attach_disk) ``args`` by the operator, killed while the node holds
    it (``act`` done in the hold too); its result."""
    hold = env.base / "hold"
    job = env.op.raw(command, args)
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


# ---------------------------------------------------------------- acting commands, images


def _fw(env: Env, name: str, **kw: Any) -> str:
    """A firmware-only VM of the operator's (``kw``: more kvm.create arguments)."""
    _img("-f", "raw", str(env.root / f"images/{name}.raw"), "1M")
    return str(env.op.json("kvm.create", {"name": name, "memory": 32, "media": [
        {"url": f"/images/{name}.raw", "format": "raw"}], **kw}))


def _declared(env: Env, name: str) -> bool:
    return any(json.loads(p.read_text()).get("name") == name
               for p in (env.base / "persist" / "vms").glob("*.json"))


def _forwards(env: Env, uuid: str) -> list[Any]:
    return [f for f in env.admin.json("nft.forward_list") if f["owner"] == f"vm:{uuid}"]


def _dispatcher(env: Env) -> int:
    import psutil

    [pid] = [p.pid for p in psutil.Process(env.node.pid).children(recursive=True)
             if "dispatcher" in " ".join(p.cmdline())]
    return pid


@contextlib.contextmanager
def _released(env: Env) -> Iterator[None]:
    """The node's holds pass at once meanwhile."""
    hold = env.base / "hold"
    (hold / "go").touch()
    try:
        yield
    finally:
        for f in ("go", "held"):
            with contextlib.suppress(FileNotFoundError):
                (hold / f).unlink()


def test_destroy_killed_in_libvirt(env: Env) -> None:
    """A declared VM's kvm.destroy killed while libvirt destroys it: too late, SUCCESS once
    the VM is gone with its forward, directory and declaration. (Before: KILLED at once;
    libvirt destroyed the VM after, its declaration stayed — the VM back at the next start —
    and a retry, 404, could not remove it.)"""
    uuid = _fw(env, "cs-d", persistent=True, nics=[{"type": "default"}],
               port={"18301": 80})
    try:
        assert _declared(env, "cs-d") and _forwards(env, uuid)
        res = _killed_in_hold(env, {"uuid": uuid}, command="kvm.destroy")
        assert res.state.value == "SUCCESS", res
        assert _state(env, "cs-d")[0] == -1
        assert not _declared(env, "cs-d")
        assert not _forwards(env, uuid) and not (env.vdir / uuid).exists()
        assert code_of(env.op.sync, "kvm.destroy", {"uuid": uuid}) == 404
    finally:
        with contextlib.suppress(Exception), _released(env):
            env.admin.sync("kvm.destroy", {"uuid": uuid})


def test_dispatcher_killed_in_destroy_and_create_image(env: Env) -> None:
    """The dispatcher killed -9 right after libvirt destroyed a declared VM, and while a
    kvm.create-image writes: both answered 503 (interrupted); the VM stays gone (its
    declaration went first; before, it stayed and the next dispatcher made the VM again),
    and no file is under the image's name (linked in only once written; before, an empty
    one stayed and the same create-image again was a 409)."""
    uuid = _fw(env, "cs-d9", persistent=True)
    hold, out = env.base / "hold", env.root / "images" / "cs-img.qcow2"
    try:
        jobs = []
        for command, args in (("kvm.destroy", {"uuid": uuid}), (
                "kvm.create-image", {"file_name": "/images/cs-img.qcow2", "size": "1G"})):
            jobs.append(env.op.raw(command, args))
            assert wait_until(lambda: (hold / "held").exists(), 60)
            (hold / "held").unlink()
        os.kill(_dispatcher(env), signal.SIGKILL)
        assert not _declared(env, "cs-d9")
        assert not out.exists()
        for job in jobs:
            res = job.get(60)
            assert (res.state.value, res.code) == ("ERROR", 503), res
        with _released(env):
            env.op.sync("kvm.create-image", {"file_name": "/images/cs-img.qcow2",
                                             "size": "1G"})
        assert out.stat().st_size > 0
        env.op.json("kvm.list")  # (the next dispatcher has restored its declarations)
        assert not wait_until(lambda: _state(env, "cs-d9")[0] != -1, 2), "the VM came back"
    finally:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        with contextlib.suppress(Exception), _released(env):
            env.admin.sync("kvm.destroy", {"uuid": uuid})


def test_shutdown_killed_in_libvirt(env: Env) -> None:
    """A declared VM's kvm.shutdown killed while libvirt asks the guest: KILLED once asked,
    the declaration removed (before, it stayed: a guest that then powered off came back at
    the next start, and a retry, 404, could not undeclare it)."""
    uuid = _fw(env, "cs-s", persistent=True)
    try:
        res = _killed_in_hold(env, {"uuid": uuid}, command="kvm.shutdown")
        assert res.state.value == "KILLED", res
        assert not _declared(env, "cs-s")
    finally:
        with contextlib.suppress(Exception), _released(env):
            env.admin.sync("kvm.destroy", {"uuid": uuid})  # (no OS: it ignores ACPI)


def test_pause_and_limit_killed_in_libvirt(env: Env) -> None:
    """kvm.pause and kvm.limit_disk_io killed while libvirt acts: too late, SUCCESS with the
    change made (before: KILLED at once, the guest paused / the limit set after it)."""
    import libvirt

    uuid = _fw(env, "cs-p")
    try:
        res = _killed_in_hold(env, {"uuid": uuid}, command="kvm.pause")
        assert res.state.value == "SUCCESS", res
        assert _state(env, "cs-p")[0] == libvirt.VIR_DOMAIN_PAUSED
        env.op.sync("kvm.resume", {"uuid": uuid})
        res = _killed_in_hold(env, {"uuid": uuid, "media": {"url": "/images/cs-p.raw"},
                                    "totalbytessecset": True, "totalbytessec": 1 << 20},
                              command="kvm.limit_disk_io")
        assert res.state.value == "SUCCESS", res
        with _lv(env) as conn:
            tune = conn.lookupByUUIDString(uuid).blockIoTune("vda", 0)
        assert tune["total_bytes_sec"] == 1 << 20
    finally:
        with contextlib.suppress(Exception), _released(env):
            env.admin.sync("kvm.destroy", {"uuid": uuid})


def test_detach_disk_killed_in_libvirt(env: Env) -> None:
    """kvm.detach_disk killed right after libvirt's request (a scsi disk: it leaves without
    the guest's help): too late, SUCCESS once the disk left (before: KILLED at once, the disk
    left after it, and kvm.remove_nic's vlan/vxlan segment stayed behind its nic)."""
    uuid = _fw(env, "cs-x")
    _img("-f", "raw", str(env.root / "images/cs-x-b.raw"), "1M")
    media = {"url": "/images/cs-x-b.raw", "format": "raw", "bus": "scsi"}
    try:
        env.op.sync("kvm.attach_disk", {"uuid": uuid, "media": media})
        assert "cs-x-b.raw" in _state(env, "cs-x")[1]
        res = _killed_in_hold(env, {"uuid": uuid, "media": media},
                              command="kvm.detach_disk")
        assert res.state.value == "SUCCESS", res
        assert "cs-x-b.raw" not in _state(env, "cs-x")[1]
    finally:
        with contextlib.suppress(Exception), _released(env):
            env.admin.sync("kvm.destroy", {"uuid": uuid})


def _guest_on_vxlan(env: Env, name: str, mac: str, vni: str) -> str:
    """The operator's busybox guest ``name`` with one nic ``mac`` on vxlan segment ``vni``,
    booted (its kernel lets hot-unplugged nics go) → its uuid."""
    shutil.copy2(guest_files()[1], env.root / "images" / "initrd.cpio")
    uuid = str(env.op.json("kvm.create", {
        "name": name, "memory": 128, "kernel": "/images/vmlinuz",
        "initrd": "/images/initrd.cpio", "cmdline": "console=ttyS0 panic=-1",
        "nics": [{"type": "vxlan", "id": vni, "hwaddr": mac}]}))
    try:
        assert wait_text(env.vdir / uuid / "console.log", MARKER, 120)
    except BaseException:
        with contextlib.suppress(Exception):
            env.admin.sync("kvm.destroy", {"uuid": uuid})
        raise
    return uuid


def test_remove_nic_killed_in_libvirt(env: Env) -> None:
    """kvm.remove_nic of a vxlan nic killed right after libvirt's request: the job answers
    once the guest let the nic go, and the segment whose last port it was is gone (before:
    KILLED at once, the nic left after it and the segment stayed)."""
    mac = "52:54:00:cc:00:05"
    uuid = _guest_on_vxlan(env, "cs-n", mac, "5")
    try:
        assert f"<mac address='{mac}'/>" in _state(env, "cs-n")[1]
        assert env.node.ns.run("ip", "link", "show", "c0vxb5", check=False).returncode == 0
        res = _killed_in_hold(env, {"uuid": uuid, "type": "vxlan", "hwaddr": mac},
                              command="kvm.remove_nic")
        assert res.state.value == "SUCCESS", res
        assert f"<mac address='{mac}'/>" not in _state(env, "cs-n")[1]
        assert env.node.ns.run("ip", "link", "show", "c0vxb5", check=False).returncode != 0
    finally:
        with contextlib.suppress(Exception), _released(env):
            env.admin.sync("kvm.destroy", {"uuid": uuid})


def test_a_nic_let_go_after_the_wait_takes_its_segment(env: Env) -> None:
    """A guest that lets a vxlan nic go only after kvm.remove_nic's 3 s wait (it is paused
    meanwhile): the job answers SUCCESS with the nic still there, and once the guest runs
    again and lets it go, the segment left without ports is removed (libvirt's
    device-removed event, core0/virt/hotplug.py). Before, it stayed until the VM stopped."""
    mac, seg = "52:54:00:cc:00:06", "c0vxb6"

    def segment() -> bool:
        return env.node.ns.run("ip", "link", "show", seg, check=False).returncode == 0

    uuid = _guest_on_vxlan(env, "late-n", mac, "6")
    try:
        assert segment()
        env.op.sync("kvm.pause", {"uuid": uuid})
        t = time.monotonic()
        env.op.sync("kvm.remove_nic", {"uuid": uuid, "type": "vxlan", "hwaddr": mac})
        assert time.monotonic() - t >= 2.5  # it waited for the guest
        assert f"<mac address='{mac}'/>" in _state(env, "late-n")[1] and segment()
        env.op.sync("kvm.resume", {"uuid": uuid})
        assert wait_until(lambda: f"<mac address='{mac}'/>" not in _state(env, "late-n")[1],
                          60)
        assert wait_until(lambda: not segment(), 10), env.node.log_text()[-2000:]
    finally:
        with contextlib.suppress(Exception):
            env.admin.sync("kvm.destroy", {"uuid": uuid})


PREPARED = "0c5e0000-0000-4000-8000-000000000001"


def test_prepare_migration_target_killed(env: Env) -> None:
    """kvm.prepare_migration_target killed once its record is written: KILLED, nothing
    prepared left (record, lease, forward), and the same preparation then works. (Before,
    the record stayed, expired, until the next dispatcher start: the retry was a 409.)"""
    args = {"uuid": PREPARED, "nics": [{"type": "default", "hwaddr": "00:28:06:82:01:01"}],
            "port": {"18302": 80}}
    try:
        res = _killed_in_hold(env, args, command="kvm.prepare_migration_target")
        assert res.state.value == "KILLED", res
        assert not (env.vdir / PREPARED).exists() and not _forwards(env, PREPARED)
        hosts = env.admin.json("bridge.info", {"name": "kvm0"})["hosts"]
        assert "00:28:06:82:01:01" not in hosts, hosts
        with _released(env):
            got = env.op.json("kvm.prepare_migration_target", args)
        assert got["mac"] == "00:28:06:82:01:01" and _forwards(env, PREPARED)
    finally:
        with contextlib.suppress(Exception), _released(env):
            env.op.sync("kvm.destroy", {"uuid": PREPARED})


def test_a_changed_declaration_killed_in_the_old_vm_s_destroy(env: Env) -> None:
    """A persistent kvm.create with a changed spec, killed while libvirt destroys the VM it
    replaces: no answer until that destroy and its clean-up are done; then KILLED, the old VM
    gone with its forward and directory, its declaration (the old spec) kept; the same create
    then makes the new VM. (Before: KILLED at once while libvirt still destroyed the VM.)"""
    args: dict[str, Any] = {"name": "cs-r", "memory": 32, "persistent": True,
                            "nics": [{"type": "default"}], "port": {"18303": 80}}
    uuid = _fw(env, "cs-r", **{k: v for k, v in args.items() if k not in ("name", "memory")})
    hold = env.base / "hold"
    changed = {**args, "memory": 48, "media": [{"url": "/images/cs-r.raw", "format": "raw"}]}
    try:
        assert _forwards(env, uuid)
        job = env.op.raw("kvm.create", changed)
        try:
            assert wait_until(lambda: (hold / "held").exists(), 60)
            (hold / "held").unlink()
            env.op.json("job.kill", {"id": job.id})  # libvirt's thread is held meanwhile
            with pytest.raises(TimeoutError):
                job.get(0.5)
            (hold / "go").touch()
            res = job.get(60)
        finally:
            with contextlib.suppress(FileNotFoundError):
                (hold / "go").unlink()
        assert res.state.value == "KILLED", res
        assert _state(env, "cs-r")[0] == -1
        assert not _forwards(env, uuid) and not (env.vdir / uuid).exists()
        assert _declared(env, "cs-r")
        with _released(env):
            new = str(env.op.json("kvm.create", changed))
        assert "<memory unit='KiB'>49152</memory>" in _state(env, "cs-r")[1]
        assert _forwards(env, new)
    finally:
        with contextlib.suppress(Exception), _released(env):
            for vm in env.admin.json("kvm.list"):
                if vm["name"] == "cs-r":
                    env.admin.sync("kvm.destroy", {"uuid": vm["uuid"]})
