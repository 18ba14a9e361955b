"""Storage commands cut short, continued (test_storage_cut_short.py has the first ones and
the helpers): holds, rollbacks, unmounts, pool imports and exports, ``disk.umount``,
``disk.protect`` and ``btrfs.device_add`` killed while a step is held
(``CORE0_TEST_STORAGE_HOLD``), or with their dispatcher killed -9 there.

Before: each such step went on after the job had answered KILLED (a zfs CLI's request in the
zfs-fuse daemon, a umount(2) in its thread, the kernel's device add), a killed hold or
device add was left for a retry to find (409), a killed import left the pool imported with
its mounts unchecked (an operator's without nosuid,nodev) and a retry 409, a killed export
mounted the datasets it had unmounted again without their nosuid,nodev, and a dispatcher
killed -9 in an export left the pool in ``zfs-pools.json`` (the zfs-fuse supervision would
import it back). The node has an operator queue (``op``). ZFS: run under
``flock /tmp/core0-zfs.lock``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Node, require, start_node, wait_until
from test_storage_cut_short import _ok, _result, _send, killed_at

if TYPE_CHECKING:
    from storage_fixtures import Loops, Pools

pytest_plugins = ["storage_fixtures"]
pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def hold_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hold2")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, hold_dir: Path) -> Iterator[Node]:
    """This module's node: the storage fault hook on, queues default (admin) and op
    (operator)."""
    base = tmp_path_factory.mktemp("cut2")
    cfg = base / "core0.toml"
    cfg.write_text('[main]\ninclude = []\n'
                   '[bus]\nqueues = {default = "admin", op = "operator"}\n')
    n = start_node(base / "state", config=str(cfg),
                   env={"CORE0_TEST_STORAGE_HOLD": f"any:{hold_dir}"})
    try:
        yield n
    finally:
        n.stop()


def _on(node: Node, bus: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
    return _result(node, _send(node, command, args, bus))


def _zget(name: str, prop: str) -> str:
    return subprocess.run(["zfs", "get", "-H", "-o", "value", prop, name], check=True,
                          capture_output=True, text=True).stdout.strip()


def _options(mountpoint: str) -> list[str] | None:
    """The per-mount options of the mount on ``mountpoint`` (None: nothing mounted)."""
    got = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()
            if p[4] == mountpoint:
                got = p[5].split(",")
    return got


def _imported() -> list[str]:
    return subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True,
                          text=True).stdout.split()


def _known(node: Node) -> dict[str, Any]:
    f = node.state_dir / "zfs-pools.json"
    return dict(json.loads(f.read_text())) if f.exists() else {}


@pytest.fixture
def pool(pools: Pools, tmp_path: Path, node: Node) -> str:
    """A pool (file vdev in its own directory) with an operator's dataset ``a``
    (setuid=off, devices=off: mounted nosuid,nodev)."""
    vdir = tmp_path / "vdevs"
    vdir.mkdir()
    vdev = vdir / "vdev.img"
    subprocess.run(["truncate", "-s", "256M", str(vdev)], check=True)
    name = pools.name()
    _ok(node, "zpool.create", {"name": name, "vdevs": [str(vdev)]})
    assert _on(node, "op", "zfs.create", {"name": f"{name}/a"})["state"] == "SUCCESS"
    assert {"nosuid", "nodev"} <= set(_options(f"/{name}/a") or []), _options(f"/{name}/a")
    return name


def test_an_admins_dataset_gets_what_its_properties_ask(node: Node, pool: str) -> None:
    """An admin's zfs.create / zfs.mount of a dataset with setuid=off, devices=off: mounted
    nosuid,nodev (zfs-fuse does not apply these properties itself; before, only a lower
    role's mounts and a zfs-fuse recovery got them); one with the defaults: neither."""
    ds, plain = f"{pool}/adm", f"{pool}/plain"
    _ok(node, "zfs.create", {"name": ds, "properties": {"setuid": "off", "devices": "off"}})
    _ok(node, "zfs.create", {"name": plain})
    assert {"nosuid", "nodev"} <= set(_options(f"/{ds}") or []), _options(f"/{ds}")
    assert not {"nosuid", "nodev"} & set(_options(f"/{plain}") or ["missing"])
    _ok(node, "zfs.unmount", {"name": ds})
    _ok(node, "zfs.mount", {"name": ds})
    assert {"nosuid", "nodev"} <= set(_options(f"/{ds}") or []), _options(f"/{ds}")


def test_killed_holds_rollbacks_unmounts_run_whole(node: Node, hold_dir: Path,
                                                  pool: str) -> None:
    """zfs.hold / release / rollback / unmount killed once the CLI is done (the daemon did
    it): the job answers after the step, a killed hold is released again; retries answer
    as for a finished step (before: answered while the daemon worked on, and the hold was
    left: retry 409 "tag already exists")."""
    ds, snap = f"{pool}/a", f"{pool}/a@s"
    _ok(node, "zfs.snapshot", {"name": ds, "snapname": "s"})
    hold = {"name": snap, "tag": "keep"}
    killed_at(node, hold_dir, "zfs hold", "zfs.hold", hold)
    assert _zget(snap, "userrefs") == "0"
    _ok(node, "zfs.hold", hold)
    killed_at(node, hold_dir, "zfs release", "zfs.release", hold)
    assert _zget(snap, "userrefs") == "0"
    Path(f"/{ds}/later").write_text("x")
    killed_at(node, hold_dir, "zfs rollback", "zfs.rollback", {"name": snap})
    assert not Path(f"/{ds}/later").exists()
    killed_at(node, hold_dir, "zfs unmount", "zfs.unmount", {"name": ds})
    assert _zget(ds, "mounted") == "no" and _options(f"/{ds}") is None
    assert _on(node, "default", "zfs.unmount", {"name": ds})["code"] == 404


def test_a_killed_import_is_exported_again(node: Node, hold_dir: Path, pool: str,
                                           tmp_path: Path) -> None:
    """zpool.import (an operator's) killed once the pool is imported: it is exported again
    and not remembered; a retry imports it, its mounts nosuid,nodev (before: left imported,
    its mounts never checked, the operator's dataset without nosuid,nodev, retry 409)."""
    _ok(node, "zpool.export", {"name": pool})
    args = {"name": pool, "dirs": [str(tmp_path / "vdevs")]}
    # killed once the CLI imported it, then once its mounts were checked (a kill held back
    # by that last step was raised where nothing undid it: KILLED with the pool left)
    for step in ("zpool import", "verify"):
        killed_at(node, hold_dir, step, "zpool.import", args, bus="op")
        assert pool not in _imported(), step
        assert pool not in _known(node), step
    assert _on(node, "op", "zpool.import", args)["state"] == "SUCCESS"
    assert pool in _known(node)
    assert {"nosuid", "nodev"} <= set(_options(f"/{pool}/a") or []), _options(f"/{pool}/a")


def test_a_killed_export_mounts_again_with_nosuid_nodev(node: Node, hold_dir: Path,
                                                        pool: str) -> None:
    """zpool.export (an operator's) killed after it unmounted a dataset: the dataset is
    mounted again with its nosuid,nodev, the pool still remembered (before: mounted again
    without them: zfs-fuse does not apply setuid=off itself)."""
    killed_at(node, hold_dir, "zfs unmount", "zpool.export", {"name": pool}, bus="op")
    assert pool in _imported() and pool in _known(node)
    assert {"nosuid", "nodev"} <= set(_options(f"/{pool}/a") or []), _options(f"/{pool}/a")


def test_creates_killed_in_their_last_step_leave_nothing(node: Node, hold_dir: Path,
                                                          pool: str) -> None:
    """zfs.create / zfs.mount killed while their last step (the check of the new mount)
    runs: the dataset is destroyed, the mount taken away again (before: the kill that step
    held back was raised where nothing undid it: KILLED, the dataset left, a retry 409)."""
    killed_at(node, hold_dir, "verify", "zfs.create", {"name": f"{pool}/v"})
    assert subprocess.run(["zfs", "list", f"{pool}/v"], capture_output=True).returncode != 0
    _ok(node, "zfs.create", {"name": f"{pool}/v"})
    _ok(node, "zfs.unmount", {"name": f"{pool}/v"})
    killed_at(node, hold_dir, "verify", "zfs.mount", {"name": f"{pool}/v"})
    assert _zget(f"{pool}/v", "mounted") == "no"
    _ok(node, "zfs.mount", {"name": f"{pool}/v"})


def _killed_9_at(node: Node, hold: Path, step: str, command: str,
                 args: dict[str, Any]) -> dict[str, Any]:
    """Run ``command`` with ``step`` held, kill its dispatcher -9 there → the answer the
    next dispatcher gives it."""
    for f in ("held", "go"):
        (hold / f).unlink(missing_ok=True)
    (hold / "step").write_text(step)
    try:
        jid = _send(node, command, args)
        assert wait_until((hold / "held").exists, 60), node.log_text()[-3000:]
        old = node.dispatcher_pid()
        os.kill(old, signal.SIGKILL)
    finally:
        (hold / "step").unlink(missing_ok=True)

    def back() -> bool:
        try:
            return node.dispatcher_pid() not in (0, old) and bool(node.redis().ping())
        except Exception:
            return False
    assert wait_until(back, 60, 0.2), node.log_text()[-3000:]
    res = _result(node, jid)
    assert (res["state"], res["code"]) == ("ERROR", 503), res  # interrupted
    return res


def test_pool_records_agree_after_a_dispatcher_killed_9(node: Node, hold_dir: Path,
                                                        pool: str, tmp_path: Path) -> None:
    """The dispatcher killed -9 once the CLI exported, or imported, the pool: the record of
    the pools to bring back (zfs-pools.json) agrees (before: an exported pool was still
    remembered — the zfs-fuse supervision imported it back — an imported one was not)."""
    _killed_9_at(node, hold_dir, "zpool export", "zpool.export", {"name": pool})
    assert pool not in _imported() and pool not in _known(node)
    _killed_9_at(node, hold_dir, "zpool import", "zpool.import",
                 {"name": pool, "dirs": [str(tmp_path / "vdevs")]})
    assert pool in _imported() and pool in _known(node)


def test_a_cut_umount_runs_whole_and_leaves_no_stale_record(
        node: Node, hold_dir: Path, loops: Loops, tmp_path: Path) -> None:
    """disk.umount killed between its umount(2) and its record: the job answers after
    both, a retry answers 404. Its dispatcher killed -9 there: the next disk.umount drops
    the id of the mount that is gone (before: answered KILLED at once, the thread
    unmounting and recording after the answer; the id stayed in disk-mounts.json)."""
    require("mkfs.ext4")
    dev = loops("128M")
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    target = str(tmp_path / "m")
    rec = node.state_dir / "disk-mounts.json"
    args = {"target": target}
    _ok(node, "disk.mount", {"source": dev, "target": target, "fstype": "ext4"})
    killed_at(node, hold_dir, "umount", "disk.umount", args)
    assert _options(target) is None
    assert json.loads(rec.read_text() if rec.exists() else "{}") == {}
    assert _on(node, "default", "disk.umount", args)["code"] == 404
    _ok(node, "disk.mount", {"source": dev, "target": target, "fstype": "ext4"})
    assert json.loads(rec.read_text()) != {}
    _killed_9_at(node, hold_dir, "umount", "disk.umount", args)
    assert _options(target) is None
    assert _on(node, "default", "disk.umount", args)["code"] == 404
    assert json.loads(rec.read_text()) == {}


def test_a_killed_protect_protects_partition_and_disk(node: Node, hold_dir: Path,
                                                      loops: Loops) -> None:
    """disk.protect killed after the partition was made read-only: its disk is made
    read-only too before the answer (before: a read-only partition on a writable disk)."""
    require("parted", "blockdev")
    dev = loops("128M")
    _ok(node, "disk.mktable", {"disk": dev, "table_type": "gpt"})
    part = _ok(node, "disk.mkpart", {"disk": dev, "start": "1MiB", "end": "64MiB"})["name"]
    disk = os.path.basename(dev)
    try:
        killed_at(node, hold_dir, "blockdev --setro", "disk.protect", {"disk": part})
        ro = [Path(f"/sys/block/{disk}/{p}ro").read_text().strip()
              for p in (f"{part}/", "")]
        assert ro == ["1", "1"], ro
    finally:
        _ok(node, "disk.protect", {"disk": part, "protect": False})


def test_a_killed_device_add_removes_the_device_again(node: Node, hold_dir: Path,
                                                      btrfs_mount: str,
                                                      loops: Loops) -> None:
    """btrfs.device_add killed once the kernel added the device: it is removed again (its
    superblock wiped), and a retry adds it (before: left a member, retry 409 "in use")."""
    dev = loops("512M")
    args = {"mountpoint": btrfs_mount, "devices": [dev]}
    killed_at(node, hold_dir, "btrfs device add", "btrfs.device_add", args)
    show = subprocess.run(["btrfs", "filesystem", "show", btrfs_mount], capture_output=True,
                          text=True, check=True).stdout
    assert dev not in show, show
    got = _ok(node, "btrfs.device_add", args)
    assert dev in [d["path"] for d in got["devices"]]
