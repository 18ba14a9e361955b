"""0-core's client, kvm manager: a node of its own (network namespace, private libvirtd +
qemu/TCG, tests/virt_fixtures.py) with the front, 0-core's client connected with its defaults.

VMs: one made by the client's own ``create`` (0-core's arguments only: a blank disk, so the
guest sits in its firmware; enough for state, stats and power), one booting the test guest
(kernel + busybox, through ``json``: 0-core's create has no kernel argument) for what needs a
guest OS (hot-unplug, ACPI reboot/shutdown), and one migrated to a second libvirtd.
Run under ``flock /tmp/core0-vm.lock``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from compat_fixtures import Zos, connect, inside, start, stop, zeroos
from conftest import require, require_root
from net_fixtures import Netns, netns
from virt_fixtures import MARKER, Libvirtd, guest_files, libvirtd, libvirtd_peer, wait_text

pytest_plugins = ["storage_fixtures", "compat_fixtures"]

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]


@dataclass
class Kvm:
    node: Zos
    lv: Libvirtd
    ns: Netns
    root: Path  #: the node's filesystem root

    @property
    def cl(self) -> Any:
        return self.node.client


def _wait(cond: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return bool(cond())


@pytest.fixture(scope="module")
def kvm() -> Iterator[Kvm]:
    require_root()
    require("redis-server", "nft", "dnsmasq", "nsenter", "openssl", "qemu-img")
    zeroos()
    kernel, initrd = guest_files()
    base = Path(tempfile.mkdtemp(prefix="core0-compat-kvm-", dir="/tmp"))
    root = base / "root"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images" / "vmlinuz")
    shutil.copy2(initrd, root / "images" / "initrd.cpio")
    for name in ("blank.qcow2", "guest.qcow2", "mig.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "images" / name),
                        "64M"], check=True)
    trust = os.environ.get("SSL_CERT_FILE")
    try:
        with netns("ckvm") as ns, libvirtd(ns.name) as lv:
            # an underlay for vlan/vxlan segments (core0/net/segments.py)
            ns.run("ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
            for link in ("under0", "under1"):
                ns.run("ip", "link", "set", link, "up")
            node = start(ns, base, f'[main]\nfilesystem_root = "{root}"\n'
                         f'[virt]\nuri = "{lv.uri}"\ndir = "{base / "virt"}"\n'
                         f'probe_kernel = "{root / "images/vmlinuz"}"\n'
                         # TCG directly: the KVM probe is test_kvm.py's (15-25 s here)
                         'domain_type = "qemu"\n'
                         '[segments]\nparent = "under0"\nvxlan_remotes = ["10.231.9.2"]\n')
            os.environ["SSL_CERT_FILE"] = str(node.ca)
            try:
                with inside(ns):
                    node.client = connect(node)
                    yield Kvm(node, lv, ns, root)
            finally:
                stop(node)
    finally:
        if trust is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = trust
        shutil.rmtree(base, ignore_errors=True)


def _state(cl: Any, uuid: str) -> str:
    return str(next(i["state"] for i in cl.kvm.list() if i["uuid"] == uuid))


def test_create_state_stats_power(kvm: Kvm, zc: Any, record: Any) -> None:
    cl = kvm.cl
    # a fresh node's first kvm.* command starts the KVM probe (≤ 15 s, once per host boot)
    # in the background; a create waits for it, longer than the client's 10 s default
    assert cl.kvm.list() == []
    if Path("/dev/kvm").exists():
        _wait(lambda: (kvm.node.base / "virt" / "probe.json").exists(), 60)
    res = cl.kvm.create("blank", [{"url": "/images/blank.qcow2"}], nics=[{"type": "default"}],
                        port={18090: 8080}, tags=["compat"])
    uuid = json.loads(res.data)
    assert res.state == "SUCCESS" and uuidlib.UUID(uuid)
    record("kvm.create", "`Return` (sync) whose `data` is the uuid (JSON); the client's "
           "defaults (cpu 2, memory 512 MiB) and media/nics/port/tags honoured; the master "
           "client's `flist`/`config`: `ResultError` 412 (no flists)")
    for extra, word in (({"flist": "https://hub.grid.tf/x/vm.flist"}, "flist"),
                        ({"config": {"/etc/x": "y"}}, "config")):
        with pytest.raises(zc.ResultError) as e:
            cl.sync("kvm.create", {"name": "fl", "media": [{"url": "/images/blank.qcow2"}],
                                   "cpu": 2, "memory": 512, **extra})
        assert e.value.code == 412 and word in str(e.value), e.value
    try:
        items = cl.kvm.list()
        vm = next(i for i in items if i["uuid"] == uuid)
        assert {"id", "uuid", "name", "state", "vnc", "tags", "ifctargets", "default_ip",
                "params"} <= set(vm)
        assert (vm["name"], vm["state"], vm["tags"]) == ("blank", "running", ["compat"])
        assert vm["params"]["cpu"] == 2 and vm["params"]["memory"] == 512
        record("kvm.list", "[{id, uuid, name, state, vnc, tags, ifctargets, default_ip, "
               "params}] (+ console)")
        assert cl.json("kvm.get", {"uuid": uuid})["name"] == "blank"
        assert cl.json("kvm.get", {"name": "blank"})["uuid"] == uuid
        record("kvm.get", "the list item, by `uuid` or `name`")
        info = cl.kvm.info(uuid)
        assert len(info["vcpu"]) == 2 and info["block"][0]["name"] == "vda"
        assert info["net"] and {"rxbytes", "txbytes"} <= set(info["net"][0])
        record("kvm.info", "{vcpu [{state, time}], net [{name, rx/tx bytes, pkts, errs, "
               "drop}], block [{name, rd/wr bytes, times}]}")
        rates = cl.kvm.infops(uuid)
        assert set(rates) >= {"vcpu", "net", "block"}
        record("kvm.infops", "the same fields per second (two samples)")
        fwd = cl.json("nft.forward_list", {})
        assert any(f["owner"] == f"vm:{uuid}" and f["port"] == 8080 for f in fwd)

        assert cl.kvm.pause(uuid) is None and _state(cl, uuid) == "paused"
        record("kvm.pause", "`None`; the VM is paused")
        assert cl.kvm.resume(uuid) is None and _state(cl, uuid) == "running"
        with pytest.raises(zc.ResultError) as e:
            cl.kvm.resume(uuid)
        assert e.value.code == 409
        record("kvm.resume", "`None`; running again (`ResultError` 409 when not paused)")
        assert cl.kvm.reset(uuid) is None and _state(cl, uuid) == "running"
        record("kvm.reset", "`None`; hard reset")

        with pytest.raises(zc.ResultError) as e:  # it runs here: not a destination
            cl.kvm.prepare_migration_target(uuid, nics=vm["params"]["nics"])
        assert e.value.code == 409
        # this node as the destination of another VM (its nics as kvm.get shows them)
        incoming = str(uuidlib.uuid4())
        mac = "00:28:06:82:7f:01"
        assert cl.kvm.prepare_migration_target(
            incoming, nics=[{"type": "default", "hwaddr": mac}], port={18091: 80}) is None
        fwd = cl.json("nft.forward_list", {})
        assert any(f["owner"] == f"vm:{incoming}" and f["port"] == 80 for f in fwd)
        assert mac in cl.json("bridge.info", {"name": "kvm0"})["hosts"]
        assert cl.kvm.destroy(incoming) is None  # releases what was prepared
        fwd = cl.json("nft.forward_list", {})
        assert not any(f["owner"] == f"vm:{incoming}" for f in fwd)
        record("kvm.prepare_migration_target", "`None`; the default nic's lease (the address "
               "its MAC encodes) and the forwards made here before `migrate` on the source")
    finally:
        assert cl.kvm.destroy(uuid) is None
    assert all(i["uuid"] != uuid for i in cl.kvm.list())
    assert not any(f["owner"] == f"vm:{uuid}" for f in cl.json("nft.forward_list", {}))
    with pytest.raises(zc.ResultError) as e:
        cl.kvm.destroy(uuid)
    assert e.value.code == 404
    record("kvm.destroy", "`None`; forced off, overlays, lease and port forwards removed "
           "(`ResultError` 404 when unknown)")


def test_devices_images_reboot_shutdown(kvm: Kvm, zc: Any, record: Any) -> None:
    import libvirt

    cl = kvm.cl
    uuid = cl.json("kvm.create", {
        "name": "guest", "cpu": 1, "memory": 256,
        "media": [{"url": "/images/guest.qcow2"}], "nics": [{"type": "default"}],
        "kernel": "/images/vmlinuz", "initrd": "/images/initrd.cpio",
        "cmdline": "console=ttyS0 panic=-1"})
    try:
        console = Path(cl.json("kvm.get", {"uuid": uuid})["console"])
        assert wait_text(console, MARKER, 120), console.read_text(errors="replace")[-2000:]

        assert cl.json("kvm.create-image", {"file_name": "/images/d.raw", "format": "raw",
                                            "size": "4M"}) is None
        assert (kvm.root / "images/d.raw").stat().st_size == 4 << 20
        record("kvm.create_image", "`None`; `qemu-img create` ({file_name, format, size})")
        cl.json("kvm.convert-image", {"input_file": "/images/d.raw",
                                      "output_file": "/images/d.qcow2",
                                      "output_format": "qcow2"})
        assert (kvm.root / "images/d.qcow2").read_bytes()[:4] == b"QFI\xfb"
        record("kvm.convert_image", "`None`; `qemu-img convert` ({input_file, output_file, "
               "output_format})")

        assert cl.kvm.attach_disk(uuid, {"url": "/images/d.qcow2"}) is None
        assert wait_text(console, "GUEST-DISK vdb", 60)
        record("kvm.attach_disk", "`None`; hot-plugged, the guest sees it")
        cl.kvm.limit_disk_io(uuid, {"url": "/images/d.qcow2"}, totalbytessecset=True,
                             totalbytessec=1048576, readiopssecset=True, readiopssec=100)
        conn = libvirt.open(kvm.lv.uri)
        try:
            dom = conn.lookupByUUIDString(uuid)
            tune = dom.blockIoTune("vdb", 0)
            assert tune["total_bytes_sec"] == 1048576 and tune["read_iops_sec"] == 100
            record("kvm.limit_disk_io", "`None`; the disk's I/O tune set live (checked: "
                   "total bytes/s and read IOPS/s)")
            assert cl.kvm.detach_disk(uuid, {"url": "/images/d.qcow2"}) is None
            assert _wait(lambda: "d.qcow2" not in dom.XMLDesc(0))
            record("kvm.detach_disk", "`None`; unplugged")
            mac = "52:54:00:aa:bb:cd"
            assert cl.kvm.add_nic(uuid, "bridge", "kvm0", mac) is None
            assert mac in dom.XMLDesc(0)
            record("kvm.add_nic", "`None`; a bridge nic hot-plugged; vxlan: a port of "
                   "the node's segment bridge for that VNI")
            assert cl.kvm.add_nic(uuid, "vxlan", "5") is None
            assert "c0vxb5" in dom.XMLDesc(0)
            cl.kvm.remove_nic(uuid, "vxlan", "5", None)
            assert _wait(lambda: "c0vxb5" not in dom.XMLDesc(0))
            cl.kvm.remove_nic(uuid, "bridge", None, mac)
            assert _wait(lambda: mac not in dom.XMLDesc(0))
            record("kvm.remove_nic", "`None`; the nic unplugged (matched by hwaddr)")
        finally:
            conn.close()

        cl.json("kvm.portforward-add", {"uuid": uuid, "host_port": "19090",
                                        "container_port": 8080})
        assert [f["src"] for f in cl.json("nft.forward_list", {})
                if f["owner"] == f"vm:{uuid}"] == ["19090|tcp"]
        record("kvm.portforward_add", "`None`; an nft forward to the VM's default nic")
        cl.json("kvm.portforward-remove", {"uuid": uuid, "host_port": "19090",
                                           "container_port": 8080})
        assert not any(f["owner"] == f"vm:{uuid}" for f in cl.json("nft.forward_list", {}))
        record("kvm.portforward_remove", "`None`; the forward is gone")

        # ACPI: a guest that just booted may not listen to its power button yet
        for _ in range(4):
            assert cl.kvm.reboot(uuid) is None
            if _wait(lambda: console.read_text(errors="replace").count(MARKER) >= 2, 40):
                break
        assert console.read_text(errors="replace").count(MARKER) >= 2
        record("kvm.reboot", "`None`; ACPI reboot, the guest boots again")
        def gone() -> bool:
            return all(i["uuid"] != uuid for i in cl.kvm.list())

        for _ in range(4):  # the same: a request the rebooted guest may not hear yet
            assert cl.kvm.shutdown(uuid) is None
            if _wait(gone, 40):
                break
        assert gone()
        record("kvm.shutdown", "`None` at once (ACPI power button); the VM is gone when the "
               "guest powered off")
    finally:
        with contextlib.suppress(Exception):
            cl.kvm.destroy(uuid)


def test_migrate(kvm: Kvm, zc: Any, record: Any) -> None:
    """The client's ``migrate(uuid, desturi)`` to a second libvirtd in a second netns (on
    this host, so the VM's files are on "shared storage", 0-core's only migration mode)."""
    import libvirt

    cl = kvm.cl
    res = cl.kvm.create("mig", [{"url": "/images/mig.qcow2"}], cpu=1, memory=128)
    uuid = json.loads(res.data)
    with libvirtd_peer(kvm.ns, "cmig", "cm", "10.251.0") as (_, lv_b):
        assert cl.kvm.migrate(uuid, "qemu+tcp://10.251.0.2/system") is None
        assert all(i["uuid"] != uuid for i in cl.kvm.list())
        conn = libvirt.open(lv_b.uri)
        try:
            dom = conn.lookupByUUIDString(uuid)
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            dom.destroy()
        finally:
            conn.close()
    record("kvm.migrate", "`None`; live-migrated (peer to peer, tunnelled; shared storage by "
           "default, as 0-core), gone here")
