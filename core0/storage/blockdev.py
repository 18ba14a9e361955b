"""Block devices: names, the lsblk tree (completed with blkid, since a core0 node has no
udev database), partitions via parted, mounts, and "is this device in use?"."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
from typing import Any

from core0 import mountinfo
from core0.context import Context
from core0.errors import BadRequest, NotFound
from core0.storage import parse, tools

SYS_BLOCK = "/sys/class/block"


def kname(device: str) -> str:
    """``sda`` / ``/dev/sda`` → kernel name, checked against sysfs (404 if unknown)."""
    name = device[5:] if device.startswith("/dev/") else device
    if "/" in name or not name or name.startswith((".", "-")):
        raise BadRequest(f"not a device name: {device}")
    if not os.path.exists(f"{SYS_BLOCK}/{name}"):
        raise NotFound(f"no such block device: {device}")
    return name


def dev_path(name: str) -> str:
    """``/dev/<name>``, which must be a block device node."""
    path = f"/dev/{name}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"no device node: {path}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise BadRequest(f"not a block device: {path}")
    return path


def device(dev: str) -> tuple[str, str]:
    """Validate a device argument → (kernel name, /dev path)."""
    k = kname(dev)
    return k, dev_path(k)


def is_partition(name: str) -> bool:
    return os.path.exists(f"{SYS_BLOCK}/{name}/partition")


def parent_disk(name: str) -> str:
    """The whole disk of a partition (the partition's sysfs parent), or ``name`` itself."""
    if not is_partition(name):
        return name
    return os.path.basename(os.path.dirname(os.path.realpath(f"{SYS_BLOCK}/{name}")))


def partitions(name: str) -> list[str]:
    """Kernel names of the partitions of disk ``name``, in number order."""
    base = f"{SYS_BLOCK}/{name}"
    try:
        entries = os.listdir(os.path.realpath(base))
    except OSError:
        return []
    parts = [e for e in entries if os.path.exists(f"{base}/{e}/partition")]

    def num(p: str) -> int:
        try:
            with open(f"{base}/{p}/partition") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return 0
    return sorted(parts, key=num)


def partition_number(name: str) -> int | None:
    try:
        with open(f"{SYS_BLOCK}/{name}/partition") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def majmin(name: str) -> str:
    with open(f"{SYS_BLOCK}/{name}/dev") as f:
        return f.read().strip()


def holders(name: str) -> list[str]:
    try:
        return sorted(os.listdir(f"{SYS_BLOCK}/{name}/holders"))
    except OSError:
        return []


def read_only(name: str) -> bool:
    try:
        with open(f"{SYS_BLOCK}/{name}/ro") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def mounts() -> list[parse.Mount]:
    """The node's mount table (core0.mountinfo)."""
    return mountinfo.read()


def swaps() -> set[str]:
    try:
        with open("/proc/swaps") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return set()
    return {ln.split()[0] for ln in lines if ln.split()}


def _claimed(path: str) -> bool:
    """True when the kernel has the device claimed exclusively (mounted filesystem, btrfs
    member, md/dm holder...): an O_EXCL open fails with EBUSY."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        return e.errno == errno.EBUSY
    os.close(fd)
    return False


async def probe(ctx: Context, paths: list[str] | None = None) -> dict[str, dict[str, str]]:
    """blkid's view (type, label, uuid, partuuid, pttype), probed now, not from a cache."""
    argv = ["blkid", "-c", "/dev/null", "-o", "export"]
    if paths:
        argv += ["--", *paths]
    res = await ctx.run(argv, check=False)  # status 2: nothing found
    return parse.parse_blkid_export(res.stdout)


async def imported_pools(ctx: Context) -> set[str]:
    """Names of imported ZFS pools, without starting any daemon (empty when ZFS is absent)."""
    from core0.storage import zfsfuse

    if not shutil.which("zpool"):
        return set()
    if not os.path.exists("/dev/zfs") and not zfsfuse.running():
        return set()
    res = await ctx.run(["zpool", "list", "-H", "-o", "name"], check=False, timeout=30)
    return {ln.strip() for ln in res.stdout.splitlines() if ln.strip()}


async def in_use(ctx: Context, name: str) -> list[str]:
    """Why device ``name`` (or one of its partitions) is in use; empty when it is free."""
    names = [name, *partitions(name)]
    reasons: list[str] = []
    mm = {majmin(n): n for n in names}
    by_path = {f"/dev/{n}": n for n in names}
    for m in mounts():
        hit = mm.get(m.majmin) or by_path.get(m.source)
        if hit:
            reasons.append(f"{hit} is mounted on {m.mountpoint}")
    sw = swaps()
    paths = [f"/dev/{n}" for n in names]
    for n, p in zip(names, paths, strict=True):
        if p in sw:
            reasons.append(f"{n} is an active swap device")
        hs = holders(n)
        if hs:
            reasons.append(f"{n} is held by {', '.join(hs)}")
        if not reasons and os.path.exists(p) and _claimed(p):
            reasons.append(f"{n} is claimed by the kernel (mounted filesystem or member)")
    if not reasons:
        info = await probe(ctx, [p for p in paths if os.path.exists(p)])
        members = {p: i.get("LABEL", "") for p, i in info.items()
                   if i.get("TYPE") == "zfs_member"}
        if members:
            pools = await imported_pools(ctx)
            for p, pool in members.items():
                if pool in pools:
                    reasons.append(f"{os.path.basename(p)} is a vdev of imported pool {pool}")
    return reasons


async def tree(ctx: Context, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The block-device tree (lsblk + blkid), or only ``names`` (kernel names)."""
    argv = ["lsblk", "-J", "-b", "-o", parse.LSBLK_COLUMNS]
    if names:
        argv += ["--", *[f"/dev/{n}" for n in names]]
    res = await tools.run(ctx, argv)
    devs = parse.parse_lsblk(res.stdout)
    if not names:
        # unattached loop devices have size 0: they are slots, not disks
        devs = [d for d in devs if not (d["type"] == "loop" and not d["size"])]
    paths: list[str] = []

    def collect(ds: list[dict[str, Any]]) -> None:
        for d in ds:
            paths.append(d["path"])
            collect(d["partitions"])
    collect(devs)
    if paths:
        parse.merge_blkid(devs, await probe(ctx, paths))
    return devs


async def parted(ctx: Context, path: str) -> dict[str, Any]:
    res = await tools.run(ctx, ["parted", "-s", "-m", "--", path, "unit", "B", "print", "free"],
                          check=False)
    if res.status != 0 and "unrecognised disk label" not in res.stderr + res.stdout:
        raise tools.tool_error(res)
    return parse.parse_parted(res.stdout)


async def wait_node(name: str, timeout: float = 5.0) -> bool:
    """Wait for ``/dev/<name>`` (devtmpfs creates nodes asynchronously; there is no udev)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if os.path.exists(f"/dev/{name}") and os.path.exists(f"{SYS_BLOCK}/{name}"):
            return True
        await asyncio.sleep(0.02)
    return os.path.exists(f"/dev/{name}")


async def wait_gone(name: str, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not os.path.exists(f"{SYS_BLOCK}/{name}"):
            return True
        await asyncio.sleep(0.02)
    return False


def users_of(mountpoints: list[str], limit: int = 5) -> list[str]:
    """Processes using a file system mounted at ``mountpoints`` (cwd, root, executable or an
    open file under one of them), like ``fuser -m``: "pid 123 (sleep): cwd /mnt/x"."""
    roots = [m.rstrip("/") or "/" for m in mountpoints]
    if not roots:
        return []

    def inside(p: str) -> bool:
        return any(p == r or p.startswith(r + "/") for r in roots)

    me = os.getpid()
    found: list[str] = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        base = f"/proc/{pid}"
        links = [("cwd", f"{base}/cwd"), ("root", f"{base}/root"), ("exe", f"{base}/exe")]
        try:
            links += [("open file", f"{base}/fd/{fd}") for fd in os.listdir(f"{base}/fd")]
        except OSError:
            pass
        for what, link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if what == "root" and target == "/":
                continue
            if inside(target):
                try:
                    with open(f"{base}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                found.append(f"pid {pid} ({comm}): {what} {target}")
                break
        if len(found) >= limit:
            break
    return found
