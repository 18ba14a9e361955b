"""Storage parsers on captured tool output (zfs-fuse, OpenZFS, btrfs-progs 6.2, util-linux
2.38, parted 3.5), the name patterns, stderr classification, and the libzfs_core backend
against a narrow fake of pyzfs's ``libzfs_core`` module."""

from __future__ import annotations

import asyncio
import errno
import re
from typing import Any

import pytest

from core0.errors import BadRequest, Conflict, Internal, NotFound, PreconditionFailed
from core0.proc.process import RunResult
from core0.schema import Pattern
from core0.storage import names, parse, tools

LSBLK = """{"blockdevices": [
 {"name": "loop0", "kname": "loop0", "path": "/dev/loop0", "type": "loop", "size": 1073741824,
  "model": null, "serial": null, "rota": true, "ro": false, "rm": false, "fstype": null,
  "label": null, "uuid": null, "partuuid": null, "partlabel": null, "pttype": null,
  "mountpoints": [null], "maj:min": "7:0", "pkname": null,
  "children": [
   {"name": "loop0p1", "kname": "loop0p1", "path": "/dev/loop0p1", "type": "part",
    "size": 51380224, "model": null, "serial": null, "rota": true, "ro": false, "rm": false,
    "fstype": null, "label": null, "uuid": null, "partuuid": null, "partlabel": null,
    "pttype": null, "mountpoints": ["/mnt/a", "/mnt/b"], "maj:min": "259:0",
    "pkname": "loop0"}]},
 {"name": "sda", "kname": "sda", "path": "/dev/sda", "type": "disk", "size": 500107862016,
  "model": "Samsung SSD 860  ", "serial": "S3Z9NB0K", "rota": false, "ro": false, "rm": false,
  "fstype": "ext4", "label": "root", "uuid": "u-1", "partuuid": null, "partlabel": null,
  "pttype": null, "mountpoints": [null], "maj:min": "8:0", "pkname": null}
]}"""

BLKID = """DEVNAME=/dev/loop0p1
LABEL=my\\ label
UUID=33d130b6-46f3-42a7-9a78-60e6dbf08eef
BLOCK_SIZE=1024
TYPE=ext4
PARTLABEL=primary
PARTUUID=22163274-cd24-447a-874a-df18964aadd7

DEVNAME=/dev/loop0
PTUUID=a02d9484-7d09-48aa-a0fb-8f0a8077872d
PTTYPE=gpt
"""

PARTED = """BYT;
/dev/loop0:209715200B:loopback:512:512:gpt:Loopback device:;
1:17408B:1048575B:1031168B:free;
1:1048576B:52428799B:51380224B:ext4:primary:boot, esp;
2:52428800B:104857599B:52428800B::my:name:;
1:104857600B:209698303B:104840704B:free;
"""

MOUNTINFO = """22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
90 27 259:0 / /mnt/with\\040space rw,noatime shared:40 - ext4 /dev/loop0p1 rw
91 27 0:45 /sv1 /srv/sv rw,relatime - btrfs /dev/loop1 rw,space_cache=v2,subvol=/sv1
"""

FUSE_STATUS = """  pool: tp2
 state: ONLINE
 scrub: none requested
config:

\tNAME                   STATE     READ WRITE CKSUM
\ttp2                    ONLINE       0     0     0
\t  mirror-0             ONLINE       0     0     0
\t    /tmp/stest/m1.img  ONLINE       0     0     0
\t    /tmp/stest/m2.img  ONLINE       0     0     0

errors: No known data errors

  pool: tl
 state: ONLINE
 scrub: none requested
config:

\tNAME        STATE     READ WRITE CKSUM
\ttl          ONLINE       0     0     0
\t  loop1     ONLINE       0     0     0

errors: No known data errors
"""

OPENZFS_STATUS = """  pool: tank
 state: DEGRADED
status: One or more devices could not be opened.  Sufficient replicas exist for
\tthe pool to continue functioning in a degraded state.
action: Attach the missing device and online it using 'zpool online'.
   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-2Q
  scan: scrub repaired 0B in 00:00:01 with 0 errors on Sun Nov 22 02:00:00 2026
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        DEGRADED     0     0     0
\t  raidz1-0  DEGRADED     0     0     0
\t    sdb     ONLINE       0     0     0
\t    sdc     UNAVAIL      0     0     0  cannot open
\t    sdd     ONLINE       0     0     0
\tlogs
\t  sde       ONLINE       0     0     0

errors: No known data errors
"""

IMPORTABLE = """  pool: tl
    id: 9385608060886854090
 state: ONLINE
action: The pool can be imported using its name or numeric identifier.
config:

\ttl          ONLINE
\t  loop1     ONLINE
"""

BTRFS_SHOW = """Label: 'blab'  uuid: 0688256a-37fd-463a-9639-44ec654cba17
\tTotal devices 2 FS bytes used 147456
\tdevid    1 size 314572800 used 109051904 path /dev/loop1
\tdevid    2 size 314572800 used 109051904 path /dev/loop2

Label: none  uuid: 11111111-2222-3333-4444-555555555555
\tTotal devices 1 FS bytes used 144.00KiB
\tdevid    1 size 300.00MiB used 104.00MiB path /dev/loop3

"""

BTRFS_DF = """{"__header": {"version": "1"}, "filesystem-df": [
  {"bg-type": "Data", "bg-profile": "RAID1", "total": "67108864", "used": "0"},
  {"bg-type": "System", "bg-profile": "RAID1", "total": "8388608", "used": "16384"},
  {"bg-type": "Metadata", "bg-profile": "RAID1", "total": "33554432", "used": "131072"},
  {"bg-type": "GlobalReserve", "bg-profile": "single", "total": "5767168", "used": "0"}]}
"""

SUBVOLS = (
    "ID 256 gen 10 parent 5 top level 5 parent_uuid -                                    "
    "uuid 7d11f55c-017b-f643-8d6b-4355befa28a6 path sv1\n"
    "ID 258 gen 10 parent 5 top level 5 parent_uuid 7d11f55c-017b-f643-8d6b-4355befa28a6 "
    "uuid 6db57a55-0856-844a-8ac6-faea11166c25 path snaps/snap 1\n"
)

QGROUPS = """Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path
--------    ----------    ---------  --------------  -------------   ----
0/5              16384        16384            none           none   <toplevel>
0/256            16384        16384        20971520           none   sv1
"""


def test_sizes() -> None:
    assert parse.parse_size("250M") == 250 << 20
    assert parse.parse_size("1.56M") == round(1.56 * (1 << 20))
    assert parse.parse_size("114688") == 114688
    assert parse.parse_size("144.00KiB") == 144 << 10
    assert parse.parse_size("2T") == 2 << 40
    for empty in ("-", "none", "", None, "weird"):
        assert parse.parse_size(empty) is None


def test_lsblk_and_blkid_merge() -> None:
    devs = parse.parse_lsblk(LSBLK)
    assert [d["name"] for d in devs] == ["loop0", "sda"]
    sda = devs[1]
    assert sda["model"] == "Samsung SSD 860" and sda["rotational"] is False
    assert sda["mountpoints"] == [] and sda["partitions"] == []
    part = devs[0]["partitions"][0]
    assert part["mountpoints"] == ["/mnt/a", "/mnt/b"] and part["majmin"] == "259:0"
    probe = parse.parse_blkid_export(BLKID)
    assert probe["/dev/loop0p1"]["LABEL"] == "my label"
    parse.merge_blkid(devs, probe)
    assert part["fstype"] == "ext4" and part["label"] == "my label"
    assert part["partuuid"] == "22163274-cd24-447a-874a-df18964aadd7"
    assert devs[0]["pttype"] == "gpt"
    assert sda["fstype"] == "ext4" and sda["uuid"] == "u-1"  # lsblk's own values kept


def test_parted() -> None:
    info = parse.parse_parted(PARTED)
    assert info["size"] == 209715200 and info["table"] == "gpt"
    assert info["logical_sector"] == 512
    p1, p2 = info["partitions"]
    assert p1 == {"number": 1, "start": 1048576, "end": 52428799, "size": 51380224,
                  "fstype": "ext4", "name": "primary", "flags": ["boot", "esp"]}
    assert p2["name"] == "my:name" and p2["fstype"] is None and p2["flags"] == []
    assert [f["start"] for f in info["free"]] == [17408, 104857600]
    blank = parse.parse_parted("BYT;\n/dev/loop1:1048576B:loopback:512:512:unknown:Loop:;\n")
    assert blank["table"] is None and blank["partitions"] == []


def test_mountinfo() -> None:
    ms = parse.parse_mountinfo(MOUNTINFO)
    assert ms[2].mountpoint == "/mnt/with space" and ms[2].majmin == "259:0"
    assert ms[2].source == "/dev/loop0p1" and "noatime" in ms[2].options
    assert ms[3].fstype == "btrfs" and ms[3].root == "/sv1"


def test_zpool_status_zfs_fuse() -> None:
    pools = parse.parse_zpool_status(FUSE_STATUS)
    assert [p["name"] for p in pools] == ["tp2", "tl"]
    mirror = pools[0]["vdevs"][0]
    assert mirror["name"] == "mirror-0" and mirror["state"] == "ONLINE"
    assert [c["name"] for c in mirror["children"]] == ["/tmp/stest/m1.img",
                                                       "/tmp/stest/m2.img"]
    assert pools[0]["scan"] == "none requested"
    assert pools[0]["errors"] == "No known data errors"
    assert pools[1]["vdevs"][0]["name"] == "loop1"


def test_zpool_status_openzfs() -> None:
    (p,) = parse.parse_zpool_status(OPENZFS_STATUS)
    assert p["state"] == "DEGRADED"
    assert p["status"].startswith("One or more devices") and "degraded state" in p["status"]
    assert p["scan"].startswith("scrub repaired")
    raidz, logs = p["vdevs"]
    assert raidz["name"] == "raidz1-0" and len(raidz["children"]) == 3
    assert raidz["children"][1]["message"] == "cannot open"
    assert logs["name"] == "logs" and logs["children"][0]["name"] == "sde"


def test_zpool_import_listing() -> None:
    (p,) = parse.parse_zpool_status(IMPORTABLE)
    assert p["name"] == "tl" and p["id"] == "9385608060886854090"
    assert p["vdevs"][0]["name"] == "loop1"


def test_zfs_get_and_holds() -> None:
    got = parse.parse_zfs_get("tp1/a\tused\t114688\t-\ntp1/a\tquota\t0\tdefault\n"
                              "tp1/b\tmountpoint\t/x y\tinherited from tp1\n")
    assert got["tp1/a"]["used"] == {"value": "114688", "source": "-"}
    assert got["tp1/b"]["mountpoint"]["source"] == "inherited from tp1"
    holds = parse.parse_zfs_holds("tank/a@s\tkeep\t1795313577\n")
    assert holds == [{"name": "tank/a@s", "tag": "keep", "timestamp": 1795313577}]


def test_btrfs() -> None:
    a, b = parse.parse_btrfs_show(BTRFS_SHOW)
    assert a["label"] == "blab" and a["total_devices"] == 2 and a["used"] == 147456
    assert [d["path"] for d in a["devices"]] == ["/dev/loop1", "/dev/loop2"]
    assert b["label"] is None and b["devices"][0]["size"] == 300 << 20
    df = parse.parse_btrfs_df(BTRFS_DF)
    assert df["data"] == {"profile": "raid1", "total": 67108864, "used": 0}
    assert df["globalreserve"]["profile"] == "single"
    with pytest.raises(ValueError):
        parse.parse_btrfs_df("Data, single: total=8388608, used=0\n")
    s1, s2 = parse.parse_subvol_list(SUBVOLS)
    assert s1["id"] == 256 and s1["parent_uuid"] is None and s1["path"] == "sv1"
    assert s2["parent_uuid"] == s1["uuid"] and s2["path"] == "snaps/snap 1"
    q = parse.parse_qgroup_show(QGROUPS)
    assert q[1] == {"qgroupid": "0/256", "referenced": 16384, "exclusive": 16384,
                    "max_referenced": 20971520, "max_exclusive": None, "path": "sv1"}


@pytest.mark.parametrize("pattern,good,bad", [
    (names.DEVICE_RE, ["sda", "loop0p1", "nvme0n1p2", "/dev/dm-0"],
     ["-rf", "../sda", "/dev/../sda", "sda; reboot", "sda b", "/dev/mapper/x", ""]),
    (names.DATASET_RE, ["tank", "tank/a", "tank/a.b/c-d:e", "t/_x"],
     ["-rf", "../x", "tank/../x", "tank/-x", "tank/.x", "pool; reboot", "tank//a",
      "tank/", "/tank", "tank a", "tank/a@s", "1tank"]),
    (names.SNAPSHOT_RE, ["tank/a@s1", "tank@x"], ["tank/a@", "tank/a@-x", "tank/a@s@t"]),
    (names.ABS_PATH_RE, ["/", "/mnt/a b", "/a/.hidden", "/a..b"],
     ["relative", "../x", "/a/../b", "/a/./b", "/..", "/a\nb", "/a\x00b", ""]),
    (names.SIZE_RE, ["512M", "1.5G", "100%", "2048s", "1MiB", "1048576"],
     ["-1s", "1G; reboot", "", "M"]),
])
def test_name_patterns(pattern: str, good: list[str], bad: list[str]) -> None:
    p = Pattern(pattern)
    for g in good:
        assert p.check(g), g
    for b in bad:
        assert not p.check(b), b


def test_classify() -> None:
    def cls(stderr: str) -> Any:
        return tools.classify(stderr)
    assert cls("cannot open 'x': dataset does not exist") is NotFound
    assert cls("cannot create 'x': dataset already exists") is Conflict
    assert cls("cannot destroy 'tp1/x': dataset is busy") is Conflict
    assert cls("internal error: Function not implemented") is PreconditionFailed
    assert cls("'compression' must be one of 'on | off'") is BadRequest
    assert cls("something odd") is None
    res = RunResult(["zfs", "x"], 1, "", "weird failure")
    assert "weird failure" in str(tools.tool_error(res))


# ---------------------------------------------------------------- libzfs_core backend


class ZFSError(Exception):
    def __init__(self, code: int):
        super().__init__(errno.errorcode.get(code, str(code)))
        self.errno = code


class FakeLzc:
    """The few functions of pyzfs's libzfs_core that the backend calls."""

    def __init__(self) -> None:
        self.datasets: set[bytes] = {b"tank", b"tank/a", b"tank/a@s"}
        self.holds: dict[bytes, dict[bytes, int]] = {}
        self.calls: list[str] = []

    def lzc_exists(self, name: bytes) -> bool:
        self.calls.append("exists")
        return name in self.datasets

    def lzc_create(self, name: bytes, ds_type: str = "zfs") -> None:
        self.calls.append("create")
        if name in self.datasets:
            raise ZFSError(errno.EEXIST)
        self.datasets.add(name)

    def lzc_snapshot(self, snaps: list[bytes]) -> None:
        self.calls.append("snapshot")
        self.datasets.update(snaps)

    def lzc_clone(self, name: bytes, origin: bytes) -> None:
        self.calls.append("clone")
        if origin not in self.datasets:
            raise ZFSError(errno.ENOENT)
        self.datasets.add(name)

    def lzc_destroy_snaps(self, snaps: list[bytes], defer: bool) -> None:
        self.calls.append("destroy_snaps")
        for s in snaps:
            if self.holds.get(s) and not defer:
                raise ZFSError(errno.EBUSY)
            self.datasets.discard(s)

    def lzc_hold(self, holds: dict[bytes, bytes]) -> list[bytes]:
        self.calls.append("hold")
        for snap, tag in holds.items():
            self.holds.setdefault(snap, {})[tag] = 1795313577
        return []

    def lzc_release(self, holds: dict[bytes, list[bytes]]) -> list[bytes]:
        self.calls.append("release")
        for snap, tags in holds.items():
            for t in tags:
                if t not in self.holds.get(snap, {}):
                    raise ZFSError(errno.ESRCH)
                del self.holds[snap][t]
        return []

    def lzc_get_holds(self, snap: bytes) -> dict[bytes, int]:
        self.calls.append("get_holds")
        return dict(self.holds.get(snap, {}))


class FakeCtx:
    """to_thread and run: what the backend uses of core0.context.Context."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    async def to_thread(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def run(self, argv: list[str], **kw: Any) -> RunResult:
        self.argvs.append(list(argv))
        return RunResult(list(argv), 0, "", "")


def test_lzc_backend() -> None:
    from core0.storage.zfs_lzc import LzcBackend

    lzc, ctx = FakeLzc(), FakeCtx()
    be = LzcBackend(ctx, "openzfs", lzc)  # type: ignore[arg-type]

    async def go() -> None:
        assert await be.exists("tank/a") is True
        assert await be.exists("tank/nope") is False
        await be.create("tank/b", "filesystem", None, {}, False, False)
        assert ctx.argvs[-1] == ["zfs", "mount", "--", "tank/b"]  # lzc does not mount
        with pytest.raises(Conflict):
            await be.create("tank/b", "filesystem", None, {}, False, False)
        assert await be.snapshot("tank/b", "s1", False, {}) == "tank/b@s1"
        await be.clone("tank/b@s1", "tank/c", {}, False)
        with pytest.raises(NotFound):
            await be.clone("tank/b@nope", "tank/d", {}, False)
        await be.hold("tank/b@s1", "keep", False)
        h = await be.holds("tank/b@s1", False)
        assert h["userrefs"] == 1 and h["holds"][0]["tag"] == "keep"
        with pytest.raises(Conflict):
            await be.destroy("tank/b@s1", False, False, False, False)
        await be.release("tank/b@s1", "keep", False)
        with pytest.raises(NotFound):
            await be.release("tank/b@s1", "keep", False)
        await be.destroy("tank/b@s1", False, False, False, False)
        assert b"tank/b@s1" not in lzc.datasets
        # what libzfs_core cannot do goes to the CLI
        n = len(ctx.argvs)
        await be.create("tank/e", "filesystem", None, {"quota": "1G"}, False, False)
        assert ctx.argvs[n] == ["zfs", "create", "-o", "quota=1G", "--", "tank/e"]

    asyncio.run(go())
    assert {"exists", "create", "snapshot", "clone", "hold", "get_holds", "release",
            "destroy_snaps"} <= set(lzc.calls)


def test_lzc_error_mapping() -> None:
    from core0.storage.zfs_lzc import lzc_error

    assert isinstance(lzc_error(ZFSError(errno.ENOENT), "x"), NotFound)
    assert isinstance(lzc_error(ZFSError(errno.EEXIST), "x"), Conflict)
    assert isinstance(lzc_error(ZFSError(errno.ENOTSUP), "x"), PreconditionFailed)
    assert isinstance(lzc_error(RuntimeError("boom"), "x"), Internal)

    class Multi(Exception):
        errors = [ZFSError(errno.EBUSY)]
    assert isinstance(lzc_error(Multi(), "x"), Conflict)
    assert re.search("ZFSError", str(lzc_error(ZFSError(errno.EBUSY), "tank/a")))


def test_zfs_fuse_daemon_probe(tmp_path: Any) -> None:
    import os
    import socket

    from core0.storage import zfsfuse

    path = str(tmp_path / "zfs_socket")
    assert zfsfuse.running(path) is False  # no socket file
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    assert zfsfuse.running(path) is False  # a leftover file nobody listens on
    srv.listen(1)
    try:
        assert zfsfuse.running(path) is True
    finally:
        srv.close()
    pidfile = tmp_path / "zfs-fuse.pid"
    assert zfsfuse._pid_alive(str(pidfile)) is False
    pidfile.write_text(str(os.getpid()))
    assert zfsfuse._pid_alive(str(pidfile)) is True
    pidfile.write_text("999999999")  # stale: zfs-fuse would exit silently on it
    assert zfsfuse._pid_alive(str(pidfile)) is False


def test_one_mountinfo_parser() -> None:
    """storage and the shim's mounts read mountinfo with the same parser (core0.mountinfo)."""
    from core0 import mountinfo
    from core0.init import mounts

    text = ("36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 - ext3 /dev/root "
            "rw,errors=continue\n"
            "garbage line\n"
            "40 36 0:5 / /run rw - tmpfs run rw,mode=755\n")
    ms = parse.parse_mountinfo(text)
    assert ms == mountinfo.parse(text)
    assert [(m.mount_id, m.parent_id, m.majmin, m.root, m.mountpoint, m.fstype, m.source)
            for m in ms] == [(36, 35, "98:0", "/mnt1", "/mnt/parent dir", "ext3", "/dev/root"),
                             (40, 36, "0:5", "/", "/run", "tmpfs", "run")]
    assert ms[0].options == ["rw", "noatime"] and ms[0].super_options[-1] == "errors=continue"
    assert ms[0].target == "/mnt/parent dir"
    assert mounts.MountInfo is mountinfo.Mount
