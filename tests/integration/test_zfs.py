"""zpool.* and zfs.* through a real node, against a real zfs-fuse daemon on loop devices and
sparse files."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import code_of, unavailable
from core0_client import ResultError

pytest_plugins = ["storage_fixtures"]

pytestmark = pytest.mark.root


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def pool(client, pools, loops, tmp_path: Path) -> tuple[str, Path]:  # type: ignore[no-untyped-def]
    """A pool on a loop device, created through core0; (name, mountpoint)."""
    dev = loops("512M")
    name = pools.name()
    mnt = tmp_path / "mnt"
    client.zpool.create(name, [dev], mountpoint=str(mnt), properties={"cachefile": "none"})
    return name, mnt


def test_daemon_started_by_core0(zfs_daemon) -> None:  # type: ignore[no-untyped-def]
    if not zfs_daemon["started_by_core0"]:
        unavailable("a zfs-fuse daemon was already running")
    pid = zfs_daemon["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"zfs-fuse")
    assert zfs_daemon["pidfile"].encode() in cmdline


def test_pool_lifecycle(client, pools, loops, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dev = loops("256M")
    name = pools.name()
    mnt = tmp_path / "p"
    row = client.zpool.create(name, [dev.removeprefix("/dev/")], mountpoint=str(mnt),
                              properties={"cachefile": "none"})
    assert row["name"] == name and row["health"] == "ONLINE"
    assert row["size"] > 200 << 20 and row["available"] > 0
    assert mnt.is_dir()
    assert code_of(client.zpool.create, name, [dev]) == 409
    assert any(p["name"] == name for p in client.zpool.list())
    (st,) = client.zpool.status(name)
    assert st["state"] == "ONLINE"
    assert st["vdevs"][0]["name"] == os.path.basename(dev)
    assert code_of(client.zpool.status, "nosuchpool") == 404

    client.zfs.create(f"{name}/data")
    (mnt / "data" / "f").write_text("kept")
    assert client.zpool.export(name)["exported"]
    assert not any(p["name"] == name for p in client.zpool.list())
    found = client.zpool.import_(dirs=["/dev"])
    assert any(p["name"] == name for p in found)
    client.zpool.import_(name, dirs=["/dev"])
    assert (mnt / "data" / "f").read_text() == "kept"
    assert client.zpool.destroy(name)["destroyed"]
    assert code_of(client.zpool.destroy, name) == 404


def test_pool_layouts_on_files(client, pools, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = []
    for i in range(3):
        f = tmp_path / f"vdev{i}.img"
        with open(f, "wb") as fh:
            fh.truncate(128 << 20)
        files.append(str(f))
    mirror = pools.name()
    client.zpool.create(mirror, ["mirror", files[0], files[1]], mountpoint="none",
                        properties={"cachefile": "none"})
    (st,) = client.zpool.status(mirror)
    assert st["vdevs"][0]["name"].startswith("mirror")
    assert [c["name"] for c in st["vdevs"][0]["children"]] == files[:2]
    client.zpool.destroy(mirror)
    raidz = pools.name()
    client.zpool.create(raidz, ["raidz", *files], mountpoint="none", force=True,
                        properties={"cachefile": "none"})
    (st,) = client.zpool.status(raidz)
    assert st["vdevs"][0]["name"].startswith("raidz")
    assert len(st["vdevs"][0]["children"]) == 3
    client.zpool.destroy(raidz)
    # a vdev carrying a filesystem is not overwritten without force
    subprocess.run(["mkfs.ext4", "-q", "-F", files[2]], check=True)
    err = pytest.raises(ResultError, client.zpool.create, pools.name(), [files[2]]).value
    assert err.code == 409 and "ext4" in str(err)
    # a file that does not exist, a keyword without devices
    assert code_of(client.zpool.create, pools.name(), [str(tmp_path / "nope.img")]) == 404
    assert code_of(client.zpool.create, pools.name(), [files[0], "mirror"]) == 400


def test_datasets(client, pool) -> None:  # type: ignore[no-untyped-def]
    name, mnt = pool
    ds = f"{name}/a"
    assert client.zfs.create(ds, properties={"quota": "64M"}) == {"name": ds,
                                                                 "type": "filesystem"}
    assert code_of(client.zfs.create, ds) == 409
    assert code_of(client.zfs.create, f"{name}/x/y") == 404
    client.zfs.create(f"{name}/x/y", parents=True)
    err = pytest.raises(ResultError, client.zfs.create, f"{name}/v", type="volume",
                        volsize="16M").value
    assert err.code == 412 and "zvol" in str(err)

    rows = {r["name"]: r for r in client.zfs.list(name)}
    assert rows[ds]["mounted"] is True and rows[ds]["mountpoint"] == str(mnt / "a")
    assert isinstance(rows[ds]["used"], int)
    props = client.zfs.get(ds, ["quota", "compression"])["properties"]
    assert props["quota"] == {"value": str(64 << 20), "source": "local"}
    got = client.zfs.set(ds, {"compression": "on", "atime": "off", "org.core0:role": "test"})
    assert got["properties"]["compression"]["value"] == "on"
    assert got["properties"]["org.core0:role"]["value"] == "test"
    err = pytest.raises(ResultError, client.zfs.set, ds, {"compression": "lz4"}).value
    assert err.code == 412 and "zfs-fuse" in str(err)  # pool v23 has no lz4
    assert code_of(client.zfs.set, ds, {"compression": "bogus"}) == 400
    assert code_of(client.zfs.get, f"{name}/nope") == 404
    assert client.zfs.exists(ds) is True
    assert client.zfs.exists(f"{name}/nope") is False

    # quota enforced
    with pytest.raises(OSError) as ei, open(mnt / "a" / "big", "wb") as f:
        for _ in range(96):
            f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    assert ei.value.errno == errno.EDQUOT
    os.unlink(mnt / "a" / "big")

    # snapshot, clone, rollback
    (mnt / "a" / "f").write_text("v1")
    assert client.zfs.snapshot(ds, "s1") == {"name": f"{ds}@s1"}
    assert code_of(client.zfs.snapshot, ds, "s1") == 409
    (mnt / "a" / "f").write_text("v2")
    client.zfs.snapshot(ds, "s2")
    clone = f"{name}/c1"
    assert client.zfs.clone(f"{ds}@s1", clone)["origin"] == f"{ds}@s1"
    assert (mnt / "c1" / "f").read_text() == "v1"
    assert {r["name"]: r for r in client.zfs.list(clone)}[clone]["origin"] == f"{ds}@s1"
    snaps = [r["name"] for r in client.zfs.list(ds, types=["snapshot"])]
    assert snaps == [f"{ds}@s1", f"{ds}@s2"]
    assert code_of(client.zfs.rollback, f"{ds}@s1") == 409  # s2 is more recent
    client.zfs.rollback(f"{ds}@s2")
    assert (mnt / "a" / "f").read_text() == "v2"

    # holds
    client.zfs.hold(f"{ds}@s2", "keep")
    assert code_of(client.zfs.hold, f"{ds}@s2", "keep") == 409
    h = client.zfs.holds(f"{ds}@s2")
    assert h["userrefs"] == 1
    assert h["holds"] is None and "zfs-fuse" in h["unsupported"]
    assert code_of(client.zfs.destroy, f"{ds}@s2") == 409
    client.zfs.release(f"{ds}@s2", "keep")
    assert code_of(client.zfs.release, f"{ds}@s2", "keep") == 404
    assert client.zfs.holds(f"{ds}@s2")["userrefs"] == 0

    # rename (remounted at the new place), mount/unmount
    client.zfs.rename(ds, f"{name}/b")
    assert (mnt / "b" / "f").read_text() == "v2"
    ds = f"{name}/b"
    client.zfs.rename(f"{ds}@s2", f"{ds}@s2b")
    assert client.zfs.exists(f"{ds}@s2b")
    assert client.zfs.unmount(ds)["mounted"] is False
    assert not (mnt / "b" / "f").exists()
    assert code_of(client.zfs.unmount, ds) == 404
    assert client.zfs.mount(ds)["mountpoint"] == str(mnt / "b")
    assert code_of(client.zfs.mount, ds) == 409
    sleeper = subprocess.Popen(["sleep", "30"], cwd=mnt / "b")
    try:
        assert code_of(client.zfs.unmount, ds) == 409  # busy
        assert code_of(client.zfs.destroy, ds, recursive=True, recursive_clones=True) == 409
    finally:
        sleeper.kill()
        sleeper.wait()

    # destroy: children, clones, defer
    assert code_of(client.zfs.destroy, ds) == 409  # has snapshots
    assert code_of(client.zfs.destroy, f"{ds}@s1") == 409  # has a clone
    client.zfs.hold(f"{ds}@s2b", "keep")
    client.zfs.destroy(f"{ds}@s2b", defer=True)  # destroyed once released
    assert client.zfs.exists(f"{ds}@s2b")
    client.zfs.release(f"{ds}@s2b", "keep")
    assert not client.zfs.exists(f"{ds}@s2b")
    client.zfs.destroy(ds, recursive=True, recursive_clones=True)
    assert not client.zfs.exists(ds) and not client.zfs.exists(clone)
    assert code_of(client.zfs.destroy, ds) == 404


def test_send_receive_round_trip(client, node, pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name, mnt = pool
    src = f"{name}/src"
    client.zfs.create(src)
    data = mnt / "src"
    (data / "sub").mkdir()
    (data / "a.bin").write_bytes(os.urandom(3 << 20))
    (data / "sub" / "b.txt").write_text("hello\n" * 1000)
    client.zfs.snapshot(src, "s1")
    stream = tmp_path / "s1.zstream"
    # streamed job: progress lines reach log:<id>, the result carries the byte count
    resp = client.raw("zfs.send", {"name": f"{src}@s1", "file": str(stream)}, stream=True)
    lines: list[str] = []
    resp.stream(lambda level, msg, flags: lines.append(msg), timeout=60)
    import json

    res = json.loads(resp.get(60).data)
    assert res["bytes"] == stream.stat().st_size > 3 << 20
    assert any(m.startswith("sent ") for m in lines)
    assert code_of(client.zfs.send, f"{src}@s1", str(stream)) == 409  # exists
    assert client.zfs.receive(f"{name}/copy", str(stream))["name"] == f"{name}/copy"
    assert tree_digest(mnt / "copy") == tree_digest(data)
    assert client.zfs.exists(f"{name}/copy@s1")
    assert code_of(client.zfs.receive, f"{name}/copy", str(stream)) == 409

    # incremental
    (data / "c.bin").write_bytes(os.urandom(1 << 20))
    (data / "a.bin").unlink()
    client.zfs.snapshot(src, "s2")
    inc = tmp_path / "s2.zstream"
    client.zfs.send(f"{src}@s2", str(inc), base="@s1")
    client.zfs.receive(f"{name}/copy", str(inc), force=True)
    assert tree_digest(mnt / "copy") == tree_digest(data)
    assert code_of(client.zfs.receive, f"{name}/copy2", str(tmp_path / "none")) == 404
    assert code_of(client.zfs.send, f"{src}@nope", str(tmp_path / "x")) == 404
    assert not (tmp_path / "x").exists()


HOSTILE = ["../etc", "-rf", "pool; reboot", "tank/../x", "tank/-x", "tank x", "tank/a\nb",
           "tank//a", "/tank", ""]


def test_hostile_names_refused(client, zfs_daemon) -> None:  # type: ignore[no-untyped-def]
    for bad in HOSTILE:
        assert code_of(client.zfs.create, bad) == 400, bad
        assert code_of(client.zfs.destroy, bad) == 400, bad
        assert code_of(client.zpool.destroy, bad) == 400, bad
        assert code_of(client.zfs.snapshot, "tank/a", bad or "@") == 400, bad
        assert code_of(client.zfs.clone, "tank/a@s", bad) == 400, bad
    assert code_of(client.zpool.create, "pool; reboot", ["/tmp/x.img"]) == 400
    assert code_of(client.zpool.create, "tank", ["../x.img"]) == 400
    assert code_of(client.zpool.create, "tank", ["-f"]) == 400
    assert code_of(client.zpool.create, "mirror", ["/tmp/x.img"]) == 400
    assert code_of(client.zfs.set, "tank/a", {"-o": "x"}) == 400
    assert code_of(client.zfs.set, "tank/a", {"quota": "1G\nx"}) == 400
    assert code_of(client.zfs.send, "tank/a@s", "../x") == 400
    assert code_of(client.zfs.send, "tank/a@s", "/tmp/../x") == 400
    assert code_of(client.zfs.receive, "tank/a", "relative/x") == 400
    assert code_of(client.zfs.get, "tank/a", ["-p"]) == 400
