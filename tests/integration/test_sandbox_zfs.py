"""Images on ZFS (zfs-fuse here): a dataset + @base snapshot per image, a clone per container
start, destroyed on terminate. Run under ``flock /tmp/core0-zfs.lock`` (the daemon is global)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import wait_until
from sandbox_fixtures import busybox_rootfs, container_node

pytest_plugins = ["storage_fixtures"]


def datasets(root: str) -> list[str]:
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", root],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def test_zfs_dataset_and_clone_per_start(zfs_daemon, pools, tmp_path: Path  # type: ignore[no-untyped-def]
                                         ) -> None:
    pool = pools.name()
    vdev = tmp_path / "vdev.img"
    with open(vdev, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["zpool", "create", "-m", "none", "-o", "cachefile=none", pool, str(vdev)],
                   check=True, capture_output=True)
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    with container_node() as node:
        store = node.state_dir / "sandbox" / "images"
        store.mkdir(parents=True)
        subprocess.run(["zfs", "create", "-o", f"mountpoint={store}", f"{pool}/images"],
                       check=True, capture_output=True)
        c = node.client()
        try:
            # an import killed while it unpacks into its dataset: the unpacking stops, and
            # only then is the dataset destroyed (a dataset in use was left before)
            big = tmp_path / "big"
            for i in range(40):
                (big / f"d{i}").mkdir(parents=True)
                for j in range(250):
                    (big / f"d{i}" / f"f{j}").write_bytes(b"x" * 512)
            job = c.raw("container.image.import", {"name": "big", "source": str(big)})
            assert wait_until(lambda: len(datasets(f"{pool}/images")) > 1, 60, 0.05)
            time.sleep(0.3)
            c.json("job.kill", {"id": job.id})
            r = job.get(120)
            assert r.state.value == "KILLED", r.data
            assert wait_until(lambda: datasets(f"{pool}/images") == [f"{pool}/images"], 60)
            assert json.loads(c.raw("container.image.list", {}).get(60).data) == []
            r = c.raw("container.image.import", {"name": "bb", "source": str(rootfs)}).get(120)
            assert r.state.value == "SUCCESS", r.data
            assert json.loads(r.data)["storage"] == "zfs"
            base = datasets(f"{pool}/images")
            assert len(base) == 3 and base[2].endswith("@base")  # store, image, snapshot
            ids = []
            for _ in range(2):
                r = c.raw("corex.create", {"root": "bb", "nics": []}).get(120)
                assert r.state.value == "SUCCESS", r.data
                ids.append(json.loads(r.data))
            assert len(datasets(f"{pool}/images")) == 5
            # a userns container: the clone's owners are shifted into its range
            os.chmod(node.dir, 0o711)
            r = c.raw("corex.create", {"root": "bb", "nics": [], "userns": True}).get(120)
            assert r.state.value == "SUCCESS", r.data
            ucid = json.loads(r.data)
            first = json.loads(c.raw("corex.get", {"query": ucid}).get(60).data
                               )["container"]["userns"]["uid"]
            croot = node.state_dir / "sandbox" / "containers" / str(ucid) / "zroot" / "rootfs"
            assert os.lstat(croot / "bin" / "busybox").st_uid == first
            d = c.raw("corex.dispatch", {"container": ucid, "command": {
                "command": "bash", "arguments": {"script": "cat /proc/self/uid_map; "
                                                           "touch /made"}}}).get(60)
            res = c.response_for(json.loads(d.data)).get(60)
            assert res.code == 0 and res.streams[0].split() == ["0", str(first), "65536"], res
            assert os.stat(croot / "made").st_uid == first
            r = c.raw("corex.terminate", {"container": ucid}).get(120)
            assert r.state.value == "SUCCESS", r.data
            d = c.raw("corex.dispatch", {"container": ids[0], "command": {
                "command": "bash", "arguments": {"script": "echo mine > /etc/only-here; "
                                                           "echo ok"}}}).get(60)
            assert c.response_for(json.loads(d.data)).get(60).streams[0] == "ok\n"
            d = c.raw("corex.dispatch", {"container": ids[1], "command": {
                "command": "bash", "arguments": {"script": "ls /etc/only-here; ls /bin/sh"}}}
                      ).get(60)
            res = c.response_for(json.loads(d.data)).get(60)
            assert "/bin/sh" in res.streams[0] and "only-here" in res.streams[1]
            for cid in ids:
                r = c.raw("corex.terminate", {"container": cid}).get(120)
                assert r.state.value == "SUCCESS", r.data
            assert datasets(f"{pool}/images") == base
            r = c.raw("container.image.delete", {"name": "bb"}).get(120)
            assert r.state.value == "SUCCESS", r.data
            assert datasets(f"{pool}/images") == [f"{pool}/images"]
        finally:
            c.close()
            subprocess.run(["zfs", "destroy", "-r", "-f", f"{pool}/images"],
                           capture_output=True)
