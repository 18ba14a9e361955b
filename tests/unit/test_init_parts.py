"""Pieces of core0 init and of the image builder that need no root: module index and load
order, alias globs, mountinfo parsing, kernel ip= parsing, netlink parsing, config keys, the
cpio writer and the ELF reader."""

from __future__ import annotations

import fnmatch
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from core0 import config as configmod
from core0.init import modules, mounts, netlink, network, power

ROOT = Path(__file__).resolve().parents[2]


def _fake_modules(tmp: Path) -> Path:
    root = tmp / "6.1.0-test"
    (root / "kernel").mkdir(parents=True)
    (root / "modules.dep").write_text(
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko "
        "kernel/net/core/failover.ko\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio-ring.ko\n"
        "kernel/drivers/virtio/virtio-ring.ko:\n"
        "kernel/fs/isofs/isofs.ko:\n")
    (root / "modules.alias").write_text(
        "# Aliases extracted from modules themselves.\n"
        "alias virtio:d00000001v* virtio_net\n"
        "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n"
        "alias fs-iso9660 isofs\n"
        "alias acpi*:PNP0C0C:* button\n")
    (root / "modules.builtin").write_text("kernel/drivers/char/rng-core.ko\n")
    (root / "modules.devname").write_text("# nodes\nfuse fuse c10:229\nloop loop-control c10:237\n")
    return root


def test_module_index_resolves_names_and_aliases(tmp_path: Path) -> None:
    idx = modules.ModuleIndex(_fake_modules(tmp_path))
    assert idx.resolve("virtio-ring") == ["virtio_ring"]
    assert idx.resolve("virtio:d00000001v00001AF4") == ["virtio_net"]
    assert idx.resolve("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00") == ["virtio_pci"]
    assert idx.resolve("fs-iso9660") == ["isofs"]
    assert idx.resolve("acpi:PNP0C0C:") == ["button"]
    assert idx.resolve("rng-core") == ["rng_core"]
    assert idx.resolve("pci:v00008086d00001237sv0000sd0000bc06sc00i00") == []


def test_loader_loads_dependencies_first_once(tmp_path: Path, monkeypatch) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(modules, "finit_module", lambda path, params="": loaded.append(
        Path(path).name))
    monkeypatch.setattr(modules, "loaded_modules", lambda: set())
    loader = modules.Loader(modules.ModuleIndex(_fake_modules(tmp_path)))
    assert loader.load("virtio:d00000001v00001AF4")
    assert loaded == ["failover.ko", "net_failover.ko", "virtio_net.ko"]
    assert loader.load("virtio_net") and loader.load("rng_core")  # loaded / built in
    assert loaded == ["failover.ko", "net_failover.ko", "virtio_net.ko"]
    assert not loader.load("no-such-module")


def test_loader_failure_is_remembered(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fail(path: str, params: str = "") -> None:
        calls.append(path)
        raise modules.ModuleError(19, "No such device")

    monkeypatch.setattr(modules, "finit_module", fail)
    monkeypatch.setattr(modules, "loaded_modules", lambda: set())
    loader = modules.Loader(modules.ModuleIndex(_fake_modules(tmp_path)))
    assert not loader.load("isofs")
    assert not loader.load("isofs")
    assert len(calls) == 1


def test_static_nodes(tmp_path: Path, monkeypatch) -> None:
    made: list[tuple[str, int]] = []
    monkeypatch.setattr(modules.os, "mknod", lambda p, mode, dev: made.append((p, dev)))
    idx = modules.ModuleIndex(_fake_modules(tmp_path))
    assert modules.static_nodes(idx, str(tmp_path / "dev")) == ["fuse", "loop-control"]
    assert made[0] == (str(tmp_path / "dev/fuse"), modules.os.makedev(10, 229))


@pytest.mark.parametrize("pattern", [
    "pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio:d00000001v*", "*", "a*b*c", "acpi*:PNP0C0C:*",
    "exact", "x?y*", "pci:v[0-9]*", "**a", "ab*ab",
])
def test_glob_matches_like_fnmatch(pattern: str) -> None:
    texts = ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "virtio:d00000001v00001AF4",
             "acpi:PNP0C0C:", "exact", "xzy123", "abc", "ab", "aab", "abab", "pci:v9", ""]
    g = modules.Glob(pattern)
    for t in texts:
        assert g.match(t) == fnmatch.fnmatchcase(t, pattern), (pattern, t)


def test_mountinfo_parsing(tmp_path: Path) -> None:
    f = tmp_path / "mountinfo"
    f.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "30 22 0:5 / /mnt/with\\040space rw - tmpfs tmp rw\n"
        "31 1 8:1 / /data rw shared:1 - ext4 /dev/sda1 rw\n")
    table = mounts.mountinfo(str(f))
    assert [m.target for m in table] == ["/proc", "/mnt/with space", "/data"]
    assert table[2].fstype == "ext4" and table[2].source == "/dev/sda1"
    assert mounts.is_mounted("/data", table) and not mounts.is_mounted("/x", table)


def test_unmount_all_keeps_api_filesystems(monkeypatch) -> None:
    def m(mid: int, parent: int, target: str, fstype: str, source: str) -> mounts.MountInfo:
        return mounts.MountInfo(mid, parent, "0:0", "/", target, ["rw"], fstype, source, ["rw"])

    table = [m(1, 0, "/", "rootfs", "rootfs"),
             m(2, 1, "/proc", "proc", "proc"),
             m(3, 1, "/mnt/a", "ext4", "/dev/vda"),
             m(4, 3, "/mnt/a/b", "btrfs", "/dev/vdb"),
             m(5, 1, "/run", "tmpfs", "run")]
    done: list[str] = []
    monkeypatch.setattr(mounts, "mountinfo", lambda path="": table)
    monkeypatch.setattr(mounts, "umount", lambda target, flags=0: done.append(target))
    assert mounts.unmount_all() == ["/mnt/a/b", "/mnt/a"]
    assert done == ["/mnt/a/b", "/mnt/a"]


def test_power_refuses_outside_pid1() -> None:
    with pytest.raises(power.PowerError):
        power.power("reboot")
    with pytest.raises(power.PowerError):
        power.cad_to_signal()


def test_kernel_ip_parameter() -> None:
    plan = network.NetPlan()
    network.parse_kernel_ip("10.0.2.15::10.0.2.2:255.255.255.0:n1:eth0:off:1.1.1.1", plan)
    assert plan.static == {"eth0": ["10.0.2.15/24"]}
    assert plan.gateway == "10.0.2.2" and plan.dns == ["1.1.1.1"] and plan.hostname == "n1"
    assert plan.interfaces == ["eth0"]
    off = network.NetPlan()
    network.parse_kernel_ip("off", off)
    assert not off.enabled
    dhcp = network.NetPlan()
    network.parse_kernel_ip("dhcp", dhcp)
    assert dhcp.enabled and dhcp.dhcp
    with pytest.raises(network.NetError):
        network.parse_kernel_ip("10.0.2.999::::::", network.NetPlan())


def test_net_plan_from_config_and_cmdline() -> None:
    cfg = configmod.load(None, cmdline="noautonic=eth1 core0.net.static=eth0:10.1.0.5/16 "
                         "core0.net.gateway=10.1.0.1 core0.init.crash_action=shell", env={},
                         overrides={"main": {"include": []}})
    assert cfg.init.crash_action == "shell"
    plan = network.plan_from(cfg)
    assert plan.static == {"eth0": ["10.1.0.5/16"]} and plan.gateway == "10.1.0.1"
    assert "eth1" in plan.skip and not plan.wants("eth1") and plan.wants("eth0")
    with pytest.raises(configmod.ConfigError):
        configmod.load(None, cmdline="core0.init.crash_action=explode", env={},
                       overrides={"main": {"include": []}})


def test_netlink_address_message_parsing() -> None:
    body = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 1)
    body += netlink._attr(netlink.IFA_LOCAL, socket.inet_aton("10.0.2.15"))
    a = netlink.parse_address(netlink.RTM_NEWADDR, body)
    assert a is not None and str(a) == "10.0.2.15/24" and a.usable
    msgs = netlink._messages(struct.pack("=IHHII", 16 + len(body), netlink.RTM_NEWADDR, 0, 0, 0)
                             + body)
    assert msgs == [(netlink.RTM_NEWADDR, 0, body)]
    tentative = struct.pack("=BBBBI", socket.AF_INET6, 64, netlink.IFA_F_TENTATIVE, 0, 1)
    tentative += netlink._attr(netlink.IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fd00::1"))
    b = netlink.parse_address(netlink.RTM_NEWADDR, tentative)
    assert b is not None and not b.usable


def test_netlink_lists_loopback() -> None:
    addrs = netlink.addresses()
    assert any(a.address == "127.0.0.1" and a.nic == "lo" for a in addrs)


# ---------------------------------------------------------------- image builder helpers

@pytest.fixture
def imagelib():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "initramfs-builder"))
    import imagelib as mod

    yield mod
    sys.path.remove(str(ROOT / "initramfs-builder"))


def test_cpio_writer_is_read_by_cpio(imagelib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require("cpio")
    tree = tmp_path / "t"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/hello").write_text("hi\n")
    (tree / "bin").symlink_to("usr/bin")
    out = tmp_path / "a.cpio"
    with out.open("wb") as f:
        w = imagelib.CpioWriter(f, 0)
        for e in imagelib.tree_entries(tree):
            w.add(e)
        w.add(imagelib.Entry("dev/console", 0o20600, rdev=(5, 1)))
        w.finish()
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=out.open("rb"),
                             capture_output=True, text=True, check=True).stdout
    assert "usr/bin/hello" in listing and "bin -> usr/bin" in listing
    assert "dev/console" in listing and listing.count("\n") == 5


def test_elf_reader(imagelib) -> None:  # type: ignore[no-untyped-def]
    info = imagelib.elf_info(Path("/bin/ls"))
    assert info is not None and "libc.so.6" in info.needed
    assert info.interp and "ld-linux" in info.interp
    assert imagelib.elf_info(Path(__file__)) is None


def test_usr_merge_paths(imagelib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert imagelib.usr_path("/lib/x86_64-linux-gnu/libc.so.6") == \
        "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert imagelib.usr_path("/libexec") == "/libexec"
    root = tmp_path / "sys"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/real").write_text("x")
    (root / "bin").mkdir()
    (root / "bin/alias").symlink_to("/usr/bin/real")
    assert imagelib.resolve(root, "/bin/alias") == "/usr/bin/real"
    assert imagelib.resolve(root, "/bin/missing") is None
