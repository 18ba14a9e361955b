"""Hostile use of the file, mount and storage commands from operator and read-only queues
(``filesystem_root`` a temp dir; queues default=admin, op=operator, ro=read-only): every
refusal is a typed 4xx, nothing lands outside the root, and at the end the node still answers
an admin ping within 1 s with the dispatcher's descriptors bounded.

ZFS cases use the global zfs-fuse daemon: run this module under ``flock /tmp/core0-zfs.lock``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Node, require, require_root, start_node, unavailable, wait_until

if TYPE_CHECKING:
    from storage_fixtures import Loops

pytest_plugins = ["storage_fixtures"]


def _sf() -> Any:
    import storage_fixtures

    return storage_fixtures


def need(cond: bool, msg: str) -> None:
    """Skip locally, fail in CI (like conftest.require) when a precondition is missing."""
    if not cond:
        unavailable(msg)


class Hostile:
    """A node with three queues, and calls that return the whole result."""

    def __init__(self, node: Node, root: Path, base: Path):
        self.node = node
        self.root = root
        self.base = base
        self.r = node.redis()

    def call(self, queue: str, command: str, args: dict, timeout: float = 60) -> dict:
        jid = uuid.uuid4().hex
        self.r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command,
                                                  "arguments": args}))
        raw = self.r.brpoplpush(f"result:{jid}", f"result:{jid}", timeout)
        assert raw is not None, (queue, command, "no result")
        return json.loads(raw)

    def code(self, queue: str, command: str, args: dict) -> int:
        res = self.call(queue, command, args)
        assert res["code"] != 500, (command, res["data"])
        return int(res["code"]) if res["state"] != "SUCCESS" else 0

    def ok(self, queue: str, command: str, args: dict) -> Any:
        res = self.call(queue, command, args)
        assert res["state"] == "SUCCESS", (command, res["data"])
        return json.loads(res["data"]) if res["data"] else None

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.node.dispatcher_pid()}/fd"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    require_root()
    base = tmp_path_factory.mktemp("storage-hostile")
    root = base / "root"
    root.mkdir()
    cfg = base / "core0.toml"
    cfg.write_text(f'[main]\nfilesystem_root = "{root}"\ninclude = []\nfd_max = 20\n'
                   '[bus]\nqueues = {default = "admin", op = "operator", ro = "read-only"}\n')
    node = start_node(base / "state", config=str(cfg))
    h = Hostile(node, root, base)
    fds0 = h.fds()
    try:
        yield h
        # the end: an admin ping within 1 s, the dispatcher's descriptors bounded
        with node.client(timeout=5) as c:
            assert c.raw("core.ping", {}).get(timeout=1).state.value == "SUCCESS"
        assert h.fds() <= fds0 + 16, (fds0, h.fds())
    finally:
        _sf().umount_below(str(root))
        node.stop()


def mount_options(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()
            if p[4] == str(path):
                return p[5].split(",")
    raise AssertionError(f"not mounted: {path}")


def test_files_hostile(hostile: Hostile) -> None:
    h = hostile
    # read-only: no writes at all
    assert h.code("ro", "filesystem.mkdir", {"path": "/x"}) == 403
    assert h.code("ro", "filesystem.chmod", {"path": "/", "mode": 0o777}) == 403
    # a name over 255 bytes: 400, not 500; a path deeper than 256 components: 400
    assert h.code("op", "filesystem.exists", {"path": "/" + "n" * 300}) == 400
    assert h.code("default", "filesystem.mkdir", {"path": "/a" * 2000}) == 400
    # recursive chmod/chown/remove of a 2,000-level tree (built outside the API): no
    # RecursionError
    fd = os.open(h.root, os.O_RDONLY)
    os.mkdir("deep", dir_fd=fd)
    for _ in range(2000):
        nfd = os.open("deep" if _ == 0 else "a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        os.mkdir("a", dir_fd=fd)
    os.close(fd)
    h.ok("default", "filesystem.chmod", {"path": "/deep", "mode": 0o700, "recursive": True})
    h.ok("default", "filesystem.chown", {"path": "/deep", "user": "1234", "recursive": True})
    assert (h.root / "deep" / "a" / "a").stat().st_uid == 1234
    assert h.ok("default", "filesystem.remove", {"path": "/deep"}) is True
    assert not (h.root / "deep").exists()
    # 500 failing chmods leak no descriptor
    before = h.fds()
    for i in range(500):
        assert h.code("default", "filesystem.chmod", {"path": f"/missing{i}/x",
                                                      "mode": 0o644}) == 404
    assert h.fds() <= before + 2, (before, h.fds())
    # a FIFO is refused unless asked, and opening it never blocks the loop
    os.mkfifo(h.root / "fifo")
    assert h.code("default", "filesystem.open", {"file": "/fifo"}) == 400
    token = h.ok("default", "filesystem.open", {"file": "/fifo", "special": True})
    assert h.ok("ro", "core.ping", {}) is not None
    assert h.ok("default", "filesystem.read", {"fd": token}) == ""
    assert h.ok("default", "filesystem.close", {"fd": token}) is True
    # tokens are capped per role (fd_max = 20 here): 503 beyond, fine again after closing
    (h.root / "f").write_text("x")
    tokens = [h.ok("default", "filesystem.open", {"file": "/f"}) for _ in range(20)]
    assert h.code("default", "filesystem.open", {"file": "/f"}) == 503
    for t in tokens:
        h.ok("default", "filesystem.close", {"fd": t})
    t = h.ok("default", "filesystem.open", {"file": "/f", "mode": "a"})
    assert h.ok("default", "filesystem.write", {"fd": t, "block": base64.b64encode(
        b"y").decode()}) == 1
    h.ok("default", "filesystem.close", {"fd": t})
    assert (h.root / "f").read_text() == "xy"


def test_mount_hostile(hostile: Hostile, loops: Loops) -> None:
    require("mkfs.ext4")
    h = hostile
    dev = loops("64M")
    _sf().sh("mkfs.ext4", "-q", "-F", dev)
    # read-only queues may not mount at all
    assert h.code("ro", "disk.mount", {"source": dev, "target": "/m"}) == 403
    # allow-listed options only
    for opts in (["exec"], ["suid"], ["dev"], ["ro", "exec"], "rw,suid", ["helper=x"],
                 ["x-mount.mkdir"], ["context=x"], "errors=bogus", ["subvol=/x"]):
        assert h.code("op", "disk.mount", {"source": dev, "target": "/m",
                                           "options": opts}) == 400, opts
    assert not [m for m in _sf().mountinfo() if m[2] == dev]
    # 0-core's comma-joined string; an operator's mount is nosuid,nodev whatever it asks
    got = h.ok("op", "disk.mount", {"source": dev, "target": "/m", "options": "noatime,ro"})
    assert got["target"] == str(h.root / "m")
    opts = mount_options(h.root / "m")
    assert {"nosuid", "nodev", "noatime", "ro"} <= set(opts), opts
    # remount: of core0's own mount, yes (flags only); of anything else, 403
    h.ok("op", "disk.mount", {"source": dev, "target": "/m", "options": ["remount", "rw"]})
    assert "rw" in mount_options(h.root / "m") and "nosuid" in mount_options(h.root / "m")
    assert h.code("op", "disk.mount", {"source": dev, "target": "/m",
                                       "options": ["remount", "rw", "errors=panic"]}) == 400
    other = h.root / "other"
    other.mkdir()
    _sf().sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other))
    assert h.code("op", "disk.mount", {"source": dev, "target": "/other",
                                       "options": ["remount", "ro"]}) == 403
    assert h.code("op", "disk.mount", {"source": dev, "target": "/",
                                       "options": ["remount", "ro"]}) == 403
    assert "rw" in mount_options(other)
    _sf().sh("umount", str(other))
    # 0-core's disk.umount {source}: a device, or a mount point
    assert h.ok("op", "disk.umount", {"source": dev}) == {"unmounted": [str(h.root / "m")]}
    h.ok("op", "disk.mount", {"source": dev, "target": "/m2"})
    assert h.ok("op", "disk.umount", {"source": "/m2"}) == {"unmounted": [str(h.root / "m2")]}
    assert h.code("op", "disk.umount", {"source": "/m2"}) == 404
    assert h.code("op", "disk.umount", {"target": "/"}) == 400
    assert h.code("ro", "disk.umount", {"source": dev}) == 403


def _daemon_pid(h: Hostile) -> int | None:
    try:
        return int((h.node.state_dir / "zfs-fuse.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _zfs_mounts(name: str) -> list[tuple[str, list[str]]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()
            sep = p.index("-")
            if p[sep + 2] == name or p[sep + 2].startswith(name + "/"):
                out.append((p[4], p[5].split(",")))
    return out


def test_zfs_hostile(hostile: Hostile, loops: Loops) -> None:
    require("zfs-fuse", "zpool", "zfs")
    h = hostile
    already = _sf().zfs_running()
    h.ok("default", "zpool.list", {})  # starts the daemon when none runs
    ours = not already and _daemon_pid(h) is not None
    pools = _sf().Pools()
    try:
        _zfs_cases(h, loops, pools, ours)
    finally:
        pools.cleanup()
        pid = _daemon_pid(h)
        if ours and pid is not None:
            _sf().stop_pid(pid)


def _zfs_cases(h: Hostile, loops: Loops, pools: Any, ours: bool) -> None:
    root = h.root
    outside = h.base / "outside"
    outside.mkdir(exist_ok=True)
    pool = pools.name()
    # file vdevs are the admin's (ZFS opens them by path): 403 for an operator
    img = root / "vdev.img"
    os.truncate(os.open(img, os.O_CREAT | os.O_WRONLY, 0o600), 128 << 20)
    assert h.code("op", "zpool.create", {"name": pool, "vdevs": [str(img)]}) == 403
    assert h.code("ro", "zpool.create", {"name": pool, "vdevs": ["loop0"]}) == 403
    dev = loops("256M")
    # a pool's default mount point is inside the root; fs_properties are confined too
    assert h.code("op", "zpool.create", {"name": pool, "vdevs": [dev],
                                         "fs_properties": {"setuid": "on"}}) == 403
    assert h.code("op", "zpool.create", {"name": pool, "vdevs": [dev],
                                         "properties": {"cachefile": "/etc/x"}}) == 403
    h.ok("op", "zpool.create", {"name": pool, "vdevs": [dev],
                                "properties": {"cachefile": "none"},
                                "fs_properties": {"mountpoint": str(outside / "p")}})
    mounts = _zfs_mounts(pool)
    assert [mp for mp, _ in mounts] == [str(root) + str(outside / "p")], mounts
    assert all({"nosuid", "nodev"} <= set(o) for _, o in mounts), mounts
    # dataset mount points: property or inherited, always inside the root
    h.ok("op", "zfs.create", {"name": f"{pool}/a", "properties": {"mountpoint": "/etc/evil"}})
    assert (root / "etc" / "evil").is_dir() and not Path("/etc/evil").exists()
    h.ok("op", "zfs.set", {"name": f"{pool}/a",
                           "properties": {"mountpoint": str(outside / "a")}})
    assert not os.path.ismount(outside / "a")
    assert os.path.ismount(str(root) + str(outside / "a"))
    h.ok("op", "zfs.snapshot", {"name": f"{pool}/a", "snapname": "s"})
    h.ok("op", "zfs.clone", {"origin": f"{pool}/a@s", "name": f"{pool}/c",
                             "properties": {"mountpoint": str(outside / "c")}})
    h.ok("op", "zfs.create", {"name": f"{pool}/b"})
    for mp, opts in _zfs_mounts(pool):
        assert mp.startswith(str(root) + "/"), mp
        assert {"nosuid", "nodev"} <= set(opts), (mp, opts)
    # setuid/devices: off for lower roles, 403 when asked on
    for prop in ("setuid", "devices"):
        assert h.code("op", "zfs.create", {"name": f"{pool}/x",
                                           "properties": {prop: "on"}}) == 403
        assert h.code("op", "zfs.set", {"name": f"{pool}/a", "properties": {prop: "on"}}) == 403
    got = h.ok("ro", "zfs.get", {"name": f"{pool}/b", "properties": ["setuid", "devices"]})
    assert {k: v["value"] for k, v in got["properties"].items()} == {"setuid": "off",
                                                                       "devices": "off"}
    # sizes: an integer with a unit (400 from the schema check, not 500 from the tool)
    assert h.code("op", "zfs.create", {"name": f"{pool}/q", "properties": {"quota": "1.5G"}}) \
        == 400
    assert h.code("op", "zfs.set", {"name": f"{pool}/a", "properties": {"quota": "1.5G"}}) \
        == 400
    # a create whose mount fails leaves no dataset
    busy = root / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    assert h.code("op", "zfs.create", {"name": f"{pool}/m",
                                       "properties": {"mountpoint": "/busy"}}) == 409
    assert h.ok("ro", "zfs.exists", {"name": f"{pool}/m"}) is False
    # overlay: refused on zfs-fuse (412), and the daemon survives
    h.ok("op", "zfs.unmount", {"name": f"{pool}/b"})
    assert h.code("op", "zfs.mount", {"name": f"{pool}/b", "overlay": True}) == 412
    h.ok("op", "zfs.mount", {"name": f"{pool}/b"})
    # a received stream's mount point (sent with properties) is moved inside the root
    _sf().sh("zfs", "create", "-o", f"mountpoint={outside / 'src'}", f"{pool}/src")
    (outside / "src" / "data").write_text("sent\n")
    _sf().sh("zfs", "snapshot", f"{pool}/src@s1")
    stream = root / "s1.zstream"
    with open(stream, "wb") as f:
        subprocess.run(["zfs", "send", "-p", f"{pool}/src@s1"], stdout=f, check=True,
                       timeout=120)
    # zfs-fuse calls a dataset mounted a moment ago "busy" for a while: retry
    assert wait_until(lambda: _sf().sh("zfs", "destroy", "-r", "-f", f"{pool}/src",
                                       check=False).returncode == 0, 60, 0.5)
    assert h.code("op", "zfs.receive", {"name": f"{pool}/r", "file": "/s1.zstream"}) == 403
    h.ok("default", "zfs.receive", {"name": f"{pool}/r", "file": "/s1.zstream"})
    assert not os.path.ismount(outside / "src")
    inner = Path(str(root) + str(outside / "src"))
    assert (inner / "data").read_text() == "sent\n"
    # the daemon dies (as the overlay mount made it die): core0 notices, restarts it, imports
    # the pool again and remounts
    need(ours, "the zfs-fuse daemon was not started by this test's node: not killing it")
    pid = _daemon_pid(h)
    assert pid is not None
    inner_a = Path(str(root) + str(outside / "a"))  # where pool/a is mounted now
    with open(inner_a / "kept", "w") as f:
        f.write("kept\n")
        f.flush()
        os.fsync(f.fileno())  # in the pool's intent log before the daemon dies
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: _daemon_pid(h) not in (None, pid) and _sf().zfs_running(), 60), \
        "zfs-fuse was not restarted"
    assert wait_until(lambda: os.path.ismount(inner_a), 60), \
        "the datasets were not mounted again"
    assert (inner_a / "kept").read_text() == "kept\n"
    rows = {r["name"]: r for r in h.ok("ro", "zfs.list", {"name": pool})}
    assert rows[f"{pool}/a"]["mounted"] is True
    for mp, opts in _zfs_mounts(pool):  # the operator's datasets (setuid=off, devices=off)
        if not mp.startswith(str(inner.parent)):
            assert {"nosuid", "nodev"} <= set(opts), (mp, opts)
