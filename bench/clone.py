"""Container-root-style clones: btrfs snapshot and zfs clone, through the CLI and through core0.

For each filesystem, a base holding 100 MB and one holding 1 GB of data (1 MiB files, like a
root filesystem's payload) are prepared; then, interleaved in the same run:

* baseline: the CLI itself, timed from this process (``btrfs subvolume snapshot BASE DST`` /
  ``zfs clone POOL/BASE@v1 POOL/DST``, spawned with subprocess);
* core0: the same clone through a real node over Redis with the client
  (``c.btrfs.subvol_snapshot`` / ``c.zfs.clone``), i.e. bus + validation + path checks + the
  same tool run by the dispatcher.

Each clone is removed (untimed) before the next. Prints medians, core0's ratio to the CLI, and
how the time grows with 10x the data (copy-on-write: it should not). Needs root, btrfs-progs
and zfs-fuse (the daemon is started through core0 when none runs, and stopped afterwards).

    .venv/bin/python bench/clone.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import start_core0, tmpdir

SIZES = [("100 MB", 100), ("1 GB", 1024)]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def fill(d: Path, mib: int) -> None:
    """``mib`` files of 1 MiB, each distinct (no dedup or compression shortcut)."""
    block = os.urandom(1 << 20)
    for i in range(mib):
        sub = d / f"d{i // 100:03d}"
        sub.mkdir(exist_ok=True)
        with open(sub / f"f{i:05d}", "wb") as f:
            f.write(i.to_bytes(8, "little") + block[8:])
    os.sync()


def timed(fn: Callable[..., object], *args: object) -> float:
    t = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t) * 1000


def table(rows: list[tuple[str, ...]]) -> None:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())


def zfs_running() -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/var/run/zfs/zfs_socket")
        return True
    except OSError:
        return False
    finally:
        s.close()


def zfs_destroy(name: str) -> None:
    for _ in range(50):
        if sh("zfs", "destroy", name, check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"cannot destroy {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="clones per figure")
    ns = ap.parse_args()
    if os.geteuid() != 0:
        print("clone.py needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    for tool in ("btrfs", "mkfs.btrfs", "losetup", "zfs-fuse", "zfs", "zpool"):
        if shutil.which(tool) is None:
            print(f"clone.py needs {tool}", file=sys.stderr)
            return 2
    # images on a tmpfs when there is one: the host disk's own latency (other I/O on it) would
    # otherwise dominate the transaction commits of both the CLI and core0
    tmp = tmpdir("core0-bench-clone-")
    node = start_core0(tmp)
    c = node.client(timeout=300)
    loop = ""
    pool = f"bench{os.getpid()}"
    zfs_pid = None
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    try:
        # btrfs on a loop device
        img = tmp / "btrfs.img"
        sh("truncate", "-s", "4G", str(img))
        loop = sh("losetup", "-f", "--show", str(img)).stdout.strip()
        sh("mkfs.btrfs", "-q", "-f", loop)
        bmnt = tmp / "btrfs"
        bmnt.mkdir()
        sh("mount", "-t", "btrfs", loop, str(bmnt))
        # zfs-fuse: a daemon started by core0 if none runs, a pool on a sparse file
        if not zfs_running():
            c.zpool.list()
            zfs_pid = int((node.state_dir / "zfs-fuse.pid").read_text())
        zimg = tmp / "zfs.img"
        sh("truncate", "-s", "4G", str(zimg))
        zmnt = tmp / "zfs"
        sh("zpool", "create", "-o", "cachefile=none", "-m", str(zmnt), pool, str(zimg))

        for label, mib in SIZES:
            sh("btrfs", "subvolume", "create", str(bmnt / f"base{mib}"))
            fill(bmnt / f"base{mib}", mib)
            sh("zfs", "create", f"{pool}/base{mib}")
            fill(zmnt / f"base{mib}", mib)
            sh("zfs", "snapshot", f"{pool}/base{mib}@v1")
            print(f"prepared {label} bases", file=sys.stderr)
        sh("btrfs", "filesystem", "sync", str(bmnt))
        time.sleep(2)  # let writeback settle before timing

        def btrfs_cli(base: Path, dst: Path) -> None:
            sh("btrfs", "subvolume", "snapshot", str(base), str(dst))

        def btrfs_core0(base: Path, dst: Path) -> None:
            c.btrfs.subvol_snapshot(str(base), str(dst))

        def zfs_cli(origin: str, ds: str) -> None:
            sh("zfs", "clone", origin, ds)

        def zfs_core0(origin: str, ds: str) -> None:
            c.zfs.clone(origin, ds)

        # sizes and methods interleaved (order alternating) so drift hits all figures alike;
        # the first round warms caches and is dropped
        for i in range(ns.runs + 1):
            for label, mib in SIZES:
                bt = results.setdefault(("btrfs snapshot", label), {"cli": [], "core0": []})
                zf = results.setdefault(("zfs clone", label), {"cli": [], "core0": []})
                order = [("cli", btrfs_cli, zfs_cli), ("core0", btrfs_core0, zfs_core0)]
                for who, bfn, zfn in order if i % 2 else order[::-1]:
                    dst = bmnt / f"ct{mib}-{i}-{who}"
                    t = timed(bfn, bmnt / f"base{mib}", dst)
                    sh("btrfs", "subvolume", "delete", "-c", str(dst))
                    ds = f"{pool}/ct{mib}-{i}-{who}"
                    t2 = timed(zfn, f"{pool}/base{mib}@v1", ds)
                    zfs_destroy(ds)
                    if i > 0:
                        bt[who].append(t)
                        zf[who].append(t2)

        print(f"\nclone of a container root, median of {ns.runs} (ms); core0 = client → Redis "
              "→ dispatcher → tool\n")
        rows: list[tuple[str, ...]] = [("operation", "data", "CLI (baseline)", "core0",
                                        "core0/CLI", "min CLI", "min core0")]
        med: dict[tuple[str, str], tuple[float, float]] = {}
        for (op, label), r in results.items():
            cli, core = statistics.median(r["cli"]), statistics.median(r["core0"])
            med[(op, label)] = (cli, core)
            rows.append((op, label, f"{cli:.2f}", f"{core:.2f}", f"{core / cli:.2f}x",
                         f"{min(r['cli']):.2f}", f"{min(r['core0']):.2f}"))
        table(rows)
        print("\ngrowth with 10x the data (1 GB / 100 MB; flat = 1.00)\n")
        rows = [("operation", "CLI", "core0")]
        for op in ("btrfs snapshot", "zfs clone"):
            (c1, k1), (c2, k2) = med[(op, SIZES[0][0])], med[(op, SIZES[1][0])]
            rows.append((op, f"{c2 / c1:.2f}", f"{k2 / k1:.2f}"))
        table(rows)
    finally:
        c.close()
        if loop:
            sh("umount", str(tmp / "btrfs"), check=False)
            sh("losetup", "-d", loop, check=False)
        for _ in range(20):
            r = sh("zpool", "destroy", "-f", pool, check=False)
            if r.returncode == 0 or "no such pool" in r.stderr:
                break
            time.sleep(0.2)
        if zfs_pid is not None:
            os.kill(zfs_pid, signal.SIGTERM)
            for _ in range(300):
                try:
                    os.kill(zfs_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
