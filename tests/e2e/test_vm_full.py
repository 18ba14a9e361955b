"""End to end, full image: build it, boot it under qemu, check that the storage, network,
container and KVM tools it adds run in the guest (zfs-fuse with a pool, libvirt driving the
guest's qemu), then power off.

``CORE0_E2E_IMAGE=DIR`` reuses an image already built in DIR.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from conftest import ROOT, require
from image_fixtures import node_image

sys.path.insert(0, str(ROOT))
from core0_client import Client

from qemu.harness import VM, VMConfig

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory):
    require("qemu-system-x86_64")
    image_dir = node_image("full")
    tmp = tmp_path_factory.mktemp("vmfull")
    machine = VM(VMConfig(image_dir=image_dir, flavour="full", memory=1536,
                          serial_log=tmp / "serial.log"))
    machine.start()
    print(f"boot → first core.ping answered: {machine.wait_ping(300):.1f}s ({machine.accel})")
    yield machine
    machine.close()


def sh(vm: VM, script: str, timeout: float = 120) -> str:
    res = vm.command("core.system", {"name": "sh", "args": ["-c", script]}, timeout)
    assert res["state"] == "SUCCESS", (script, res)
    return str(res["streams"][0])


@pytest.mark.parametrize("argv,expect", [
    ("btrfs --version", "btrfs-progs"),
    ("nft --version", "nftables"),
    ("dnsmasq --version", "Dnsmasq"),
    ("ip -V", "iproute2"),
    ("lsblk --version", "util-linux"),
    ("parted --version", "parted"),
    ("qemu-system-x86_64 --version", "QEMU emulator"),
    ("virsh --version", "."),
    ("runc --version", "runc"),
    ("python3 -c 'import libvirt; print(libvirt.getVersion())'", "0"),
])
def test_tools_run(vm: VM, argv: str, expect: str) -> None:
    assert expect in sh(vm, argv)


def _service_up(vm: VM, sid: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        svc = json.loads(vm.command("service.get", {"id": sid})["data"])
        if svc["status"] == "running" or time.monotonic() > deadline:
            assert svc["status"] == "running", svc
            return svc
        time.sleep(1)


@pytest.mark.parametrize("sid", ["zfs-fuse", "virtlogd", "libvirtd", "syslogd"])
def test_image_daemons_are_boot_services(vm: VM, sid: str) -> None:
    assert _service_up(vm, sid)["pid"] > 0


def test_zfs_fuse_pool(vm: VM) -> None:
    _service_up(vm, "zfs-fuse")
    client = Client("127.0.0.1", vm.port, vm.password, timeout=120)
    sh(vm, "truncate -s 128M /tmp/z.img")
    client.json("zpool.create", {"name": "e2e", "vdevs": ["/tmp/z.img"]})
    client.json("zfs.create", {"name": "e2e/a"})
    assert "e2e/a" in sh(vm, "zfs list -H -o name")
    client.json("zpool.destroy", {"name": "e2e"})
    client.close()


def test_libvirt_drives_qemu(vm: VM) -> None:
    _service_up(vm, "libvirtd")
    out = sh(vm, "virsh -c qemu:///system version", timeout=180)
    assert "Running hypervisor: QEMU" in out


def test_link_kinds_this_host_lacks(vm: VM) -> None:
    """dummy, vlan and bond links through core0's ip.* commands (the development host's
    kernel has none of these drivers; the image's kernel has them as modules)."""
    c = Client("127.0.0.1", vm.port, vm.password, timeout=120)
    ns = "kinds"
    c.ip.netns.add(ns)
    try:
        c.ip.link.add("d0", "dummy", netns=ns, up=True)
        c.ip.addr.add("d0", "10.77.0.1/24", netns=ns)
        assert c.ip.link.get("d0", netns=ns)["type"] == "dummy"
        c.ip.link.add("d0.100", "vlan", netns=ns, parent="d0", id=100, up=True)
        assert c.ip.link.get("d0.100", netns=ns)["type"] == "vlan"
        c.ip.link.add("b0", "bond", netns=ns, mode="active-backup")
        c.ip.link.add("d1", "dummy", netns=ns)
        c.ip.link.set("d1", netns=ns, master="b0")
        assert c.ip.link.get("d1", netns=ns)["master"] == "b0"
        assert c.ip.link.get("b0", netns=ns)["type"] == "bond"
        # a VLAN segment (vlan nics of VMs and containers: core0/net/segments.py) on d0
        code = ("from core0.net import segments; from core0.segconfig import SegmentsConfig; "
                f"c = SegmentsConfig(parent='d0'); print(segments.ensure(c, 'vlan', 200, "
                f"netns='{ns}')); print(segments.collect(netns='{ns}'))")
        res = c.system(f"python3.11 -c \"{code}\"").get(120)
        assert res.stdout.split() == ["c0vlb200", "['c0vlb200']"], (res.stdout, res.stderr)
    finally:
        c.ip.netns.delete(ns)
        c.close()


def test_poweroff(vm: VM) -> None:
    assert vm.command("core.poweroff")["state"] == "SUCCESS"
    assert vm.wait_exit(120) == 0
