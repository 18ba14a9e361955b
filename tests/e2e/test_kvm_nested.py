"""End to end, nested: the full image boots under qemu and runs a guest through core0's kvm.*.

The node's libvirtd and virtlogd are the image's boot services; the guest (the marker stub of
tests/virt_fixtures.py: a multiboot image that prints the marker on its serial port) is
uploaded through filesystem.*, created with ``kvm.create`` (direct kernel boot on a qcow2
overlay, a domain type the node's own probe picks: TCG inside TCG here), its console marker
read back through core0, then destroyed; an image is converted on the node first (qemu-img
confined by bubblewrap there). The guest was the busybox Linux guest of the kvm tests until
2026-11-29: its boot took about 110 s of TCG in TCG and tested nothing of core0's that the
stub's does not (the kvm integration tests boot that guest at one level of TCG).

``CORE0_E2E_IMAGE=DIR`` reuses an image already built in DIR.
"""

from __future__ import annotations

import sys
import time

import pytest
from conftest import ROOT, require
from image_fixtures import node_image

sys.path.insert(0, str(ROOT))
from core0_client import Client
from virt_fixtures import MARKER, marker_stub

from qemu.harness import VM, VMConfig

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    require("qemu-system-x86_64")
    image_dir = node_image("full")
    tmp = tmp_path_factory.mktemp("kvmnested")
    machine = VM(VMConfig(image_dir=image_dir, flavour="full", memory=1536,
                          serial_log=tmp / "serial.log"))
    machine.start()
    machine.wait_ping(300)
    yield machine
    machine.close()


def _wait_service(c: Client, sid: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.json("service.get", {"id": sid})["status"] == "running":
            return
        time.sleep(1)
    raise AssertionError(f"service {sid} not running")


def test_nested_guest_through_kvm_create(vm: VM) -> None:
    c = Client("127.0.0.1", vm.port, vm.password, timeout=600)
    try:
        _wait_service(c, "libvirtd")
        c.json("filesystem.mkdir", {"path": "/var/lib/guest"})
        c.upload("/var/lib/guest/stub", marker_stub())
        c.sync("kvm.create-image", {"file_name": "/var/lib/guest/base.qcow2", "size": "16M"})
        # a conversion runs qemu-img under bubblewrap (core0/proc/confine.py): on the node too
        c.sync("kvm.convert-image", {"input_file": "/var/lib/guest/base.qcow2",
                                     "output_file": "/var/lib/guest/copy.raw",
                                     "output_format": "raw"})
        sizes = {e["name"]: e["size"] for e in c.json("filesystem.list",
                                                       {"path": "/var/lib/guest"})}
        assert sizes["copy.raw"] == 16 << 20, sizes
        uuid = c.json("kvm.create", {
            "name": "nested", "cpu": 1, "memory": 64,
            "media": [{"url": "/var/lib/guest/base.qcow2", "overlay": True}],
            "kernel": "/var/lib/guest/stub", "cmdline": "stub"})
        console = c.json("kvm.get", {"uuid": uuid})["console"]
        deadline = time.monotonic() + 600
        seen = False
        while time.monotonic() < deadline and not seen:
            try:
                seen = MARKER.encode() in c.download(console)
            except Exception:
                pass
            if not seen:
                time.sleep(2)
        assert seen, "no guest marker on the nested console"
        assert [v["uuid"] for v in c.json("kvm.list")] == [uuid]
        c.sync("kvm.destroy", {"uuid": uuid})
        assert c.json("kvm.list") == []
    finally:
        c.close()
