"""The downloaded images' cache: eviction least recently used first, never an image a VM's
overlay (its qcow2 header, made by the real qemu-img) or record names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import require

from core0.virt import fetch

MIB = 1 << 20


def test_evicts_unused_least_recently_used_first(tmp_path: Path) -> None:
    require("qemu-img")
    cache = tmp_path / "cache"
    cache.mkdir()
    names = {k: k * 64 for k in "abcd"}
    for i, k in enumerate("dabc"):
        f = cache / names[k]
        f.write_bytes(b"\0" * MIB)
        os.utime(f, (1_000_000 + i, 1_000_000 + i))  # d oldest, then a, b, c
    (cache / ".part-x").write_bytes(b"\0" * MIB)  # a download in progress: not counted
    vm1, vm2 = tmp_path / "u1", tmp_path / "u2"
    vm1.mkdir()
    vm2.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    str(cache / names["a"]), "--", str(vm1 / "disk0.qcow2")], check=True)
    assert fetch.qcow2_backing(vm1 / "disk0.qcow2") == str(cache / names["a"])
    assert fetch.qcow2_backing(cache / names["b"]) == ""  # raw: none
    vms = {"u1": (vm1, {}), "u2": (vm2, {"cached": [names["b"]]})}
    # 4 MiB cached, limit 2 MiB: d (oldest) and c go; a (an overlay's base) and b (a
    # record's cdrom) stay although older than c
    assert fetch.evict_unused(cache, vms, 2 * MIB) == [names["d"], names["c"]]
    assert sorted(p.name for p in cache.iterdir()) == sorted([names["a"], names["b"],
                                                             ".part-x"])
    assert fetch.evict_unused(cache, vms, 1 * MIB) == []  # what is left is in use
    assert fetch.evict_unused(cache, {}, 0) == []  # 0: never
    assert fetch.evict_unused(cache, {}, 1 * MIB) == [names["a"]]
