"""btrfs.* through a real node, on real btrfs over loop devices: multi-device create with
profiles, devices, subvolumes, snapshots, quota enforcement, in-use refusals, hostile paths."""

from __future__ import annotations

import errno
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

    require("btrfs", "mkfs.btrfs", "blkid")


def test_filesystem_and_devices(client, loops, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d1, d2, d3 = (loops("300M") for _ in range(3))
    fs = client.btrfs.create([d1, os.path.basename(d2)], label="c0bt", data="raid1",
                             metadata="raid1")
    assert fs["label"] == "c0bt" and fs["uuid"] and fs["devices"] == [d1, d2]
    assert code_of(client.btrfs.create, [d1, d2]) == 409  # carries btrfs
    mnt = tmp_path / "bt"
    client.disk.mount(d1, str(mnt), fstype="btrfs")
    assert code_of(client.btrfs.create, [d1], overwrite=True) == 409  # mounted
    assert code_of(client.disk.mkfs, d2, "ext4", force=True) == 409  # member of a mount

    (entry,) = [f for f in client.btrfs.list() if f["uuid"] == fs["uuid"]]
    assert entry["total_devices"] == 2 and entry["mountpoints"] == [str(mnt)]
    info = client.btrfs.info(str(mnt))
    assert info["data"]["profile"] == "raid1" and info["metadata"]["profile"] == "raid1"
    assert info["label"] == "c0bt"

    got = client.btrfs.device_add(str(mnt), [d3])
    assert sorted(d["path"] for d in got["devices"]) == [d1, d2, d3]
    got = client.btrfs.device_remove(str(mnt), [d3])
    assert sorted(d["path"] for d in got["devices"]) == [d1, d2]
    assert code_of(client.btrfs.device_remove, str(mnt), [d2]) == 409  # raid1 needs two
    assert code_of(client.btrfs.info, str(tmp_path)) == 400  # not a btrfs
    client.disk.umount(str(mnt))


def test_subvolumes_snapshots_quota(client, btrfs_mount: str) -> None:  # type: ignore[no-untyped-def]
    mnt = Path(btrfs_mount)
    base = mnt / "base"
    assert client.btrfs.subvol_create(str(base)) == {"path": str(base)}
    assert code_of(client.btrfs.subvol_create, str(base)) == 409
    assert code_of(client.btrfs.subvol_create, str(mnt / "no" / "parent")) == 404
    (base / "etc").mkdir()
    (base / "etc" / "hostname").write_text("base\n")

    rw = client.btrfs.subvol_snapshot(str(base), str(mnt / "ct1"))
    assert rw == {"source": str(base), "destination": str(mnt / "ct1"), "read_only": False}
    (mnt / "ct1" / "etc" / "hostname").write_text("ct1\n")
    assert (base / "etc" / "hostname").read_text() == "base\n"
    client.btrfs.subvol_snapshot(str(base), str(mnt / "ro"), read_only=True)
    with pytest.raises(OSError) as ei:
        (mnt / "ro" / "new").write_text("x")
    assert ei.value.errno == errno.EROFS
    assert code_of(client.btrfs.subvol_snapshot, str(base), str(mnt / "ct1")) == 409
    assert code_of(client.btrfs.subvol_snapshot, str(base / "etc"), str(mnt / "x")) == 400
    # a destination outside the btrfs (its parent is an ordinary directory)
    assert code_of(client.btrfs.subvol_snapshot, str(base), str(mnt.parent / "x")) == 400
    assert not (mnt.parent / "x").exists()

    subs = {s["path"]: s for s in client.btrfs.subvol_list(str(mnt))}
    assert set(subs) == {"base", "ct1", "ro"}
    assert subs["ro"]["read_only"] and not subs["ct1"]["read_only"]
    assert subs["ct1"]["parent_uuid"] == subs["base"]["uuid"]

    # quota: writes beyond the limit fail with EDQUOT
    q = client.btrfs.subvol_quota(str(mnt / "ct1"), "20M")
    assert q["max_referenced"] == 20 << 20 and q["path"] == str(mnt / "ct1")
    with pytest.raises(OSError) as ei, open(mnt / "ct1" / "big", "wb") as f:
        for _ in range(40):
            f.write(b"\xa5" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    assert ei.value.errno == errno.EDQUOT
    os.unlink(mnt / "ct1" / "big")
    assert client.btrfs.subvol_quota(str(mnt / "ct1"), "none")["max_referenced"] is None
    assert code_of(client.btrfs.subvol_quota, str(mnt / "ct1"), "lots") == 400

    # a subvolume mounted elsewhere is in use
    other = mnt.parent / "ct1-mounted"
    other.mkdir()
    subprocess.run(["mount", "--bind", str(mnt / "ct1"), str(other)], check=True)
    try:
        assert code_of(client.btrfs.subvol_delete, str(mnt / "ct1")) == 409
    finally:
        subprocess.run(["umount", str(other)], check=False)
    (mnt / "ct1" / "inner").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt / "ct1" / "inner")], check=True)
    assert code_of(client.btrfs.subvol_delete, str(mnt / "ct1")) == 409
    assert client.btrfs.subvol_delete(str(mnt / "ct1"), force=True) == {"path": str(mnt / "ct1")}
    assert not (mnt / "ct1").exists()
    client.btrfs.subvol_delete(str(mnt / "ro"))
    assert code_of(client.btrfs.subvol_delete, str(mnt / "ro")) == 404
    assert code_of(client.btrfs.subvol_delete, str(mnt)) == 400  # the top level
    assert [s["path"] for s in client.btrfs.subvol_list(str(mnt))] == ["base"]


def test_hostile_arguments_refused(client, btrfs_mount: str) -> None:  # type: ignore[no-untyped-def]
    for bad in ["../x", "relative/x", f"{btrfs_mount}/../x", f"{btrfs_mount}/./x", "-rf",
                f"{btrfs_mount}/x\n", ""]:
        assert code_of(client.btrfs.subvol_create, bad) == 400, bad
        assert code_of(client.btrfs.subvol_delete, bad) == 400, bad
        assert code_of(client.btrfs.subvol_snapshot, f"{btrfs_mount}", bad) == 400, bad
        assert code_of(client.btrfs.info, bad) == 400, bad
    for dev in ["-rf", "../sda", "sda; reboot", "/dev/../sda"]:
        assert code_of(client.btrfs.create, [dev]) == 400, dev
        assert code_of(client.btrfs.device_add, btrfs_mount, [dev]) == 400, dev
    assert code_of(client.btrfs.create, ["loop0"], data="raid9") == 400
    assert code_of(client.btrfs.create, ["loop0"], label="a b") == 400
    assert code_of(client.btrfs.subvol_quota, btrfs_mount, "-1") == 400
    assert code_of(client.btrfs.subvol_create, "/proc/x") == 400  # not on btrfs
