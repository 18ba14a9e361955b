"""Pure parts of the file and storage policy: path bounds, mount option allow-list, ZFS
size values, the walk over a deep tree and fd-based chmod/chown on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core0 import fswalk
from core0.errors import BadRequest, CommandError
from core0.fspath import MAX_DEPTH, Root, check_path, oserror
from core0.storage import mountfd, zfsconf


def test_path_bounds() -> None:
    check_path("/a" * MAX_DEPTH)
    with pytest.raises(BadRequest):
        check_path("/a" * (MAX_DEPTH + 1))
    with pytest.raises(BadRequest):
        check_path("/" + "n" * 256)
    assert oserror(OSError(36, "File name too long"), "/x").code == 400
    assert oserror(OSError(24, "Too many open files"), "/x").code == 503


@pytest.mark.parametrize("opts,fstype,admin,flags,data", [
    ("", "ext4", True, 0, ""),
    ("ro,noatime", "ext4", True, mountfd.MS_RDONLY | mountfd.MS_NOATIME, ""),
    (["ro", "errors=remount-ro"], "ext4", False,
     mountfd.MS_RDONLY | mountfd.MS_NOSUID | mountfd.MS_NODEV, "errors=remount-ro"),
    (["subvol=/a/b", "compress=zstd:3"], "btrfs", True, 0, "subvol=/a/b,compress=zstd:3"),
    (["noexec", "nosuid"], "vfat", True, mountfd.MS_NOEXEC | mountfd.MS_NOSUID, ""),
])
def test_mount_options_allowed(opts: str | list[str], fstype: str, admin: bool, flags: int,
                               data: str) -> None:
    got_flags, got_data = mountfd.parse_options(mountfd.split_options(opts), fstype, admin)
    assert got_flags & ~mountfd.MS_SILENT == flags
    assert got_data == data


@pytest.mark.parametrize("opts,fstype", [
    (["exec"], "ext4"), (["suid"], "ext4"), (["dev"], "ext4"), (["defaults"], "ext4"),
    (["helper=x"], "ext4"), (["context=x"], "ext4"), (["errors=bogus"], "ext4"),
    (["subvol=/x"], "ext4"), (["compress=evil"], "btrfs"), (["subvol=../x y"], "btrfs"),
    (["errors"], "ext4"), (["discard=1"], "ext4"),
])
def test_mount_options_refused(opts: list[str], fstype: str) -> None:
    with pytest.raises(CommandError) as ei:
        mountfd.parse_options(opts, fstype, True)
    assert ei.value.code == 400


def test_remount_takes_flags_only() -> None:
    with pytest.raises(BadRequest):
        mountfd.parse_options(["errors=panic"], "", False, remount=True)
    flags, _ = mountfd.parse_options(["rw"], "", False, remount=True)
    assert flags & (mountfd.MS_NOSUID | mountfd.MS_NODEV) == mountfd.MS_NOSUID | mountfd.MS_NODEV


def test_mount_inside_root() -> None:
    assert mountfd.inside("/", "/x/y") == "/x/y"
    assert mountfd.inside("/srv/r", "/srv/r") == "/"
    assert mountfd.inside("/srv/r", "/srv/r/m") == "/m"
    assert mountfd.inside("/srv/r", "/srv/rx/m") is None
    assert mountfd.inside("/srv/r", "/etc") is None


@pytest.mark.parametrize("value,ok", [("1G", True), ("1048576", True), ("none", True),
                                      ("512M", True), ("1.5G", False), ("1G; x", False),
                                      ("-1", False), ("", False)])
def test_zfs_size_values(value: str, ok: bool) -> None:
    if ok:
        zfsconf.check_values({"quota": value})
    else:
        with pytest.raises(BadRequest):
            zfsconf.check_values({"quota": value})
    zfsconf.check_values({"comment:x": "1.5G"})  # only size properties are checked


def test_deep_tree_walk_and_fd_ops(tmp_path: Path) -> None:
    """2,000 levels: chmod, chown and remove without recursion and without leaking fds."""
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("t", dir_fd=fd)
    for i in range(2000):
        nfd = os.open("t" if i == 0 else "a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        os.mkdir("a", dir_fd=fd)
        os.symlink("/etc/passwd", "ln", dir_fd=fd)
    os.close(fd)
    before = len(os.listdir("/proc/self/fd"))
    passwd = os.stat("/etc/passwd")
    with Root(str(tmp_path)) as root, root.at("/t") as (dfd, name):
        fswalk.chmod_tree(dfd, name, 0o700, True)
        if os.geteuid() == 0:
            fswalk.chown_tree(dfd, name, 4321, 4321, True)
    assert stat.S_IMODE((tmp_path / "t" / "a" / "a").stat().st_mode) == 0o700
    after = os.stat("/etc/passwd")
    assert (after.st_mode, after.st_uid) == (passwd.st_mode, passwd.st_uid)
    if os.geteuid() == 0:
        assert (tmp_path / "t" / "a").stat().st_uid == 4321
        assert os.lstat(tmp_path / "t" / "ln").st_uid == 4321  # the link, not its target
    with Root(str(tmp_path)) as root:
        root.remove("/t")
    assert not (tmp_path / "t").exists()
    assert len(os.listdir("/proc/self/fd")) <= before  # nothing leaked


def test_remove_stops_at_a_mount(tmp_path: Path) -> None:
    """filesystem.remove never empties a filesystem mounted inside the tree."""
    from conftest import require_root

    require_root()
    import subprocess

    (tmp_path / "t" / "m").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp_path / "t" / "m")],
                   check=True)
    try:
        (tmp_path / "t" / "m" / "precious").write_text("x")
        with Root(str(tmp_path)) as root, pytest.raises(CommandError) as ei:
            root.remove("/t")
        assert ei.value.code == 409
        assert (tmp_path / "t" / "m" / "precious").read_text() == "x"
    finally:
        subprocess.run(["umount", str(tmp_path / "t" / "m")], check=True)
