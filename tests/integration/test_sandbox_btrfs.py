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
