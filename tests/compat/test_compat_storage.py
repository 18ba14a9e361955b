"""0-core's client, disk and btrfs managers, on loop devices."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from compat_fixtures import IN_QEMU
from conftest import require
from storage_fixtures import umount_below

pytest_plugins = ["storage_fixtures", "compat_fixtures"]

pytestmark = pytest.mark.root

#: every table type 0-core's client allows (its typchk enum)
TABLE_TYPES = ("aix", "amiga", "bsd", "dvh", "gpt", "mac", "msdos", "pc98", "sun", "loop")


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("parted", "lsblk", "blkid", "mkfs.btrfs", "btrfs", "losetup")


def _row(cl: Any, name: str) -> dict[str, Any]:
    return next(d for d in cl.disk.list() if d["name"] == name)


def test_disk_manager(cl: Any, record: Any, loops: Any) -> None:
    dev = loops("256M")
    d = os.path.basename(dev)
    row = _row(cl, d)
    assert row["children"] == [] and row["table"] == "" and row["blocksize"] == 512
    assert row["start"] == 0 and row["end"] == (256 << 20) - 1 and row["size"] == 256 << 20
    assert row["free"] == [] and "mountpoint" in row

    made = []
    for t in TABLE_TYPES:
        try:
            cl.disk.mktable(d, t)
            made.append(t)
        except RuntimeError as e:  # parted cannot write this label here: its reason is shown
            assert str(e).startswith("failed to create table: ") and len(str(e)) > 24, e
    assert {"gpt", "msdos", "loop"} <= set(made)
    cl.disk.mktable(d)  # the client's default: gpt
    record("disk.mktable", f"`None`; every type the client allows is accepted ({', '.join(made)}"
           " written here; parted's reason in the error for the others)")

    info = cl.disk.getinfo(d)  # the client sends part ""
    assert info["table"] == "gpt" and info["blocksize"] == 512 and info["start"] == 0
    assert info["size"] == 256 << 20 and info["free"] and info["free"][0]["size"] > 0
    cl.disk.mkpart(d, 1, 100)  # integers: parted's default unit (MB), as 0-core
    cl.disk.mkpart(d, "100MB", "100%")
    with pytest.raises(RuntimeError) as e:
        cl.disk.mkpart(d, "10MB", "20MB")  # overlaps: the reason is in the message
    assert str(e.value).startswith("failed to create partition: ") and "closest" in str(e.value)
    record("disk.mkpart", "`None`; integer or string start/end (parted units); "
           "`RuntimeError('failed to create partition: <reason>')`")
    p1 = f"{d}p1"
    part = cl.disk.getinfo(d, p1)
    assert part["start"] == 1_000_448 or part["start"] == 1 << 20
    assert part["free"] == [] and part["blocksize"] == 512 and part["size"] > 90 * 10**6
    record("disk.getinfo", "{blocksize, start, end, size, table, free [{start, end, size}], "
           "lsblk fields...} for the disk (part \"\") or a partition")
    row = _row(cl, d)
    assert [c["name"] for c in row["children"]] == [p1, f"{d}p2"]
    c1 = row["children"][0]
    assert c1["start"] == part["start"] and c1["end"] == part["start"] + c1["size"] - 1
    assert row["table"] == "gpt"
    record("disk.list", "[{name, kname, type, size, blocksize, start, end, table, free, "
           "children [partitions, same fields], mountpoint, fstype, label, uuid, ...}]")
    cl.disk.rmpart(d, 2)
    assert [c["name"] for c in _row(cl, d)["children"]] == [p1]
    with pytest.raises(RuntimeError) as e:
        cl.disk.rmpart(d, 7)
    assert "failed to remove partition: " in str(e.value) and "no partition 7" in str(e.value)
    record("disk.rmpart", "`None`; `RuntimeError('failed to remove partition: <reason>')`")

    sk = cl.json("disk.seektime", {"disk": dev})
    assert sk["device"] == dev and sk["elapsed"] >= 0 and sk["type"] in ("SSD", "HDD")
    record("disk.seektime", "{device, elapsed (µs), type SSD|HDD} (measured by core0)")
    with pytest.raises(RuntimeError):
        _spindown(cl, dev, 241)
    assert cl.raw("disk.spindown", {"disk": dev, "spindown": 241}).get().code == 400
    r = cl.raw("disk.spindown", {"disk": dev, "spindown": 1}).get()
    assert r.state == "ERROR" and r.code == 412 and "ATA" in r.stderr
    record("disk.spindown", "`None`; the drive's standby timer set by the ATA command (a SATA "
           f"disk, {IN_QEMU}); a device without ATA commands (here: loop) answers 412 with the "
           "reason in stderr, the client raises; 241+ is 400")


def _spindown(cl: Any, disk: str, value: int) -> None:
    """The master client's disk.spindown: raw, then RuntimeError unless SUCCESS."""
    r = cl.raw("disk.spindown", {"disk": disk, "spindown": value}).get()
    if r.state != "SUCCESS":
        raise RuntimeError(f"Failed to spindown disk {disk} to {value}.")


def test_disk_mount_umount(cl: Any, record: Any, loops: Any, mnt: Path) -> None:
    dev = loops("256M")
    subprocess.run(["mkfs.btrfs", "-q", "-f", dev], check=True)
    cl.disk.mount(dev, str(mnt))  # options default [] → ""
    try:
        assert any(m["mountpoint"] == str(mnt) for m in cl.json("disk.mounts", {})[dev])
        m = cl.json("disk.mounts", {})[dev][0]
        assert m["filesystem"] == "btrfs" and isinstance(m["options"], dict)
    finally:
        cl.disk.umount(dev)
    assert str(mnt) not in {m["mountpoint"] for ms in cl.json("disk.mounts", {}).values()
                            for m in ms}
    cl.disk.mount(dev, str(mnt), ["ro"])  # an options list: the client joins it with ","
    try:
        m = next(m for m in cl.json("disk.mounts", {})[dev] if m["mountpoint"] == str(mnt))
        assert "ro" in m["options"] and "rw" not in m["options"], m
        record("disk.mount", "`None`; mounted (options: the client's comma string, e.g. "
               "`[\"ro\"]` mounts read-only)")
    finally:
        cl.disk.umount(str(mnt))  # by mount point
    assert str(mnt) not in {m["mountpoint"] for ms in cl.json("disk.mounts", {}).values()
                            for m in ms}
    record("disk.umount", "`None`; unmounted (source: a device or a mount point)")


def test_btrfs_manager(cl: Any, zc: Any, record: Any, loops: Any, mnt: Path) -> None:
    a, b, c = loops("300M"), loops("300M"), loops("300M")
    cl.btrfs.create("compat", [a, b])  # profiles "": mkfs's defaults
    with pytest.raises(zc.ResultError) as e:
        cl.btrfs.create("compat2", [a])  # carries a filesystem, overwrite False
    assert e.value.code == 409
    record("btrfs.create", "`None` (sync); the client's default profiles \"\" = mkfs's")
    fs = next(f for f in cl.btrfs.list() if f["label"] == "compat")
    assert fs["total_devices"] == 2 and fs["warnings"] == ""
    assert sorted(d["dev_id"] for d in fs["devices"]) == [1, 2]
    assert {d["path"] for d in fs["devices"]} == {a, b}
    record("btrfs.list", "[{label, uuid, total_devices, used, devices [{dev_id, size, used, "
           "path}], warnings}] (+ devid, mountpoints)")
    subprocess.run(["mount", "-t", "btrfs", a, str(mnt)], check=True)
    try:
        info = cl.btrfs.info(str(mnt))
        assert {"data", "metadata", "system"} <= set(info) and info["label"] == "compat"
        assert info["data"]["total"] > 0 and "profile" in info["data"]
        record("btrfs.info", "{label, uuid, total_devices, used, devices, data, metadata, "
               "system, globalreserve ({profile, total, used})}")
        cl.btrfs.device_add(str(mnt), c)
        assert cl.btrfs.info(str(mnt))["total_devices"] == 3
        record("btrfs.device_add", "`None` (sync); the device is part of the filesystem")
        cl.btrfs.device_remove(str(mnt), c)
        assert cl.btrfs.info(str(mnt))["total_devices"] == 2
        record("btrfs.device_remove", "`None` (sync); data moved off, device released")
        cl.btrfs.subvol_create(str(mnt / "sv"))
        assert (mnt / "sv").is_dir()
        record("btrfs.subvol_create", "`None` (sync)")
        (mnt / "sv" / "f").write_text("x")
        cl.btrfs.subvol_snapshot(str(mnt / "sv"), str(mnt / "snap"), read_only=True)
        assert (mnt / "snap" / "f").read_text() == "x"
        record("btrfs.subvol_snapshot", "`None` (sync); read_only honoured")
        cl.btrfs.subvol_quota(str(mnt / "sv"), "50M")
        subs = {s["Path"]: s for s in cl.btrfs.subvol_list(str(mnt))}
        assert set(subs) == {"sv", "snap"}
        sv = subs["sv"]
        assert sv["Quota"] == 50 << 20 and subs["snap"]["Quota"] == 0
        assert sv["ID"] >= 256 and sv["Gen"] > 0 and sv["TopLevel"] == 5
        record("btrfs.subvol_quota", "`None` (sync); the limit shows as `Quota` in subvol_list")
        record("btrfs.subvol_list", "[{ID, Gen, TopLevel, Path, Quota}] (+ core0's id, gen, "
               "top_level, path, uuid, parent_uuid, read_only)")
        cl.btrfs.subvol_delete(str(mnt / "snap"))
        assert not (mnt / "snap").exists()
        with pytest.raises(zc.ResultError) as e:
            cl.btrfs.subvol_delete(str(mnt / "snap"))
        assert e.value.code == 404
        record("btrfs.subvol_delete", "`None` (sync); `ResultError` 404 when missing")
    finally:
        umount_below(str(mnt))
