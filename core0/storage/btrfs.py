"""btrfs over ``btrfs-progs``: which mount a path is on, subvolume checks, show/df."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core0.context import Context
from core0.errors import BadRequest, CommandError, Conflict, Internal, NotFound
from core0.storage import blockdev, parse, paths, tools, whole

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
    res = await tools.run(ctx, ["btrfs", "--format", "json", "filesystem", "df", "--raw", "--",
                                mountpoint], rules=RULES)
    return parse.parse_btrfs_df(res.stdout)


async def scan(ctx: Context) -> None:
    """Register every btrfs member device with the kernel (no udev does it on a core0 node),
    so a multi-device filesystem can be mounted."""
    await tools.run(ctx, ["btrfs", "device", "scan"], check=False)


# struct btrfs_ioctl_vol_args (linux/btrfs.h): fd, name[4088]
_VOL_ARGS = struct.Struct("=q4088s")
#: _IOW(0x94, 14 / 15, struct btrfs_ioctl_vol_args)
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E
BTRFS_IOC_SNAP_DESTROY = 0x5000940F

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
            try:
                await _made(ctx, dir_fd, name, dst, snapshot_ioctl, src_fd, dir_fd, name,
                            read_only)
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


def _vol_args(name: str) -> bytearray:
    raw = name.encode()
    if not raw or b"/" in raw or len(raw) > 255 or name in (".", ".."):
        raise BadRequest(f"not a valid subvolume name: {name!r}")
    return bytearray(_VOL_ARGS.pack(0, raw))


def _ioctl_error(e: OSError, what: str, path: str) -> CommandError:
    why = {errno.ENOTTY: f"{os.path.dirname(path)} is not on a btrfs filesystem",
           errno.ENOTEMPTY: f"{path} holds nested subvolumes",
           errno.EPERM: f"{path} is not a subvolume (or is the top level)",
           errno.EINVAL: f"{path} is not a subvolume"}.get(e.errno or 0, e.strerror)
    cls = _SNAP_ERRORS.get(e.errno or 0, Internal)
    if e.errno == errno.ENOTEMPTY:
        cls = Conflict
    return cls(f"{what} {path}: {why}")


async def subvol_create(ctx: Context, path: str) -> str:
    """Create subvolume ``path`` with BTRFS_IOC_SUBVOL_CREATE on its parent directory's
    descriptor (resolved inside the filesystem root; the kernel creates the entry in that very
    directory) → its canonical path. 409 if it exists, 400 off btrfs."""
    dir_fd, name, full = paths.open_parent(ctx, path)
    try:
        args = _vol_args(name)
        await _made(ctx, dir_fd, name, full, fcntl.ioctl, dir_fd, BTRFS_IOC_SUBVOL_CREATE,
                    args, True)
    except OSError as e:
        raise _ioctl_error(e, "subvolume create", full) from None
    finally:
        os.close(dir_fd)
    return full


def open_subvolume(ctx: Context, path: str) -> tuple[int, int, str, str]:
    """Resolve subvolume ``path`` inside the root → (readable fd of its parent directory,
    readable fd of the subvolume, its name in the parent, canonical path). 400 unless it is a
    subvolume. The caller closes both descriptors."""
    try:
        with paths.root_of(ctx) as root, root.at(path) as (pfd, name):
            if not name:
                raise BadRequest("refusing the filesystem root")
            sfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=pfd)
            try:
                dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            except BaseException:
                os.close(sfd)
                raise
    except OSError as e:
        from core0.fspath import oserror

        raise oserror(e, path) from None
    real = os.readlink(f"/proc/self/fd/{sfd}")
    if os.fstat(sfd).st_ino != SUBVOL_INO:
        os.close(sfd)
        os.close(dfd)
        raise BadRequest(f"{real} is not a btrfs subvolume")
    return dfd, sfd, name, real


async def subvol_delete(ctx: Context, dir_fd: int, name: str, real: str) -> None:
    """BTRFS_IOC_SNAP_DESTROY of ``name`` in the parent directory descriptor (the kernel looks
    the name up in that directory, never following a symlink, and refuses a non-subvolume)."""
    try:
        # to its end: the caller closes ``dir_fd`` once this returns
        await whole.step(ctx.to_thread(fcntl.ioctl, dir_fd, BTRFS_IOC_SNAP_DESTROY,
                                       _vol_args(name), True))
    except OSError as e:
        raise _ioctl_error(e, "subvolume delete", real) from None


def _held(fn: Callable[..., object], *args: Any) -> None:
    whole.hold("subvol")
    fn(*args)


async def _made(ctx: Context, dir_fd: int, name: str, full: str,
                fn: Callable[..., object], *args: Any) -> None:
    """Make subvolume ``name`` in ``dir_fd`` with ``fn(*args)`` (an ioctl, in a thread) as
    one step: it runs to its end (the descriptors stay open until then), and a kill that
    came meanwhile deletes the subvolume again before it is raised (before, the ioctl went
    on after the job answered KILLED, and a retry answered 409)."""
    await whole.step(ctx.to_thread(_held, fn, *args))
    try:
        await whole.deliver()
    except asyncio.CancelledError:
        await whole.undo(ctx.to_thread(fcntl.ioctl, dir_fd, BTRFS_IOC_SNAP_DESTROY,
                                       _vol_args(name), True), f"subvolume {full}")
        raise
