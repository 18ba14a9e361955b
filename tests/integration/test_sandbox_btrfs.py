"""Images on btrfs: stored once as a subvolume, a writable snapshot per container start,
destroyed on terminate (real btrfs on a loop device)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from sandbox_fixtures import busybox_rootfs, container_node

pytest_plugins = ["storage_fixtures"]


def subvolumes(mnt: str) -> list[str]:
    out = subprocess.run(["btrfs", "subvolume", "list", "-o", mnt], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.split(" path ")[-1] for line in out.splitlines())


def test_btrfs_subvolume_and_snapshot_per_start(btrfs_mount: str, tmp_path: Path) -> None:
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    with container_node(under=btrfs_mount) as node:
        c = node.client()
        try:
            meta = json.loads(c.raw("container.image.import", {
                "name": "bb", "source": str(rootfs)}).get(60).data)
            assert meta["storage"] == "btrfs"
            base = subvolumes(btrfs_mount)
            assert len(base) == 1 and base[0].endswith("/rootfs")
            ids = [json.loads(c.raw("corex.create", {"root": "bb", "nics": []}).get(60).data)
                   for _ in range(2)]
            for cid in ids:
                croot = node.state_dir / "sandbox" / "containers" / str(cid) / "rootfs"
                assert os.stat(croot).st_ino == 256  # a subvolume: the snapshot
            assert len(subvolumes(btrfs_mount)) == 3
            d = c.raw("corex.dispatch", {"container": ids[0], "command": {
                "command": "bash", "arguments": {"script": "echo mine > /etc/only-here; "
                                                           "rm /bin/ls; echo ok"}}}).get(60)
            res = c.response_for(json.loads(d.data)).get(60)
            assert res.streams[0] == "ok\n"
            d = c.raw("corex.dispatch", {"container": ids[1], "command": {
                "command": "bash", "arguments": {"script": "ls /etc/only-here /bin/ls"}}}
                      ).get(60)
            res = c.response_for(json.loads(d.data)).get(60)
            assert "/bin/ls" in res.streams[0] and "only-here" in res.streams[1]
            for cid in ids:
                assert c.raw("corex.terminate", {"container": cid}).get(60).state.value \
                    == "SUCCESS"
            assert subvolumes(btrfs_mount) == base
            assert c.raw("container.image.delete", {"name": "bb"}).get(60).state.value \
                == "SUCCESS"
            assert subvolumes(btrfs_mount) == []
        finally:
            c.close()


def searchable(path: Path) -> None:
    """o+x on ``path`` and its parents (the test's temp dirs are 0700): a userns
    container's root user must reach its root under the node's state dir."""
    for p in [path, *path.parents]:
        mode = os.stat(p).st_mode
        if not mode & 0o001:
            os.chmod(p, (mode & 0o7777) | 0o001)


def test_btrfs_userns_snapshot_shifted(btrfs_mount: str, tmp_path: Path) -> None:
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    with container_node(under=btrfs_mount) as node:
        searchable(node.dir)
        c = node.client()
        try:
            assert c.raw("container.image.import", {"name": "bb", "source": str(rootfs)}
                         ).get(60).state.value == "SUCCESS"
            r = c.raw("corex.create", {"root": "bb", "nics": [], "userns": True}).get(60)
            assert r.state.value == "SUCCESS", r.data
            cid = json.loads(r.data)
            base = json.loads(c.raw("corex.get", {"query": cid}).get(60).data
                              )["container"]["userns"]["uid"]
            croot = node.state_dir / "sandbox" / "containers" / str(cid) / "rootfs"
            assert os.stat(croot).st_ino == 256  # the snapshot, its owners shifted
            assert os.lstat(croot / "bin" / "busybox").st_uid == base
            assert os.lstat(croot / "bin" / "sh").st_uid == base  # a symlink itself
            d = c.raw("corex.dispatch", {"container": cid, "command": {
                "command": "bash", "arguments": {"script": "stat -c %u /bin/busybox; "
                                                           "touch /made; echo ok"}}}).get(60)
            res = c.response_for(json.loads(d.data)).get(60)
            assert res.streams[0] == "0\nok\n", res
            assert os.stat(croot / "made").st_uid == base
            image = next(p for p in (node.state_dir / "sandbox" / "images").iterdir()
                         if (p / "rootfs").is_dir())
            assert os.lstat(image / "rootfs" / "bin" / "busybox").st_uid == 0  # untouched
            assert c.raw("corex.terminate", {"container": cid}).get(60).state.value \
                == "SUCCESS"
            assert not (node.state_dir / "sandbox" / "userns").exists() or \
                not list((node.state_dir / "sandbox" / "userns").iterdir())
        finally:
            c.close()
