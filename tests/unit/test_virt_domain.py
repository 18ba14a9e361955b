"""Domain XML building and reading (core0.virt.domain), spec helpers (core0.virt.spec)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from core0.errors import BadRequest, PreconditionFailed
from core0.virt import domain as dx
from core0.virt import network
from core0.virt.spec import CreateArgs, IOTune, Media, check_desturi, iotune_params

EVIL = "a'\"<>&]]></cmdline><initrd>/etc/shadow</initrd>"


def spec(**kw):  # type: ignore[no-untyped-def]
    base = dict(name="vm1", uuid="12345678-1234-1234-1234-123456789abc", memory=256, vcpus=2,
                disks=[dx.Disk("/img/a.qcow2", "qcow2"),
                       dx.Disk("/img/c.iso", "raw", "cdrom", "ide", "hda")],
                nics=[dx.Nic("kvm0", "00:28:06:82:00:02")], serial_log="/v/console.log",
                kernel="/k", initrd="/i", cmdline=EVIL, meta={"tags": [EVIL]})
    base.update(kw)
    return dx.DomainSpec(**base)  # type: ignore[arg-type]


def test_build_escapes_everything_and_parses_back() -> None:
    xml = dx.build(spec(disks=[dx.Disk("/img/" + EVIL, "qcow2")]))
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("os/cmdline") == EVIL
    assert [e.text for e in root.iterfind("os/initrd")] == ["/i"]
    assert [d.find("source").get("file") for d in root.iterfind("devices/disk")] == [
        "/img/" + EVIL]
    live = dx.parse(xml)
    assert live.meta == {"tags": [EVIL]}
    assert live.serial_log == "/v/console.log"
    assert live.nics[0]["mac"] == "00:28:06:82:00:02" and live.nics[0]["bridge"] == "kvm0"


def test_build_devices() -> None:
    s = spec(type="kvm", vnc=True, kernel="")
    s.disks[0].iotune = {"total_bytes_sec": 1000}
    root = ET.fromstring(dx.build(s))
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    assert root.findtext("devices/disk/iotune/total_bytes_sec") == "1000"
    cd = root.findall("devices/disk")[1]
    assert cd.get("device") == "cdrom" and cd.find("readonly") is not None
    g = root.find("devices/graphics")
    assert g.get("listen") == "127.0.0.1" and g.get("autoport") == "yes"
    assert root.findtext("on_poweroff") == "destroy"
    assert root.find("features/acpi") is not None


def test_find_device() -> None:
    xml = dx.build(spec())
    d = dx.find_device(xml, "disk", source="/img/c.iso")
    assert d is not None and ET.fromstring(d).find("target").get("dev") == "hda"
    assert dx.find_device(xml, "interface", mac="00:28:06:82:00:02".upper()) is not None
    assert dx.find_device(xml, "disk", source="/nope") is None


def test_target_names() -> None:
    assert [dx.target_name("virtio", i) for i in (0, 1, 25, 26, 27)] == [
        "vda", "vdb", "vdz", "vdaa", "vdab"]
    assert dx.target_name("ide", 0) == "hda" and dx.target_name("sata", 2) == "sdc"


def test_default_nic_addresses() -> None:
    assert network.address("172.19.0.1/16", 2) == ("00:28:06:82:00:02", "172.19.0.2")
    assert network.address("172.19.0.1/16", 0x1234) == ("00:28:06:82:12:34", "172.19.18.52")
    assert network.free_seq({2, 3}) == 4


def test_iotune_only_flagged_values() -> None:
    t = IOTune.parse({"totalbytessec": 5, "totalbytessecset": True, "readiopssec": 9,
                      "groupname": "g", "groupnameset": True})
    assert iotune_params(t) == {"total_bytes_sec": 5, "group_name": "g"}


def test_media_sources() -> None:
    assert Media.parse({"url": "/a"}).source("m") == "/a"
    with pytest.raises(BadRequest):
        Media.parse({"url": "/a", "path": "/a"}).source("m")
    with pytest.raises(PreconditionFailed):
        Media.parse({"url": "nbd://h/x"}).source("m")


def test_create_args_accepts_0core_fields() -> None:
    a = CreateArgs.parse({"name": "x", "media": [{"url": "/a", "type": "disk"}], "cpu": 2,
                          "memory": 512, "nics": [], "port": None, "flist": None,
                          "share_cache": False, "mount": [], "config": {}, "storage": None,
                          "tags": None})
    a.check_unsupported()
    with pytest.raises(PreconditionFailed):
        CreateArgs.parse({"name": "x", "flist": "https://hub/x.flist"}).check_unsupported()


def test_migration_destination_names() -> None:
    """kvm.migrate's host check: DNS names label by label. The first version matched the
    whole name with one nested pattern, which backtracked exponentially: a 40-character
    near-miss would have held the dispatcher's event loop for hours (a ReDoS from any
    queue that may migrate)."""
    check_desturi("qemu+ssh://root@node-2.example.org/system")
    check_desturi("qemu+tls://10.0.0.2/system")
    for host in ("a" * 40 + "!", "a" * 5000, "x..y", "-a.b", "a" * 64 + ".b", "localhost",
                 "vm.localhost.", "127.0.0.1", "[::1]"):
        with pytest.raises(BadRequest):
            check_desturi(f"qemu+tcp://{host}/system")
