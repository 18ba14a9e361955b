"""End to end, full image: build it, boot it under qemu, check that the storage, network,
container and KVM tools it adds run in the guest (zfs-fuse with a pool, libvirt driving the
guest's qemu), that 0-core's client gets the machine-bound methods the development host
cannot serve (``info.dmi`` from qemu's SMBIOS tables, ``ip.bond.*`` with the bonding driver,
``disk.spindown``, ``disk.smartctl-*`` and ``disk.isstandby`` on a SATA disk behind qemu's
AHCI controller), then power off.

``CORE0_E2E_IMAGE=DIR`` reuses an image already built in DIR.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest
from conftest import ROOT, require, unavailable
from image_fixtures import node_image

sys.path.insert(0, str(ROOT))
from core0_client import Client

from qemu.harness import VM, VMConfig, free_port

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1500)]

#: the guest's front for 0-core's clients (LKEYEXISTS/LTTL), and its host port
FRONT_PORT = 6390
_FRONT: dict[str, int] = {}


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory):
    require("qemu-system-x86_64")
    image_dir = node_image("full")
    tmp = tmp_path_factory.mktemp("vmfull")
    ata = tmp / "ata.img"  # a SATA disk (libata takes ATA commands: disk.spindown)
    with open(ata, "wb") as f:
        f.truncate(64 << 20)
    front = free_port()  # 0-core's clients: the front, plain TCP (the image has no TLS files)
    _FRONT["port"] = front
    machine = VM(VMConfig(image_dir=image_dir, flavour="full", memory=1536,
                          serial_log=tmp / "serial.log", forwards=[(front, FRONT_PORT)],
                          append=[f"core0.redis.front_port={FRONT_PORT}",
                                  "core0.redis.front_tls=false"],
                          extra_qemu=["-device", "ahci,id=ahci0",
                                      "-drive", f"if=none,id=ata0,format=raw,file={ata}",
                                      "-device", "ide-hd,drive=ata0,bus=ahci0.0,model=CORE0ATA"]))
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


def _zeroos(vm: VM) -> Any:
    """0-core's own client (``0-core-client``, unchanged) on the VM's front (core0's stand-in
    for 0-core's redis-proxy: its ledis-era LKEYEXISTS/LTTL), plain TCP since this image has
    no TLS files (``ssl=False``), with its one-argument AUTH."""
    try:
        import zeroos.core0.client as zc
    except ImportError:
        unavailable("0-core-client is not installed (scripts/install-deps.sh installs it)")
    return zc.Client("127.0.0.1", _FRONT["port"], password=vm.password, ssl=False, timeout=120)


def test_0core_client_dmi_from_qemus_smbios(vm: VM) -> None:
    """``info.dmi`` (0-core's master client: ``json("info.dmi", {types})``): dmidecode's
    tables parsed into 0-core's shape; qemu's SMBIOS names its system "QEMU"."""
    cl = _zeroos(vm)
    every = cl.json("info.dmi", {"types": []})
    assert every["tooling"]["decoder"] and len(every["sections"]) >= 3
    system = cl.json("info.dmi", {"types": ["system"]})
    assert {s["typenum"] for s in system["sections"]} <= {1, 12, 15, 23, 32}
    props = next(s for s in system["sections"] if s["typenum"] == 1)["subsections"][0]
    assert props["title"] == "System Information"
    assert props["properties"]["Manufacturer"]["value"] == "QEMU"
    bios = cl.json("info.dmi", {"types": [0]})
    assert [s["typestr"] for s in bios["sections"]] == ["BIOS"]
    with pytest.raises(Exception) as e:
        cl.json("info.dmi", {"types": ["nosuch"]})
    assert getattr(e.value, "code", 0) == 400


def test_0core_client_bond(vm: VM) -> None:
    """``ip.bond.add/list/del`` with 0-core's arguments ({bond, interfaces, mtu}) over two
    dummy links: a balance-rr bond with both slaves, up; then gone."""
    cl = _zeroos(vm)
    sh(vm, "ip link add cbd0 type dummy && ip link add cbd1 type dummy")
    try:
        assert "cbond0" not in cl.json("ip.bond.list", {})
        cl.json("ip.bond.add", {"bond": "cbond0", "interfaces": ["cbd0", "cbd1"], "mtu": 1400})
        bonds = cl.json("ip.bond.list", {})
        report = bonds["cbond0"]
        mode = next(sec["Bonding Mode"] for sec in report if "Bonding Mode" in sec)
        assert "round-robin" in mode, report
        slaves = {s["Slave Interface"].strip() for s in report if "Slave Interface" in s}
        assert slaves == {"cbd0", "cbd1"}, report
        link = sh(vm, "ip -o link show cbond0")
        assert "mtu 1400" in link and "UP" in link, link
        assert "master cbond0" in sh(vm, "ip -o link show cbd1")
        with pytest.raises(Exception) as e:
            cl.json("ip.bond.add", {"bond": "cbond0", "interfaces": ["cbd0"], "mtu": 0})
        assert getattr(e.value, "code", 0) == 409
        cl.json("ip.bond.del", {"bond": "cbond0"})
        assert "cbond0" not in cl.json("ip.bond.list", {})
    finally:
        sh(vm, "ip link del cbond0 2>/dev/null; ip link del cbd0; ip link del cbd1")


def test_0core_client_spindown_on_a_sata_disk(vm: VM) -> None:
    """``disk.spindown`` (0-core's client: raw, RuntimeError unless SUCCESS) sets the standby
    timer of the AHCI disk by the ATA command; ``disk.seektime`` measures it."""
    cl = _zeroos(vm)
    name = sh(vm, "grep -l CORE0ATA /sys/block/*/device/model").split("/")[3]
    dev = f"/dev/{name}"
    for value in (1, 120, 0):
        r = cl.raw("disk.spindown", {"disk": dev, "spindown": value}).get(120)
        assert r.state == "SUCCESS", (value, r.state, r.code, r.data, r.stderr)
    r = cl.raw("disk.spindown", {"disk": dev, "spindown": 241}).get(120)
    assert r.state == "ERROR" and r.code == 400
    sk = cl.json("disk.seektime", {"disk": dev})
    assert sk["device"] == dev and sk["elapsed"] >= 0 and sk["type"] in ("SSD", "HDD")


def test_0core_smart_and_power_mode_on_a_sata_disk(vm: VM) -> None:
    """0-core's server commands ``disk.smartctl-info``/``-health`` (smartctl in the image)
    and ``disk.isstandby`` (the ATA check power mode) on the AHCI disk, whose SMART qemu
    emulates; the virtio boot disk has no SMART: 412."""
    cl = _zeroos(vm)
    name = sh(vm, "grep -l CORE0ATA /sys/block/*/device/model").split("/")[3]
    dev = f"/dev/{name}"
    info = cl.json("disk.smartctl-info", {"device": dev})
    assert info["model"] == "CORE0ATA" and info["user_capacity"] == 64 << 20, info
    assert info["sector_size"] == 512 and info["smart_support_available"], info
    assert set(info) == {"model", "serial_number", "device_id", "firmware_version",
                         "user_capacity", "sector_size", "rotation_rate", "device",
                         "ata_version", "sata_version", "smart_support_available",
                         "smart_support_enabled"}
    assert cl.json("disk.smartctl-health", {"device": dev}) == {"passed": True}
    assert cl.json("disk.isstandby", {"disk": dev}) is False  # qemu's drive is always active
    virtio = sh(vm, "ls /sys/block | grep -m1 '^vd' || true").strip()
    if virtio:
        r = cl.raw("disk.smartctl-info", {"device": virtio}).get(120)
        assert (r.state, r.code) == ("ERROR", 412), (r.state, r.code, r.data)


def test_poweroff(vm: VM) -> None:
    assert vm.command("core.poweroff")["state"] == "SUCCESS"
    assert vm.wait_exit(120) == 0
