"""kvm.* end to end: a real libvirtd + qemu (TCG here), 0-core's own client, a busybox guest.

Topology: a "host" network namespace holds the core0 node under test and a private
libvirtd/virtlogd (tests/virt_fixtures.py), so kvm0, its dnsmasq, the nft table and the VMs'
taps all live there. Media, kernel and initramfs are files under the node's filesystem root
(a temp dir). Run under ``flock /tmp/core0-vm.lock`` (the VM tests share the machine's cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
from conftest import code_of, wait_until
from kvm_env import METRICS_PORT, Env, assert_clean, dnat_ports, env, events_of, seen, vm_rules
from prometheus_client.parser import text_string_to_metric_families
from virt_fixtures import MARKER, PAGE, Libvirtd, libvirtd_peer, wait_text

__all__ = ["env"]  # the fixture

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]
#: this module checks the KVM probe (tests/kvm_env.py: the others run TCG directly)
KVM_PROBE = True


def _reader(env: Env, job: str, out: list[dict[str, Any]]) -> threading.Thread:
    """A client of its own following job ``job``'s output stream (its events) until it ends."""

    def follow(level: int, message: str, _flags: int) -> None:
        if level == 20:
            with contextlib.suppress(ValueError):
                out.append(json.loads(message))

    def run() -> None:
        c = env.core0()
        try:
            c.response_for(job).stream(follow, timeout=1200)
        finally:
            c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def stopped_detail(env: Env, job: str, uuid: str) -> str | None:
    """The detail of VM ``uuid``'s ``stopped`` event in events job ``job`` (None: none yet)."""
    got = [e["detail"] for e in events_of(env, job)
           if e["uuid"] == uuid and e["event"] == "stopped"]
    return got[-1] if got else None


def qemu_pid(uuid: str) -> int | None:
    """The pid of the qemu process running VM ``uuid`` (its ``-uuid`` argument, from /proc)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and os.path.basename(cmd[0]).startswith("qemu-system") and uuid in cmd:
            return int(p.pid)
    return None


def dispatchers(env: Env) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(env.node.pid).children(recursive=True)
            if "dispatcher" in " ".join(p.cmdline())]


def test_lifecycle_with_0core_client(env: Env) -> None:
    c0 = env.client()
    c = env.core0()
    ev = c.raw("kvm.events", {})
    assert wait_until(lambda: any(e["event"] == "subscribed" for e in events_of(env, ev.id)), 30)
    # two clients follow the events job's stream at once
    got1: list[dict[str, Any]] = []
    got2: list[dict[str, Any]] = []
    readers = [_reader(env, ev.id, got1), _reader(env, ev.id, got2)]

    # create (0-core's create has no kernel/initrd arguments: the raw call carries them)
    uuid = c0.json("kvm.create", env.guest_args("vm1", port={"8080": 8080}, tags=["t1"]))
    assert isinstance(uuid, str) and uuidlib.UUID(uuid)
    item = c0.kvm.list()
    assert [i["uuid"] for i in item] == [uuid]
    vm = item[0]
    assert vm["name"] == "vm1" and vm["state"] == "running" and vm["tags"] == ["t1"]
    console = Path(vm["console"])
    assert wait_text(console, MARKER, 120), console.read_text(errors="replace")[-2000:]
    assert wait_text(console, "GUEST-DISK vda", 30)
    overlay = env.vdir / uuid / "disk0.qcow2"
    assert overlay.exists()
    assert wait_until(lambda: seen(env, ev.id, uuid, "started"), 10)

    got = c.json("kvm.get", {"name": "vm1"})
    assert got["uuid"] == uuid and got["default_ip"].startswith("172.19.")
    info = c0.kvm.info(uuid)
    assert len(info["vcpu"]) == 1 and info["block"][0]["name"] == "vda"
    assert info["net"] and info["net"][0]["name"] == got["ifctargets"][0]
    # 0-core's kvm.monitor: the VM's statistics in the aggregator under 0-core's keys
    c.sync("kvm.monitor", {})
    stats = c.json("aggregator.query", {"tags": {"type": "virt"}})
    tap = got["ifctargets"][0]  # c0t + the MAC's digits: the id is vm1.<mac>
    mac = ":".join(tap[3 + i:5 + i] for i in range(0, 12, 2))
    assert {"kvm.memory.max/vm1", "kvm.cpu.time/vm1", "kvm.vcpu.time/vm1",
            "kvm.vcpu.state/vm1", "kvm.disk.rdbytes/vm1.vda",
            "kvm.disk.iops.write/vm1.vda"} <= set(stats), sorted(stats)
    assert stats["kvm.memory.max/vm1"]["last_value"] > 0
    net = stats[f"kvm.net.rxbytes/vm1.{mac}"]
    assert {"Key": "name", "Value": tap} in net["tags"] and net["op"] == "D", net

    # pause / resume
    c0.kvm.pause(uuid)
    assert c.json("kvm.get", {"uuid": uuid})["state"] == "paused"
    c0.kvm.resume(uuid)
    assert c.json("kvm.get", {"uuid": uuid})["state"] == "running"
    assert code_of(c.sync, "kvm.resume", {"uuid": uuid}) == 409
    assert wait_until(lambda: seen(env, ev.id, uuid, "suspended")
                      and seen(env, ev.id, uuid, "resumed"), 10)

    # a disk, hot-plugged, seen from inside
    c.sync("kvm.create-image", {"file_name": "/images/extra.raw", "format": "raw",
                                "size": "8M"})
    c0.kvm.attach_disk(uuid, {"url": "/images/extra.raw"})
    assert wait_text(console, "GUEST-DISK vdb", 60), console.read_text()[-1500:]

    # the port forward answers (host-originated traffic to the node's own address)
    assert wait_text(console, "GUEST-IP " + got["default_ip"], 90), console.read_text()[-1500:]
    fwd = c.nft.forward_list()
    assert fwd == [{"owner": f"vm:{uuid}", "src": "8080|tcp", "ip": got["default_ip"],
                    "port": 8080}]
    live = vm_rules(env, uuid)  # the kernel's live ruleset carries it, tagged with the owner
    assert live and all(dnat_ports(r) == [8080] for r in live), live

    def answers() -> bool:
        r = env.ns.run("curl", "-s", "-m", "3", "http://172.19.0.1:8080/", check=False)
        return PAGE in r.stdout

    assert wait_until(answers, 60)

    # ACPI shutdown: the guest powers off by itself; cleanup follows the stopped event
    # (the console is read through a descriptor opened now: the cleanup removes the file)
    with console.open("rb") as fh:
        text = bytearray()

        def powered_off() -> bool:
            text.extend(fh.read())
            return b"GUEST-POWEROFF" in text

        c0.kvm.shutdown(uuid)
        assert wait_until(powered_off, 60), text[-1500:]
    assert wait_until(lambda: c0.kvm.list() == [], 60)
    assert wait_until(lambda: stopped_detail(env, ev.id, uuid) is not None, 10)
    assert stopped_detail(env, ev.id, uuid) == "shutdown"  # the guest's own poweroff
    assert wait_until(lambda: not (env.vdir / uuid).exists(), 30)
    assert_clean(env, uuid, ports=(8080,))

    # destroy of a second VM
    uuid2 = c0.json("kvm.create", env.guest_args("vm2"))
    assert wait_until(lambda: seen(env, ev.id, uuid2, "started"), 30)
    c0.kvm.destroy(uuid2)
    assert c0.kvm.list() == []
    assert_clean(env, uuid2)
    assert wait_until(lambda: seen(env, ev.id, uuid2, "stopped"), 10)
    assert stopped_detail(env, ev.id, uuid2) == "destroyed"
    assert code_of(c.sync, "kvm.destroy", {"uuid": uuid2}) == 404
    c.job.kill(ev.id)
    for t in readers:
        t.join(60)
        assert not t.is_alive()

    def transitions(evs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return [(e["uuid"], e["event"], e["detail"]) for e in evs if e["uuid"] in (uuid, uuid2)]

    logged = transitions(events_of(env, ev.id))
    assert (uuid, "stopped", "shutdown") in logged and (uuid2, "stopped", "destroyed") in logged
    assert transitions(got1) == logged and transitions(got2) == logged


def test_dispatcher_kill9_keeps_vms(env: Env) -> None:
    import signal

    c = env.core0()
    uuids = [c.json("kvm.create", env.guest_args(f"k{i}")) for i in range(3)]
    for u in uuids:  # each guest is up before the dispatcher dies
        console = Path(c.json("kvm.get", {"uuid": u})["console"])
        assert wait_text(console, MARKER, 240), console.read_text(errors="replace")[-1500:]
    before = {i["uuid"]: i["name"] for i in c.json("kvm.list")}
    assert set(before) == set(uuids)
    pids = {u: qemu_pid(u) for u in uuids}
    assert all(pids.values()), pids
    disp = dispatchers(env)
    assert len(disp) == 1
    os.kill(disp[0], signal.SIGKILL)

    def relisted() -> bool:
        try:
            c2 = env.core0()
            try:
                return {i["uuid"]: i["name"] for i in c2.json("kvm.list")} == before
            finally:
                c2.close()
        except Exception:
            return False

    assert wait_until(relisted, 60)
    now = dispatchers(env)
    assert len(now) == 1 and now[0] != disp[0]
    c = env.core0()
    assert all(i["state"] == "running" for i in c.json("kvm.list"))
    assert {u: qemu_pid(u) for u in uuids} == pids  # the very same qemu processes
    for u in uuids:
        c.sync("kvm.destroy", {"uuid": u})
    assert c.json("kvm.list") == []
    for u in uuids:
        assert_clean(env, u)


def test_libvirtd_restart_reconnects(env: Env) -> None:
    c = env.core0()
    ev = c.raw("kvm.events", {})
    assert wait_until(lambda: any(e["event"] == "subscribed" for e in events_of(env, ev.id)), 30)
    uuid = c.json("kvm.create", env.guest_args("rv"))
    pid = qemu_pid(uuid)
    assert pid
    env.lv.kill_libvirtd()
    assert wait_until(lambda: any(e["event"] == "connection" and e["detail"] == "lost"
                                  for e in events_of(env, ev.id)), 30)
    env.lv.start_libvirtd()
    assert wait_until(lambda: any(e["event"] == "connection" and e["detail"] == "reconnected"
                                  for e in events_of(env, ev.id)), 60)
    assert [(i["uuid"], i["state"]) for i in c.json("kvm.list")] == [(uuid, "running")]
    assert c.json("kvm.get", {"uuid": uuid})["state"] == "running"
    assert qemu_pid(uuid) == pid  # the guest lived through it
    c.sync("kvm.destroy", {"uuid": uuid})
    assert wait_until(lambda: seen(env, ev.id, uuid, "stopped"), 10)
    assert_clean(env, uuid)
    with contextlib.suppress(Exception):
        c.job.kill(ev.id)


# ---------------------------------------------------------------- hostile specs

EVIL = "x'\"<>&]]></core0:vm><devices><disk type='file'><source file='/etc/shadow'/></disk>"


def _bad(env: Env, **over: Any) -> int:
    args = env.guest_args("bad")
    args.update(over)
    return code_of(env.core0().sync, "kvm.create", args)


def test_hostile_specs_refused(env: Env) -> None:
    (env.root / "link.qcow2").symlink_to("/etc/passwd")
    for name in ("a<b", "../x", "-x", ".x", "a b", "a/b", "x" * 65, "", "a\nb", "vm'1"):
        assert _bad(env, name=name) == 400, name
    for media in ([{"url": "../../etc/passwd"}], [{"url": "/images/../../etc/passwd"}],
                  [{"path": "/images/base.qcow2", "url": "/images/base.qcow2"}],
                  [{"url": "/images/base.qcow2\x00"}], [{"url": "/images/base.qcow2",
                                                         "type": "floppy"}],
                  [{"url": "/images/base.qcow2", "junk": 1}]):
        assert _bad(env, media=media) == 400, media
    assert _bad(env, media=[{"url": "/link.qcow2"}]) in (400, 404)  # resolved inside root
    assert _bad(env, media=[{"url": "nbd://10.0.0.1/x"}]) == 412
    assert _bad(env, kernel="../../boot/vmlinuz") == 400
    for cpu in (0, -1, 65, 10**9, "2", True, 1.5):
        assert _bad(env, cpu=cpu) == 400, cpu
    for mem in (0, 15, 1 << 22 + 1, 4 << 20, "512", 1e12):
        assert _bad(env, memory=mem) == 400, mem
    assert _bad(env, nics=[{"type": "bridge", "id": "br0'><x"}]) == 400
    assert _bad(env, nics=[{"type": "default", "hwaddr": "00:11:22:33:44:5g"}]) == 400
    assert _bad(env, nics=[{"type": "vxlan", "id": "0"}]) == 400
    assert _bad(env, nics=[{"type": "vlan", "id": "4095"}]) == 400
    assert _bad(env, nics=[{"type": "vxlan", "id": "7;x"}]) == 400
    assert _bad(env, port={"8080": 70000}) == 400
    assert _bad(env, port={"80'80": 80}) == 400
    assert _bad(env, flist="https://hub/x.flist") == 412
    assert _bad(env, surprise=1) == 400
    assert _bad(env, cmdline="a\x00b") == 400
    c = env.core0()
    assert code_of(c.sync, "kvm.destroy", {"uuid": "../../x"}) == 400
    assert code_of(c.sync, "kvm.create-image", {"file_name": "/../../tmp/x", "size": "1M"}) == 400
    assert code_of(c.sync, "kvm.create-image", {"file_name": "/images/x", "size": "1M; rm"}) == 400
    assert c.json("kvm.list") == []
    assert not any((env.vdir).glob("*-*-*-*-*"))


def test_xml_metacharacters_not_injected(env: Env) -> None:
    """Strings that may carry XML metacharacters (tags, cmdline, kernel/initrd/media file
    names, by url and by path, a hot-plugged disk) reach libvirt escaped: the live domain XML
    parses back to exactly the values given, nothing more. A bridge name is an ifname (400)."""
    import xml.etree.ElementTree as ET

    import libvirt

    meta = "'\"<>&]]>"
    images = env.root / "images"
    evil_file, evil_path, evil_hot = (images / f"d{meta}.qcow2", images / f"p{meta}.qcow2",
                                      images / f"h{meta}.qcow2")
    for f in (evil_file, evil_path, evil_hot):
        shutil.copy2(images / "base.qcow2", f)
    kernel, initrd = images / f"k{meta}.bin", images / f"i{meta}.cpio"
    shutil.copy2(images / "vmlinuz", kernel)
    shutil.copy2(images / "initrd.cpio", initrd)
    cmdline = "console=ttyS0 panic=-1 " + EVIL
    args = env.guest_args("xmlvm", tags=[EVIL, "<tag/>"], cmdline=cmdline,
                          kernel="/images/" + kernel.name, initrd="/images/" + initrd.name,
                          media=[{"url": "/images/" + evil_file.name},
                                 {"path": "/images/" + evil_path.name}])
    c = env.core0()
    uuid = c.json("kvm.create", args)
    try:
        c.sync("kvm.attach_disk", {"uuid": uuid, "media": {"path": "/images/" + evil_hot.name}})
        for bad in ("br0'><x", "br<0", "a&b", "br 0", "br/0", "x" * 16, "br0\"", ""):
            assert code_of(c.sync, "kvm.add_nic", {"uuid": uuid, "type": "bridge",
                                                   "id": bad}) == 400, bad
        conn = libvirt.open(env.lv.uri)
        try:
            xml = conn.lookupByUUIDString(uuid).XMLDesc(0)
        finally:
            conn.close()
        root = ET.fromstring(xml)
        assert root.findtext("os/cmdline") == cmdline
        assert [k.text for k in root.findall("os/kernel")] == [str(kernel)]
        assert [i.text for i in root.findall("os/initrd")] == [str(initrd)]
        disks = root.findall("devices/disk")
        sources = [d.find("source").get("file") for d in disks]  # type: ignore[union-attr]
        assert sources == [str(evil_file), str(evil_path), str(evil_hot)], sources
        assert len(root.findall("devices/interface")) == 1  # the default nic only
        assert c.json("kvm.get", {"uuid": uuid})["tags"] == [EVIL, "<tag/>"]
        # the KVM probe's outcome: here /dev/kvm cannot run a guest, so TCG
        assert root.get("type") == "qemu"
        _assert_probe_recorded(env)
    finally:
        c.sync("kvm.destroy", {"uuid": uuid})
    assert_clean(env, uuid)


def _assert_probe_recorded(env: Env) -> None:
    """probe.json holds the probe's decision (qemu) and why, the reason this host gives."""
    import libvirt

    from core0.virt import probe

    rec = json.loads((env.vdir / "probe.json").read_text())
    assert rec["type"] == "qemu", rec
    conn = libvirt.open(env.lv.uri)
    try:
        caps = conn.getCapabilities()
    finally:
        conn.close()
    kernel = probe.probe_kernel(str(env.root / "images/vmlinuz"))
    chosen, why = probe.decide("auto", caps, probe.kvm_device_ok(), kernel)
    if chosen is None:  # kvm offered and /dev/kvm answers: the probe boot said no
        assert kernel is not None
        why = probe.boot_reason(False, kernel, 15)
    assert rec["reason"] == why, rec


def test_devices_images_and_power(env: Env) -> None:
    c0 = env.client()
    c = env.core0()
    ev = c.raw("kvm.events", {})
    assert wait_until(lambda: any(e["event"] == "subscribed" for e in events_of(env, ev.id)), 30)
    uuid = c.json("kvm.create", env.guest_args("dev1"))
    try:
        _devices(env, c0, c, uuid)
        # kvm.shutdown with a timeout ended in the guest's own poweroff, not the fallback
        assert wait_until(lambda: stopped_detail(env, ev.id, uuid) is not None, 10)
        assert stopped_detail(env, ev.id, uuid) == "shutdown"
    finally:
        with contextlib.suppress(Exception):
            c.sync("kvm.destroy", {"uuid": uuid})
        with contextlib.suppress(Exception):
            c.job.kill(ev.id)


def test_shutdown_timeout_destroys_a_deaf_guest(env: Env) -> None:
    """A guest without ACPI (``acpi=off``: no power button) ignores kvm.shutdown's request:
    once the timeout is over the VM is destroyed (stopped event detail ``destroyed``)."""
    c = env.core0()
    ev = c.raw("kvm.events", {})
    assert wait_until(lambda: any(e["event"] == "subscribed" for e in events_of(env, ev.id)), 30)
    uuid = c.json("kvm.create", env.guest_args("deaf", nics=[],
                                               cmdline="console=ttyS0 panic=-1 acpi=off"))
    try:
        console = Path(c.json("kvm.get", {"uuid": uuid})["console"])
        assert wait_text(console, MARKER, 120), console.read_text(errors="replace")[-1500:]
        with console.open("rb") as fh:
            c.sync("kvm.shutdown", {"uuid": uuid, "timeout": 8})
            assert c.json("kvm.list") == []
            assert b"GUEST-POWEROFF" not in fh.read()
        assert wait_until(lambda: stopped_detail(env, ev.id, uuid) is not None, 10)
        assert stopped_detail(env, ev.id, uuid) == "destroyed"
        assert_clean(env, uuid)
    finally:
        with contextlib.suppress(Exception):
            c.sync("kvm.destroy", {"uuid": uuid})
        with contextlib.suppress(Exception):
            c.job.kill(ev.id)


def _devices(env: Env, c0: Any, c: Any, uuid: str) -> None:
    import libvirt

    console = Path(c.json("kvm.get", {"uuid": uuid})["console"])
    assert wait_text(console, MARKER, 120)

    # per-VM monitors on the node's Prometheus endpoint
    def vm_samples() -> dict[str, float]:
        text = env.ns.run("curl", "-sf", "-m", "10",
                          f"http://127.0.0.1:{METRICS_PORT}/metrics").stdout
        return {s.name: s.value for fam in text_string_to_metric_families(text)
                for s in fam.samples if s.labels.get("uuid") == uuid}

    assert wait_until(lambda: vm_samples().get("core0_vm_running") == 1.0, 30), vm_samples()
    got = vm_samples()
    assert got["core0_vm_cpu_seconds_total"] > 0 and got["core0_vm_vcpus"] >= 1
    assert got["core0_vm_memory_bytes"] >= 64 << 20

    # images: create, convert (qemu-img), then hot-plug / limit / unplug
    c.sync("kvm.create-image", {"file_name": "/images/d2.raw", "format": "raw", "size": "4M"})
    assert code_of(c.sync, "kvm.create-image", {"file_name": "/images/d2.raw",
                                                "size": "4M"}) == 409
    c.sync("kvm.convert-image", {"input_file": "/images/d2.raw",
                                 "output_file": "/images/d2.qcow2", "output_format": "qcow2"})
    out = subprocess.run(["qemu-img", "info", "--output=json", str(env.root / "images/d2.qcow2")],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["format"] == "qcow2"
    c0.kvm.attach_disk(uuid, {"url": "/images/d2.qcow2"})
    assert wait_text(console, "GUEST-DISK vdb", 60)
    assert code_of(c.sync, "kvm.attach_disk", {"uuid": uuid,
                                               "media": {"url": "/images/d2.qcow2"}}) == 409
    c0.kvm.limit_disk_io(uuid, {"url": "/images/d2.qcow2"}, totalbytessecset=True,
                         totalbytessec=1048576, readiopssecset=True, readiopssec=100)
    conn = libvirt.open(env.lv.uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        tune = dom.blockIoTune("vdb", 0)
        assert tune["total_bytes_sec"] == 1048576 and tune["read_iops_sec"] == 100
        c0.kvm.detach_disk(uuid, {"url": "/images/d2.qcow2"})
        assert wait_until(lambda: "d2.qcow2" not in dom.XMLDesc(0), 30)

        # a second nic, bridged (onto kvm0 itself), then removed by MAC
        c0.kvm.add_nic(uuid, "bridge", "kvm0", "52:54:00:aa:bb:cc")
        assert "52:54:00:aa:bb:cc" in dom.XMLDesc(0)
        c0.kvm.remove_nic(uuid, "bridge", None, "52:54:00:aa:bb:cc")
        assert wait_until(lambda: "52:54:00:aa:bb:cc" not in dom.XMLDesc(0), 30)
        # a vxlan nic: a port of the node's segment bridge for VNI 5, made on demand and
        # removed with its last port (core0/net/segments.py)
        c0.kvm.add_nic(uuid, "vxlan", "5", "52:54:00:aa:bb:cd")
        assert "c0vxb5" in dom.XMLDesc(0)
        assert "vxlan id 5" in env.ns.run("ip", "-d", "link", "show", "c0vx5").stdout
        c0.kvm.remove_nic(uuid, "vxlan", "5", None)
        assert wait_until(lambda: "52:54:00:aa:bb:cd" not in dom.XMLDesc(0), 30)
        assert wait_until(lambda: env.ns.run("ip", "link", "show", "c0vxb5",
                                             check=False).returncode != 0, 10)
    finally:
        conn.close()

    rates = c0.kvm.infops(uuid)
    assert set(rates) >= {"vcpu", "net", "block"} and rates["block"][0]["name"] == "vda"

    # reset (hard) and reboot (ACPI, libvirt's fake reboot): the guest boots again each time
    c0.kvm.reset(uuid)
    assert wait_until(lambda: console.read_text(errors="replace").count(MARKER) >= 2, 120)
    # ACPI is a request: a guest that just booted may not listen to its power button yet
    for _ in range(4):
        c0.kvm.reboot(uuid)
        if wait_until(lambda: console.read_text(errors="replace").count(MARKER) >= 3, 40):
            break
    assert console.read_text(errors="replace").count(MARKER) >= 3
    assert c.json("kvm.get", {"uuid": uuid})["state"] == "running"

    # portforward-add / -remove on a running VM
    c.sync("kvm.portforward-add", {"uuid": uuid, "host_port": "9090", "container_port": 8080})
    assert [f["src"] for f in c.nft.forward_list()] == ["9090|tcp"]
    assert code_of(c.sync, "kvm.portforward-remove", {"uuid": uuid, "host_port": "9191",
                                                      "container_port": 8080}) == 404
    c.sync("kvm.portforward-remove", {"uuid": uuid, "host_port": "9090",
                                      "container_port": 8080})
    assert c.nft.forward_list() == []
    assert vm_rules(env, uuid) == []  # gone from the kernel's ruleset too

    # shutdown with a timeout: the guest obeys; the call returns once it is gone
    c.sync("kvm.shutdown", {"uuid": uuid, "timeout": 60})
    assert c.json("kvm.list") == []
    assert_clean(env, uuid)


def test_migrate_between_two_libvirtd(env: Env) -> None:
    """kvm.migrate to a second libvirtd in a second network namespace (its own host uuid and
    hostname), reached over TCP through a veth pair. Both libvirtds are on this host, so the
    VM's files are on "shared storage"."""
    c = env.core0()
    uuid = c.json("kvm.create", env.guest_args("mig", nics=[]))
    console = Path(c.json("kvm.get", {"uuid": uuid})["console"])
    assert wait_text(console, MARKER, 120)
    with libvirtd_peer(env.ns, "dest", "mg", "10.250.0") as (_, lv_b):
        _migrate(env, c, uuid, console, lv_b)
    rec = json.loads((env.vdir / uuid / "vm.json").read_text())
    assert rec["migrated"] == "qemu+tcp://10.250.0.2/system"
    assert code_of(c.sync, "kvm.migrate", {"uuid": uuid, "desturi": rec["migrated"]}) == 404
    shutil.rmtree(env.vdir / uuid)


def _migrate(env: Env, c: Any, uuid: str, console: Path, lv_b: Libvirtd) -> None:
    import libvirt

    c.sync("kvm.migrate", {"uuid": uuid, "desturi": "qemu+tcp://10.250.0.2/system",
                           "shared_storage": True})
    assert c.json("kvm.list") == []
    conn = libvirt.open(lv_b.uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        assert dom.name() == "mig" and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        dom.reset(0)  # the guest lives on there: it boots again on the same console
        assert wait_until(lambda: console.read_text(errors="replace").count(MARKER) >= 2, 120)
        dom.destroy()
    finally:
        conn.close()


def test_http_media_downloaded_checked_and_cached(env: Env) -> None:
    import hashlib

    import redis
    from core0_client.protocol import LogRecord

    port = 18000 + os.getpid() % 1000
    env.ns.spawn(sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                 "--directory", str(env.root / "images"))
    url = f"http://127.0.0.1:{port}/base.qcow2"
    assert wait_until(lambda: env.ns.run("curl", "-sf", "-o", "/dev/null", url,
                                         check=False).returncode == 0, 20)
    digest = hashlib.sha256((env.root / "images/base.qcow2").read_bytes()).hexdigest()
    c = env.core0()
    bad = env.guest_args("web", media=[{"url": url, "checksum": "sha256:" + "0" * 64}])
    assert code_of(c.sync, "kvm.create", bad) == 400
    cache = env.vdir / "cache"
    assert [p.name for p in cache.iterdir()] == []
    assert code_of(c.sync, "kvm.create", env.guest_args(
        "web", media=[{"url": url + ".missing"}])) == 503
    r = redis.Redis(unix_socket_path=env.node.socket)

    def messages(job: str) -> list[str]:
        return [LogRecord.from_json(f[b"record"]).message for _, f in r.xrange(f"log:{job}")]

    # an image downloaded earlier that no VM uses any more, 2 MiB: over the node's
    # cache_max_mib (1), so the next create evicts it (never the one its overlay is on)
    unused = cache / ("e" * 64)
    unused.write_bytes(b"\0" * (2 << 20))
    os.utime(unused, (1_000_000, 1_000_000))
    args = env.guest_args("web", media=[{"url": url, "checksum": f"sha256:{digest}"}])
    job = c.raw("kvm.create", args)
    uuid = json.loads(job.get(120).data)
    assert any(m.startswith(f"download {url}: ") and "bytes" in m for m in messages(job.id))
    assert [p.name for p in cache.iterdir()] == [digest]  # the unused one evicted
    assert (env.vdir / uuid / "disk0.qcow2").exists()  # booted through an overlay
    console = Path(c.json("kvm.get", {"uuid": uuid})["console"])
    assert wait_text(console, MARKER, 120)
    assert wait_text(console, "GUEST-DISK vda", 30)
    c.sync("kvm.destroy", {"uuid": uuid})
    job = c.raw("kvm.create", args)
    uuid = json.loads(job.get(120).data)
    assert f"download {url}: cached ({digest})" in messages(job.id)
    c.sync("kvm.destroy", {"uuid": uuid})
    assert_clean(env, uuid)
