"""disk.* through a real node on real loop devices: partition tables, mkfs of every supported
type, mount/write/umount, in-use refusals, protect, hostile arguments."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import code_of

pytest_plugins = ["storage_fixtures"]

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _tools() -> None:
    from conftest import require

    require("parted", "lsblk", "blkid", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "mkfs.vfat",
            "blockdev")


def test_list_and_getinfo(client, loops) -> None:  # type: ignore[no-untyped-def]
    dev = loops("64M")
    name = os.path.basename(dev)
    row = next(d for d in client.disk.list() if d["name"] == name)
    assert row["type"] == "loop" and row["size"] == 64 << 20
    assert row["partitions"] == [] and row["mountpoints"] == []
    for key in ("kname", "model", "serial", "rotational", "fstype", "label", "uuid"):
        assert key in row
    info = client.disk.getinfo(dev)
    assert info["size"] == 64 << 20 and info["table"] == "" and info["blocksize"] == 512
    assert code_of(client.disk.getinfo, "nosuchdisk0") == 404


def test_partition_mkfs_mount_lifecycle(client, loops, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dev = loops("1G")
    d = os.path.basename(dev)
    assert client.disk.mktable(d, "gpt") == {"disk": d, "table": "gpt"}
    layout = [("1MiB", "351MiB", "xfs"), ("351MiB", "501MiB", "btrfs"),
              ("501MiB", "601MiB", "vfat"), ("601MiB", "100%", "ext4")]
    parts = []
    for i, (start, end, _) in enumerate(layout, 1):
        p = client.disk.mkpart(d, start, end)
        assert p["number"] == i and p["name"] == f"{d}p{i}"
        assert Path(f"/dev/{p['name']}").exists()
        parts.append(p["name"])
    assert code_of(client.disk.mkpart, d, "10MiB", "20MiB") == 409  # overlaps
    info = client.disk.getinfo(d)
    assert info["table"] == "gpt" and len(info["partition_table"]) == 4
    assert [p["kname"] for p in info["partition_table"]] == parts
    assert client.disk.getinfo(d, parts[1])["start"] == 351 << 20

    for part, (_, _, fstype) in zip(parts, layout, strict=True):
        out = client.disk.mkfs(part, fstype, label=f"t{fstype}")
        assert out["fstype"] == fstype and out["uuid"]
    row = next(x for x in client.disk.list() if x["name"] == d)
    assert [p["fstype"] for p in row["partitions"]] == [x[2] for x in layout]
    assert row["partitions"][3]["label"] == "text4"
    assert row["partitions"][2]["label"] == "TVFAT"  # vfat labels are upper case
    assert code_of(client.disk.mkfs, parts[3], "ext4") == 409  # carries ext4 already

    # mount, write, umount, mount again and read back
    mnt = tmp_path / "m" / "ext4"
    got = client.disk.mount(parts[3], str(mnt), options=["noatime"])
    assert got == {"source": f"/dev/{parts[3]}", "target": str(mnt), "fstype": "ext4"}
    assert code_of(client.disk.mount, parts[3], str(mnt)) == 409
    (mnt / "hello.txt").write_text("persisted")
    mounts = client.disk.mounts()[f"/dev/{parts[3]}"]
    assert mounts[0]["mountpoint"] == str(mnt) and "noatime" in mounts[0]["options"]

    # destructive commands refuse a mounted target
    assert code_of(client.disk.mkfs, parts[3], "ext4", force=False) == 409
    assert code_of(client.disk.rmpart, d, 4) == 409
    assert code_of(client.disk.mktable, d) == 409
    # a busy mount is not unmounted without force
    sleeper = subprocess.Popen(["sleep", "30"], cwd=mnt)
    try:
        assert code_of(client.disk.umount, str(mnt)) == 409
    finally:
        sleeper.kill()
        sleeper.wait()
    assert client.disk.umount(str(mnt)) == {"unmounted": [str(mnt)]}
    assert not (mnt / "hello.txt").exists()
    assert code_of(client.disk.umount, str(mnt)) == 404
    client.disk.mount(parts[3], str(mnt), fstype="ext4")
    assert (mnt / "hello.txt").read_text() == "persisted"
    assert client.disk.umount(parts[3]) == {"unmounted": [str(mnt)]}  # by device

    # xfs and vfat mount too, where the kernel has them (412 otherwise)
    kernel_fs = Path("/proc/filesystems").read_text().split()
    for part, fs in ((parts[0], "xfs"), (parts[2], "vfat")):
        m = tmp_path / "m" / fs
        if fs not in kernel_fs:
            assert code_of(client.disk.mount, part, str(m), fstype=fs) == 412
            continue
        assert client.disk.mount(part, str(m))["fstype"] == fs
        (m / "f").write_text(fs)
        client.disk.umount(str(m))

    assert client.disk.rmpart(d, 4)["name"] == parts[3]
    assert not Path(f"/dev/{parts[3]}").exists()
    assert code_of(client.disk.rmpart, d, 4) == 404
    assert client.disk.mkfs(parts[3 - 1], "ext4", force=True)["fstype"] == "ext4"
    assert client.disk.mktable(d, "msdos")["table"] == "msdos"
    assert client.disk.getinfo(d)["table"] == "msdos"
    p = client.disk.mkpart(d, "1MiB", "64MiB", part_type="primary")
    assert p["number"] == 1
    # a whole disk with partitions is not formatted without force
    assert code_of(client.disk.mkfs, d, "ext4") == 409


def test_protect(client, loops) -> None:  # type: ignore[no-untyped-def]
    dev = loops("64M")
    d = os.path.basename(dev)
    client.disk.mktable(d, "gpt")
    part = client.disk.mkpart(d, "1MiB", "32MiB")["name"]
    partuuid = next(p["partuuid"] for x in client.disk.list() if x["name"] == d
                    for p in x["partitions"])
    got = client.disk.protect(partuuid=partuuid)
    assert got == {"devices": [part, d], "read_only": True}
    assert Path(f"/sys/class/block/{part}/ro").read_text().strip() == "1"
    with pytest.raises(OSError), open(f"/dev/{part}", "wb") as f:
        f.write(b"x")
    assert code_of(client.disk.mkfs, part, "ext4") in (409, 500)
    assert client.disk.protect(disk=part, protect=False)["read_only"] is False
    assert Path(f"/sys/class/block/{d}/ro").read_text().strip() == "0"
    assert code_of(client.disk.protect, partuuid="0000dead-beef") == 404
    assert code_of(client.disk.protect) == 400


HOSTILE_DEVICES = ["../sda", "-rf", "sda; reboot", "/dev/../sda", "sda b", "$(reboot)", "",
                   "/etc/passwd", "sda\n"]


def test_hostile_arguments_refused(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for bad in HOSTILE_DEVICES:
        assert code_of(client.disk.mkfs, bad) == 400, bad
        assert code_of(client.disk.mktable, bad) == 400, bad
        assert code_of(client.disk.getinfo, bad) == 400, bad
        assert code_of(client.disk.mount, bad, str(tmp_path / "x")) == 400, bad
    for target in ["../x", "relative", "/a/../b", "-rf", "/x\n"]:
        assert code_of(client.disk.mount, "loop0", target) == 400, target
        # for umount a bare word is a device name: "relative" is simply not found (404)
        assert code_of(client.disk.umount, target) == (404 if target == "relative" else 400)
    for opts in (["x-mount.mkdir"], ["ro,exec"], ["helper=foo"], ["-o"], ["ro;reboot"]):
        assert code_of(client.disk.mount, "loop0", str(tmp_path / "x"), options=opts) == 400
    assert code_of(client.disk.mkpart, "loop0", "-1s", "10MiB") == 400
    assert code_of(client.disk.mkfs, "loop0", "ext4; reboot") == 400
    assert code_of(client.disk.umount, "/") == 400
    assert code_of(client.disk.umount, "/proc") == 400


def test_smart_and_power_mode_of_a_disk_without_them(client, loops) -> None:  # type: ignore[no-untyped-def]
    """disk.smartctl-info/-health (smartctl -j) and disk.isstandby (ATA check power mode)
    on a loop device, which has neither: 412 naming why, never a 500; a bad device is 400,
    a missing one 404. (A SATA disk answers them: tests/e2e/test_vm_full.py.)"""
    from conftest import require

    require("smartctl")
    dev = loops("64M")
    name = os.path.basename(dev)
    for command, args in (("disk.smartctl-info", {"device": dev}),
                          ("disk.smartctl-health", {"device": name}),
                          ("disk.isstandby", {"disk": dev})):
        res = client.raw(command, args).get(60)
        assert (res.state.value, res.code) == ("ERROR", 412), (command, res.data)
        key = "device" if "device" in args else "disk"
        assert client.raw(command, {key: "-rf"}).get(60).code == 400
        assert client.raw(command, {key: "nosuchdisk0"}).get(60).code == 404
