"""btrfs over ``btrfs-progs``: which mount a path is on, subvolume checks, show/df."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Any

from core0.context import Context
from core0.errors import BadRequest, CommandError, Conflict, Internal, NotFound
from core0.storage import blockdev, parse, paths, tools

RULES: list[tools.Rule] = [
    (r"unable to go below|Directory not empty|not empty", Conflict),
    (r"[Nn]ot a btrfs filesystem|not a subvolume", BadRequest),
    *tools.RULES,
]

#: the inode number of every subvolume's root directory
SUBVOL_INO = 256


@dataclass(frozen=True)
class Where:
    """A path on a mounted btrfs: the mount it is on and its path inside the filesystem."""

    path: str
    mount: parse.Mount

    @property
    def fs_path(self) -> str:
        rel = self.path[len(self.mount.mountpoint):].lstrip("/")
        return "/" + "/".join(p for p in (self.mount.root.strip("/"), rel) if p)


def containing_mount(path: str, mounts: list[parse.Mount] | None = None) -> parse.Mount | None:
    """The mount a canonical path is on (the last, longest matching mount point)."""
    best: parse.Mount | None = None
    for m in mounts if mounts is not None else blockdev.mounts():
        mp = m.mountpoint
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mountpoint):
                best = m
    return best


def on_btrfs(path: str, mounts: list[parse.Mount] | None = None) -> Where:
    """400 unless the canonical ``path`` is on a mounted btrfs."""
    m = containing_mount(path, mounts)
    if m is None or m.fstype != "btrfs":
        raise BadRequest(f"{path} is not on a mounted btrfs filesystem")
    return Where(path, m)


def is_subvolume(path: str) -> bool:
    try:
        return os.stat(path).st_ino == SUBVOL_INO
    except OSError:
        return False


def require_subvolume(path: str) -> Where:
    w = on_btrfs(path)
    if not is_subvolume(path):
        raise BadRequest(f"{path} is not a btrfs subvolume")
    return w


def mounts_using(w: Where) -> list[str]:
    """Mount points on or under the subvolume, and other mounts of the subvolume itself."""
    sub = w.fs_path.rstrip("/")
    out = []
    for m in blockdev.mounts():
        if m.mountpoint == w.path or m.mountpoint.startswith(w.path.rstrip("/") + "/"):
            out.append(m.mountpoint)
        elif (m.majmin == w.mount.majmin and m.fstype == "btrfs"
              and (m.root.rstrip("/") == sub or m.root.startswith(sub + "/"))):
            out.append(m.mountpoint)
    return out


async def show(ctx: Context, target: str | None = None) -> list[dict[str, Any]]:
    argv = ["btrfs", "filesystem", "show", "--raw"]
    if target:
        argv += ["--", target]
    res = await tools.run(ctx, argv, rules=RULES)
    return parse.parse_btrfs_show(res.stdout)


async def df(ctx: Context, mountpoint: str) -> dict[str, Any]:
    res = await tools.run(ctx, ["btrfs", "filesystem", "df", "--raw", "--", mountpoint],
                          rules=RULES)
    return parse.parse_btrfs_df(res.stdout)


async def scan(ctx: Context) -> None:
    """Register every btrfs member device with the kernel (no udev does it on a core0 node),
    so a multi-device filesystem can be mounted."""
    await tools.run(ctx, ["btrfs", "device", "scan"], check=False)


# struct btrfs_ioctl_vol_args_v2 (linux/btrfs.h): fd, transid, flags, unused[4], name[4040]
_VOL_ARGS_V2 = struct.Struct("=qQQ32s4040s")
#: _IOW(BTRFS_IOCTL_MAGIC 0x94, 23, struct btrfs_ioctl_vol_args_v2)
BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417
BTRFS_SUBVOL_RDONLY = 1 << 1

_SNAP_ERRORS: dict[int, type[CommandError]] = {
    errno.EEXIST: Conflict, errno.ENOENT: NotFound, errno.EXDEV: BadRequest,
    errno.EINVAL: BadRequest, errno.ENOTTY: BadRequest, errno.EROFS: Conflict,
    errno.EDQUOT: Conflict, errno.ENOSPC: Conflict, errno.EPERM: BadRequest,
    errno.EACCES: BadRequest, errno.ENAMETOOLONG: BadRequest,
}


def snapshot_ioctl(src_fd: int, dst_dir_fd: int, name: str, read_only: bool) -> None:
    """``btrfs subvolume snapshot`` without the tool: the same BTRFS_IOC_SNAP_CREATE_V2 ioctl
    on the source subvolume's fd and the destination's parent directory fd (blocking: it
    commits a transaction)."""
    raw = name.encode()
    if not raw or b"/" in raw or len(raw) > 255:
        raise BadRequest(f"not a valid subvolume name: {name!r}")
    args = bytearray(_VOL_ARGS_V2.pack(src_fd, 0, BTRFS_SUBVOL_RDONLY if read_only else 0,
                                       b"", raw))
    fcntl.ioctl(dst_dir_fd, BTRFS_IOC_SNAP_CREATE_V2, args, True)


async def snapshot(ctx: Context, source: str, destination: str,
                   read_only: bool) -> tuple[str, str]:
    """Snapshot subvolume ``source`` as ``destination`` → their canonical paths.

    Both are resolved inside the filesystem root to file descriptors, and the ioctl works on
    those fds: a path swapped for a symlink after the checks cannot redirect it. The kernel
    itself refuses a source that is not a subvolume, a destination that is not on btrfs
    (ENOTTY) or on another filesystem (EXDEV); no mount table is read on this hot path.
    """
    src_fd, src = paths.open_dir(ctx, source)
    try:
        if os.fstat(src_fd).st_ino != SUBVOL_INO:
            raise BadRequest(f"{src} is not a btrfs subvolume")
        dir_fd, name, dst = paths.open_parent(ctx, destination)
        try:
            await ctx.to_thread(snapshot_ioctl, src_fd, dir_fd, name, read_only)
        except OSError as e:
            why = {errno.ENOTTY: f"{os.path.dirname(dst)} is not on a btrfs filesystem",
                   errno.EXDEV: "source and destination are on different filesystems",
                   errno.EINVAL: f"{src} is not a btrfs subvolume"}.get(e.errno or 0,
                                                                         e.strerror)
            cls = _SNAP_ERRORS.get(e.errno or 0, Internal)
            raise cls(f"snapshot of {src} at {dst}: {why}") from None
        finally:
            os.close(dir_fd)
    finally:
        os.close(src_fd)
    return src, dst
