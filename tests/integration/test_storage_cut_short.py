"""Storage commands killed half-way leave nothing behind, and their records agree with the
kernel: a fault hook (``CORE0_TEST_STORAGE_HOLD``, core0/storage/whole.py) holds a step right
where its effect is made — a mount(2) or btrfs ioctl in its worker thread, a zfs/zpool/parted
tool that has exited — the job is killed there, then the step is let go.

Before, the job answered KILLED at once and the step went on: the mount appeared after the
answer and was not in ``disk-mounts.json`` (its remount refused, 403; a retry 409), the
subvolume, dataset, snapshot, clone, pool or partition was there after the answer (a retry
409), a dataset a killed ``zfs destroy`` had unmounted stayed unmounted, and a killed
``zfs receive`` went on in the zfs-fuse daemon. Real loop devices, btrfs and zfs-fuse; the
ZFS cases use the global daemon: run this module under ``flock /tmp/core0-zfs.lock``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Node, require, start_node, wait_until

if TYPE_CHECKING:
    from storage_fixtures import Loops, Pools

pytest_plugins = ["storage_fixtures"]
pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def hold_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hold")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, hold_dir: Path) -> Iterator[Node]:
    """This module's node, with the storage fault hook on (used by ``zfs_daemon`` too)."""
    state = tmp_path_factory.mktemp("cut") / "state"
    n = start_node(state, env={"CORE0_TEST_STORAGE_HOLD": f"any:{hold_dir}"})
    try:
        yield n
    finally:
        n.stop()


def _send(node: Node, command: str, args: dict[str, Any], bus: str = "default") -> str:
    jid = f"cut-{uuid.uuid4().hex[:8]}"
    node.redis().rpush(f"core:{bus}", json.dumps(
        {"id": jid, "command": command, "arguments": args}))
    return jid


def _result(node: Node, jid: str, timeout: float = 120) -> dict[str, Any]:
    raw = node.redis().brpoplpush(f"result:{jid}", f"result:{jid}", int(timeout))
    assert raw is not None, node.log_text()[-3000:]
    res: dict[str, Any] = json.loads(raw)
    return res


def _call(node: Node, command: str, args: dict[str, Any]) -> dict[str, Any]:
    return _result(node, _send(node, command, args))


def _ok(node: Node, command: str, args: dict[str, Any]) -> Any:
    res = _call(node, command, args)
    assert res["state"] == "SUCCESS", res
    return json.loads(res["data"]) if res["data"] else None


def killed_at(node: Node, hold: Path, step: str, command: str,
              args: dict[str, Any], whole: bool = True, bus: str = "default"
              ) -> dict[str, Any]:
    """Run ``command`` (pushed on queue ``bus``) with ``step`` held, kill the job there,
    let the step go → the job's result. ``whole``: the step is one that runs to its end,
    so the job does not answer while it is held (before, it did, and a btrfs ioctl's thread
    then ran on a directory descriptor the killed job had closed: EBADF, or another
    file's)."""
    for f in ("held", "go"):
        (hold / f).unlink(missing_ok=True)
    (hold / "step").write_text(step)
    try:
        jid = _send(node, command, args, bus)
        assert wait_until((hold / "held").exists, 60), node.log_text()[-3000:]
        kill = _call(node, "job.kill", {"id": jid})
        assert kill["state"] == "SUCCESS", kill
        time.sleep(0.3)  # before, the job answered KILLED here, its step still held
        if whole:
            assert node.redis().llen(f"result:{jid}") == 0, "answered before its step ended"
        (hold / "go").touch()
        res = _result(node, jid)
        time.sleep(0.5)  # what a step left running would do now
    finally:
        (hold / "step").unlink(missing_ok=True)
    assert (res["state"], res["code"]) == ("KILLED", 499), res
    return res


def _mounts(where: str) -> list[tuple[int, str]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()
            if p[4] == where:
                out.append((int(p[0]), p[4]))
    return out


def test_a_killed_mount_is_taken_away_and_not_left_unrecorded(
        node: Node, hold_dir: Path, loops: Loops, tmp_path: Path) -> None:
    """disk.mount killed while its mount(2) is under way: the job answers once the mount
    is taken away again; the record has nothing, a retry mounts, and its remount works
    (before: mounted after the answer, not recorded, remount 403, retry 409)."""
    require("mkfs.ext4")
    dev = loops("256M")
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    target = tmp_path / "m"
    args = {"source": dev, "target": str(target), "fstype": "ext4"}
    killed_at(node, hold_dir, "mount", "disk.mount", args)
    assert _mounts(str(target)) == []
    rec = node.state_dir / "disk-mounts.json"
    assert json.loads(rec.read_text() if rec.exists() else "{}") == {}
    assert not (node.state_dir / "disk-mounts.pending.json").exists()
    _ok(node, "disk.mount", args)
    assert len(_mounts(str(target))) == 1
    _ok(node, "disk.mount", {**args, "options": "remount,ro"})
    _ok(node, "disk.umount", {"target": str(target)})


def test_a_mount_made_by_a_dispatcher_killed_9_is_known_to_the_next(
        node: Node, hold_dir: Path, loops: Loops, tmp_path: Path) -> None:
    """The dispatcher is killed -9 between the mount(2) and its record: the next one
    knows the mount (from the note taken before it), so its remount and umount work
    (before: a mount core0 made but did not know, remount refused with 403)."""
    require("mkfs.ext4")
    dev = loops("256M")
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    target = tmp_path / "m9"
    args = {"source": dev, "target": str(target), "fstype": "ext4"}
    for f in ("held", "go"):
        (hold_dir / f).unlink(missing_ok=True)
    (hold_dir / "step").write_text("mount")
    try:
        jid = _send(node, "disk.mount", args)
        assert wait_until((hold_dir / "held").exists, 60), node.log_text()[-3000:]
        old = node.dispatcher_pid()
        os.kill(old, signal.SIGKILL)
    finally:
        (hold_dir / "step").unlink(missing_ok=True)

    def back() -> bool:
        try:
            return node.dispatcher_pid() not in (0, old) and bool(node.redis().ping())
        except Exception:
            return False
    assert wait_until(back, 60, 0.2), node.log_text()[-3000:]
    res = _result(node, jid)
    assert (res["state"], res["code"]) == ("ERROR", 503), res  # interrupted
    assert len(_mounts(str(target))) == 1
    _ok(node, "disk.mount", {**args, "options": "remount,ro"})
    assert not (node.state_dir / "disk-mounts.pending.json").exists()
    _ok(node, "disk.umount", {"target": str(target)})


def _subvols(mnt: str) -> list[str]:
    out = subprocess.run(["btrfs", "subvolume", "list", mnt], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split()[-1] for line in out.splitlines())


def test_a_killed_subvolume_create_or_snapshot_leaves_none(
        node: Node, hold_dir: Path, btrfs_mount: str) -> None:
    """btrfs.subvol_create / subvol_snapshot killed while the ioctl is under way: no
    subvolume is left, and a retry succeeds (before: made after KILLED, retry 409)."""
    _ok(node, "btrfs.subvol_create", {"path": f"{btrfs_mount}/src"})
    before = _subvols(btrfs_mount)
    killed_at(node, hold_dir, "subvol", "btrfs.subvol_create", {"path": f"{btrfs_mount}/a"})
    killed_at(node, hold_dir, "subvol", "btrfs.subvol_snapshot",
              {"source": f"{btrfs_mount}/src", "destination": f"{btrfs_mount}/b"})
    assert _subvols(btrfs_mount) == before
    _ok(node, "btrfs.subvol_create", {"path": f"{btrfs_mount}/a"})
    _ok(node, "btrfs.subvol_snapshot", {"source": f"{btrfs_mount}/src",
                                        "destination": f"{btrfs_mount}/b"})


def test_a_killed_mkpart_leaves_no_partition(node: Node, hold_dir: Path,
                                             loops: Loops) -> None:
    """disk.mkpart killed once parted made the partition: it is removed again, the kernel
    and the table agree, and a retry succeeds (before: left, retry 409 "overlap")."""
    require("parted")
    dev = loops("256M")
    _ok(node, "disk.mktable", {"disk": dev, "table_type": "gpt"})
    args = {"disk": dev, "start": "1MiB", "end": "100MiB"}
    killed_at(node, hold_dir, "parted mkpart", "disk.mkpart", args)
    info = _ok(node, "disk.getinfo", {"disk": dev})
    assert info["partition_table"] == []
    name = os.path.basename(dev)
    assert not [p for p in os.listdir(f"/sys/block/{name}") if p.startswith(name + "p")]
    assert _ok(node, "disk.mkpart", args)["number"] == 1


def test_a_killed_mkfs_leaves_no_half_made_filesystem(node: Node, hold_dir: Path,
                                                      loops: Loops) -> None:
    """disk.mkfs / btrfs.create killed: the signatures the tool wrote are wiped, so a retry
    without force/overwrite is not refused (before: 409 "already carries ext4")."""
    require("mkfs.ext4", "wipefs")
    dev = loops("256M")
    killed_at(node, hold_dir, "mkfs.ext4", "disk.mkfs", {"device": dev, "fstype": "ext4"},
              whole=False)
    _ok(node, "disk.mkfs", {"device": dev, "fstype": "ext4"})
    # btrfs.create over two devices: both wiped (before: 409 "already carries btrfs")
    require("mkfs.btrfs")
    a, b = loops("256M"), loops("256M")
    args = {"devices": [a, b], "data": "raid1", "metadata": "raid1"}
    killed_at(node, hold_dir, "mkfs.btrfs", "btrfs.create", args, whole=False)
    _ok(node, "btrfs.create", args)


def _datasets(pool: str) -> list[str]:
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", pool],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


@pytest.fixture
def zpool(pools: Pools, tmp_path: Path, node: Node) -> str:
    vdev = tmp_path / "vdev.img"
    subprocess.run(["truncate", "-s", "512M", str(vdev)], check=True)
    name = pools.name()
    _ok(node, "zpool.create", {"name": name, "vdevs": [str(vdev)]})
    return name


def test_killed_zfs_creates_leave_nothing(node: Node, hold_dir: Path, zpool: str) -> None:
    """zfs.create / clone / snapshot killed once the CLI is done (the daemon has made it):
    nothing is left and a retry succeeds (before: left, retry 409)."""
    _ok(node, "zfs.create", {"name": f"{zpool}/src"})
    _ok(node, "zfs.snapshot", {"name": f"{zpool}/src", "snapname": "s"})
    before = _datasets(zpool)
    killed_at(node, hold_dir, "zfs create", "zfs.create", {"name": f"{zpool}/a"})
    killed_at(node, hold_dir, "zfs clone", "zfs.clone",
              {"origin": f"{zpool}/src@s", "name": f"{zpool}/c"})
    killed_at(node, hold_dir, "zfs snapshot", "zfs.snapshot",
              {"name": f"{zpool}/src", "snapname": "k"})
    assert _datasets(zpool) == before
    assert not [m for m in open("/proc/self/mountinfo").read().split()
                if m in (f"/{zpool}/a", f"/{zpool}/c")]
    _ok(node, "zfs.create", {"name": f"{zpool}/a"})
    _ok(node, "zfs.clone", {"origin": f"{zpool}/src@s", "name": f"{zpool}/c"})
    _ok(node, "zfs.snapshot", {"name": f"{zpool}/src", "snapname": "k"})


def test_a_killed_zfs_destroy_mounts_again_what_it_unmounted(
        node: Node, hold_dir: Path, zpool: str) -> None:
    """zfs.destroy killed after it unmounted the dataset (before the destroy): the dataset
    is still there and mounted again (before: left unmounted)."""
    _ok(node, "zfs.create", {"name": f"{zpool}/d"})
    killed_at(node, hold_dir, "zfs unmount", "zfs.destroy", {"name": f"{zpool}/d"})
    got = _ok(node, "zfs.get", {"name": f"{zpool}/d", "properties": ["mounted"]})
    assert got["properties"]["mounted"]["value"] == "yes", got


def test_a_killed_zpool_create_leaves_no_pool(node: Node, hold_dir: Path, pools: Pools,
                                              tmp_path: Path) -> None:
    """zpool.create killed once the CLI is done: the pool is destroyed again and not
    remembered; a retry succeeds (before: the pool stayed, retry 409)."""
    vdev = tmp_path / "vdev.img"
    subprocess.run(["truncate", "-s", "256M", str(vdev)], check=True)
    name = pools.name()
    args = {"name": name, "vdevs": [str(vdev)]}
    killed_at(node, hold_dir, "zpool create", "zpool.create", args)
    listed = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True,
                            text=True).stdout.split()
    assert name not in listed
    known = node.state_dir / "zfs-pools.json"
    assert name not in json.loads(known.read_text() if known.exists() else "{}")
    _ok(node, "zpool.create", args)


def test_a_killed_receive_stops_in_the_daemon(node: Node, zpool: str,
                                              tmp_path: Path) -> None:
    """zfs.receive killed while the daemon receives: its receive ends with the job (the
    stream comes through a pipe core0 closes) and the half-received dataset is destroyed;
    a retry succeeds (before: the daemon read the file to its end after KILLED, and the
    dataset was there, unmounted, retry 409)."""
    _ok(node, "zfs.create", {"name": f"{zpool}/src"})
    with open(f"/{zpool}/src/big", "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    _ok(node, "zfs.snapshot", {"name": f"{zpool}/src", "snapname": "s"})
    stream = tmp_path / "s.stream"
    _ok(node, "zfs.send", {"name": f"{zpool}/src@s", "file": str(stream)})
    (tmp_path / "big").unlink(missing_ok=True)
    _ok(node, "zfs.destroy", {"name": f"{zpool}/src", "recursive": True})
    args = {"name": f"{zpool}/r", "file": str(stream)}
    jid = _send(node, "zfs.receive", args)
    assert wait_until(lambda: f"{zpool}/r" in _datasets(zpool), 30, 0.005)
    assert _call(node, "job.kill", {"id": jid})["state"] == "SUCCESS"
    res = _result(node, jid)
    assert (res["state"], res["code"]) == ("KILLED", 499), res
    time.sleep(2)  # the daemon's receive, were it going on, would grow the dataset now
    assert f"{zpool}/r" not in _datasets(zpool)
    _ok(node, "zfs.receive", args)
