"""Fixtures of the storage tests: sparse files on real loop devices, real btrfs, a real
zfs-fuse daemon. Everything is cleaned up by device, by pool name and by PID, also when a
test fails. Test modules load this with ``pytest_plugins = ["storage_fixtures"]``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Node, require, require_root, wait_until

ZFS_SOCKET = "/var/run/zfs/zfs_socket"


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a tool in a fixture (no shell)."""
    return subprocess.run(list(argv), check=check, capture_output=True, text=True,
                          timeout=timeout)


def mountinfo() -> list[tuple[str, str, str]]:
    """(majmin, mountpoint, source) of every mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
            out.append((parts[2], mp, parts[sep + 2]))
    return out


def umount_below(path: str) -> None:
    """Unmount everything on or under ``path`` (deepest first, lazily if busy)."""
    p = path.rstrip("/")
    mps = [mp for _, mp, _ in mountinfo() if mp == p or mp.startswith(p + "/")]
    for mp in sorted(mps, key=len, reverse=True):
        if sh("umount", mp, check=False).returncode != 0:
            sh("umount", "-l", mp, check=False)


class Loops:
    """Sparse files attached to loop devices; ``cleanup`` unmounts and detaches them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.devs: list[str] = []
        self.files: list[Path] = []

    def __call__(self, size: str = "1G") -> str:
        f = self.tmp / f"disk-{uuid.uuid4().hex[:8]}.img"
        sh("truncate", "-s", size, str(f))
        self.files.append(f)
        dev = sh("losetup", "-f", "--show", str(f)).stdout.strip()
        self.devs.append(dev)
        # partitions a previous user of this loop device registered (BLKPG) outlive it
        sh("partx", "-d", dev, check=False)
        return dev

    def cleanup(self) -> None:
        for dev in reversed(self.devs):
            pat = re.compile(rf"^{re.escape(dev)}(p\d+)?$")
            for _, mp, src in reversed(mountinfo()):
                if pat.match(src):
                    if sh("umount", mp, check=False).returncode != 0:
                        sh("umount", "-l", mp, check=False)
            with contextlib.suppress(OSError):
                os.chmod(dev, 0o600)
            sh("blockdev", "--setrw", dev, check=False)
            sh("partx", "-d", dev, check=False)
            for _ in range(50):
                if sh("losetup", "-d", dev, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        for f in self.files:
            f.unlink(missing_ok=True)


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    """``loops("1G")`` → a fresh loop device (e.g. /dev/loop3) over a sparse file."""
    require_root()
    require("losetup", "truncate")
    lo = Loops(tmp_path)
    try:
        yield lo
    finally:
        lo.cleanup()


def zfs_running() -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(ZFS_SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


def stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM, wait (zfs-fuse needs a few seconds), then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie of ours counts as gone
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        return False
    if not wait_until(gone, timeout, 0.1):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(gone, 5, 0.1)


@pytest.fixture(scope="module")
def zfs_daemon(node: Node) -> Iterator[dict]:
    """A running zfs-fuse daemon. When none runs, the node is asked for ``zpool.list``, which
    makes core0 start one (the auto-start path under test); that daemon is then ours and is
    stopped by PID at the end. A daemon that was already running is left alone."""
    require_root()
    require("zfs-fuse", "zpool", "zfs")
    if zfs_running():
        yield {"pid": None, "started_by_core0": False}
        return
    c = node.client(timeout=60)
    try:
        c.zpool.list()
    finally:
        c.close()
    pidfile = node.state_dir / "zfs-fuse.pid"
    assert wait_until(pidfile.exists, 10), "core0 did not start zfs-fuse"
    pid = int(pidfile.read_text().strip())
    try:
        yield {"pid": pid, "started_by_core0": True, "pidfile": str(pidfile)}
    finally:
        stop_pid(pid)


class Pools:
    """Pool names for a test; ``cleanup`` destroys whichever of them still exist."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def name(self) -> str:
        n = f"tp{uuid.uuid4().hex[:8]}"  # not c[0-9]...: ZFS reserves those
        self.names.append(n)
        return n

    def cleanup(self) -> None:
        imported = set(sh("zpool", "list", "-H", "-o", "name", check=False).stdout.split())
        for n in self.names:
            if n not in imported:
                continue
            for _ in range(20):
                if sh("zpool", "destroy", "-f", n, check=False).returncode == 0:
                    break
                time.sleep(0.2)


@pytest.fixture
def pools(zfs_daemon: dict) -> Iterator[Pools]:
    p = Pools()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def btrfs_mount(loops: Loops, tmp_path: Path) -> Iterator[str]:
    """A fresh btrfs on a loop device, mounted; unmounted and detached afterwards."""
    require("mkfs.btrfs", "btrfs")
    dev = loops("512M")
    sh("mkfs.btrfs", "-q", "-f", dev)
    mnt = tmp_path / "btrfs"
    mnt.mkdir()
    sh("mount", "-t", "btrfs", dev, str(mnt))
    try:
        yield str(mnt)
    finally:
        umount_below(str(mnt))
